"""Safety primitives shared by every writer: errors, path containment, atomic files, run locks.

Room: ``storage`` — standard library only here (no zarr/xarray needed); never imports torch,
prefect, ``ddiff`` or ``flows``.

Contract for callers (flows):

* every error raised on bad input is a subclass of :class:`StorageError` (itself a
  ``ValueError``) and its message names the problem and the fix;
* :func:`safe_subpath` is how any *relative* path coming from a config (a group name, an HDF5
  dataset, a member array) is joined to the store it names — absolute paths and ``..`` escapes are
  rejected, symlinks are resolved and must stay inside the root;
* :func:`atomic_directory` builds a whole store in a hidden sibling folder and swaps it into place
  only when it is complete, so ``path`` is absent, the old complete store, or the new complete one.
  The folder's name carries its owner (``.<name>.<label>-<pid>@<host>-<hex>``): a later run on the
  same target deletes the folders of owners that are gone (dead pid on this host) and never
  touches one whose owner lives (:func:`reclaim_orphans`). If another run puts a store at
  ``path`` while ours is being built, :class:`TargetAppearedError` says so (the caller decides);
* :func:`atomic_write_json` writes ``path`` through a temporary file + ``os.replace`` so a reader
  sees either the old or the new complete file, never a torn one (the ledger relies on this);
* :class:`RunLock` is an ``O_CREAT | O_EXCL`` lock file ``<store>/.ddiff.lock`` holding
  ``{"pid", "host", "run_id", "created"}``. A lock whose pid is dead *on this host* is stale and is
  broken automatically; a lock held by another host is never broken automatically (we cannot see
  its processes) — the error says which file to delete once that run is known to be gone.
"""
from __future__ import annotations

import errno as _errno
import hashlib
import json
import math
import re
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = [
    "StorageError", "StoreExistsError", "ConfigMismatchError", "LockError", "NonFiniteError",
    "SourceError", "InputChangedError", "TargetAppearedError", "StorageWriteError", "DETERMINISTIC_ERRNOS",
    "write_error", "writes", "strict_json", "reclaim_orphans", "creatable", "safe_subpath", "atomic_write", "atomic_directory", "atomic_write_json", "read_json", "canonical_hash",
    "file_sha256", "RunLock", "LOCK_NAME",
]

LOCK_NAME = ".ddiff.lock"


class StorageError(ValueError):
    """Base class of the storage layer's input errors (a ``ValueError``)."""


class StoreExistsError(StorageError):
    """The target path already holds data (unrelated data, or a store we refuse to replace)."""


class ConfigMismatchError(StorageError):
    """An existing output store was produced with a different run configuration."""


class LockError(StorageError):
    """Another run holds the output store's lock (or the caller does not hold it)."""


class NonFiniteError(StorageError):
    """The source holds NaN/Inf values and ``nonfinite="refuse"`` (the default) was asked."""


class SourceError(StorageError):
    """The source cannot be read (unreadable, truncated, inconsistent frame sizes, ...)."""


class InputChangedError(StorageError):
    """The input store is not the one an output was made from (re-ingested or replaced since)."""


class TargetAppearedError(StoreExistsError):
    """Another run created the target while this one was building it (a simultaneous start)."""


class StorageWriteError(StorageError):
    """A write failed (disk full, file-size limit, read-only or vanished folder); ``errno`` is kept so
    the caller can tell deterministic causes (not worth a retry) from transient ones."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


#: errnos a retry cannot fix (the same write fails the same way): full disk, size limits, permissions, ...
DETERMINISTIC_ERRNOS = frozenset(getattr(_errno, n) for n in (
    "ENOSPC", "EFBIG", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOENT", "ENOTDIR", "EISDIR", "ENAMETOOLONG",
    "EMFILE", "ENFILE") if hasattr(_errno, n))
_HINTS = {"ENOSPC": "the disk is full: free space there", "EDQUOT": "the disk quota is exhausted",
          "EFBIG": "a file-size limit was hit (ulimit -f, or the filesystem's limit)",
          "EROFS": "the filesystem is read-only", "EACCES": "no write permission there",
          "EPERM": "no write permission there", "ENOENT": "the folder vanished (deleted or unmounted)"}


def write_error(what: str, path: str | os.PathLike, exc: OSError) -> StorageWriteError:
    """One-line :class:`StorageWriteError` for a failed write: what was written, where, why, what to do."""
    code = getattr(exc, "errno", None)
    name = _errno.errorcode.get(code, "") if code is not None else ""
    cause = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(name)
    where = f"{path} ({exc.filename})" if getattr(exc, "filename", None) else f"{path}"
    return StorageWriteError(f"writing {what} to {where} failed: {cause}{f' [{name}]' if name else ''}"
                             f"{f' — {hint}' if hint else ''}; fix that, then rerun the same command to resume",
                             errno=code)


def writes(what: str):
    """Decorator for a storage function whose first argument is the store (a path or a handle with
    ``.path``): an ``OSError`` from its writes (full disk, size limit, read-only, vanished folder)
    becomes the same one-line :class:`StorageWriteError` as a tile's — ``what`` (``{frame}`` filled
    from a ``frame`` argument), the store, the errno and the fix — which the command line exits 2 with."""
    import functools
    import inspect

    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(out, *args, **kwargs):
            try:
                return fn(out, *args, **kwargs)
            except StorageError:
                raise
            except OSError as exc:
                try:
                    named = sig.bind(out, *args, **kwargs).arguments
                except TypeError:
                    named = {}
                raise write_error(what.format(frame=named.get("frame", "?"), name=named.get("name", "?")),
                                  getattr(out, "path", out), exc) from exc
        return wrapper
    return deco


def safe_subpath(root: str | os.PathLike, relative: str) -> Path:
    """Join ``relative`` (from a config) to ``root``; refuse anything that leaves ``root``.

    Rejects absolute paths, ``..`` components and symlinks that resolve outside ``root``.
    Returns the resolved absolute path (it need not exist yet).
    """
    rel = str(relative).replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise StorageError(f"path {relative!r} is absolute; give a path relative to the store {root}")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise StorageError(f"path {relative!r} contains '..'; paths must stay inside the store {root}")
    root_r = Path(root).resolve()
    target = root_r.joinpath(*parts).resolve()
    if target != root_r and root_r not in target.parents:
        raise StorageError(f"path {relative!r} resolves to {target}, outside the store {root_r} "
                           "(a symlink escape?); use a path inside the store")
    return target


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Call ``write(tmp)`` on a temp file in ``path``'s folder, then move it onto ``path``: readers see
    the old file or the whole new one, never half. On failure the temp file is removed. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(path)


def creatable(path: str | os.PathLike) -> bool:
    """Whether ``path`` can be created: its nearest existing ancestor is a writable folder."""
    p = Path(path).absolute().parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def _host_tag() -> str:
    """8 hex digits naming this host in temporary folder names (hostnames may hold dashes and dots)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _tmp_name(name: str, label: str) -> str:
    return f".{name}.{label}-{os.getpid()}@{_host_tag()}-{uuid.uuid4().hex[:8]}"


def reclaim_orphans(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings of ``path`` (``.<name>.<label>-<pid>[@<host>]-<hex>``) left by
    runs that died (killed ingests, creates, replacements): only those whose owner pid is dead on
    this host. A folder of a live process, or of another host, is never touched. Returns what was
    removed. (Names without ``@host`` come from older versions and count as this host's.)"""
    path = Path(path)
    parent = path.parent
    pat = re.compile(rf"^\.{re.escape(path.name)}\.[a-z]+-(?P<pid>\d+)(?:@(?P<host>[0-9a-f]{{8}}))?-[0-9a-f]{{8}}$")
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for e in entries:
        m = pat.match(e.name)
        if not m or (m["host"] and m["host"] != _host_tag()) or _pid_alive(int(m["pid"])):
            continue
        shutil.rmtree(e, ignore_errors=True)
        removed.append(e)
    return removed


@contextmanager
def atomic_directory(path: str | os.PathLike, replace_old: bool, label: str = "tmp") -> Iterator[Path]:
    """Yield a fresh hidden sibling folder path ``.<name>.<label>-<pid>@<host>-<hex>`` to build a
    store in; when the block ends normally, swap it into ``path``. Orphans of dead runs on the same
    target are reclaimed first (:func:`reclaim_orphans`).

    ``replace_old``: ``path`` holds an old store to replace — it is renamed aside, the new folder
    renamed in, then the old one deleted (a reader sees the old or the new store, never a mix).
    Otherwise ``path`` must be absent or an empty folder (removed first); if another run has put
    something there meanwhile, :class:`TargetAppearedError` is raised and ``path`` is left alone.
    Deciding whether an existing ``path`` may be replaced is the caller's job. On any exception the
    temporary folder is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    reclaim_orphans(path)
    tmp = path.with_name(_tmp_name(path.name, label))
    try:
        yield tmp
        if replace_old:
            trash = path.with_name(_tmp_name(path.name, "old"))
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                if path.exists():  # an empty folder
                    path.rmdir()
                os.replace(tmp, path)
            except OSError as exc:
                if exc.errno in (_errno.ENOTEMPTY, _errno.EEXIST) or (path.exists() and any(path.iterdir())):
                    raise TargetAppearedError(f"{path} was created by another run while this one was building "
                                              "it; nothing of ours was left there") from None
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file in the same folder + fsync + replace)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, sort_keys=True, indent=1)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def strict_json(obj: Any, what: str) -> None:
    """Refuse metadata that strict JSON readers (JavaScript's ``JSON.parse``, most non-Python tools) reject:
    a NaN or ±Infinity anywhere in ``obj`` raises :class:`StorageError` naming the field (``what.a.b``)."""
    def walk(v, path):
        if isinstance(v, float) and not math.isfinite(v):
            raise StorageError(f"{path} is {v!r}: the store's metadata must be strict JSON (no NaN/Infinity, which "
                               "other tools cannot read); give a finite number")
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")
    walk(obj, what)


def canonical_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON form of ``obj`` (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: str | os.PathLike, block: int = 8 << 20) -> str:
    """Streamed SHA-256 of a file's bytes (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            buf = fh.read(block)
            if not buf:
                break
            h.update(buf)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive run lock on a store folder: ``with RunLock(store) as lock: ... lock.run_id``.

    ``acquire`` raises :class:`LockError` if a live run holds it. Stale locks (dead pid on this
    host) are removed and re-acquired. Re-entrant for the same ``run_id`` (so a flow can resume
    under its own id).
    """

    def __init__(self, store: str | os.PathLike, run_id: str | None = None):
        self.store = Path(store)
        self.path = self.store / LOCK_NAME
        self.run_id = run_id or uuid.uuid4().hex
        self._held = False

    @staticmethod
    def holder(store: str | os.PathLike) -> dict | None:
        """The current lock record of ``store`` or ``None`` when unlocked."""
        try:
            return read_json(Path(store) / LOCK_NAME)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # being written right now: treat as held by an unknown run
            return {"pid": -1, "host": "?", "run_id": "?"}

    def acquire(self) -> "RunLock":
        self.store.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": self.run_id,
                  "created": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self.holder(self.store)
                if other is None:
                    continue  # released between our open and read: retry
                if other.get("run_id") == self.run_id:
                    self._held = True
                    return self
                if other.get("host") == socket.gethostname() and not _pid_alive(int(other.get("pid", -1))):
                    # stale: the holder died without releasing. Remove only that exact record.
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise LockError(
                    f"output store {self.store} is locked by run {other.get('run_id')} "
                    f"(pid {other.get('pid')} on host {other.get('host')}); wait for it to finish, or "
                    f"if that run is gone delete {self.path}") from None
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(record, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:  # a full disk: no half-written lock left, one line naming the store
                try:
                    os.remove(self.path)
                except OSError:
                    pass
                raise write_error("the run lock", self.store, exc) from exc
            self._held = True
            return self
        raise LockError(f"could not acquire {self.path} after 3 attempts (contention); retry")

    def release(self, quiet: bool = False) -> None:
        """Remove our lock file. ``quiet=True`` (used while another error is on its way out): a
        failure to release is swallowed so it cannot hide that error; the lock left behind is
        broken by the next run on this host (its pid is dead by then)."""
        if not self._held:
            return
        try:
            other = self.holder(self.store)
            if other is not None and other.get("run_id") == self.run_id:
                os.remove(self.path)
        except OSError:
            if not quiet:
                raise
        finally:
            self._held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type, *exc) -> None:
        self.release(quiet=exc_type is not None)


def require_lock(store: str | os.PathLike, run_id: str | None) -> None:
    """Raise :class:`LockError` unless ``store`` is locked (by ``run_id`` when one is given)."""
    other = RunLock.holder(store)
    if other is None:
        raise LockError(f"writing to {store} needs the run lock; wrap the run in "
                        f"`with storage.RunLock({str(store)!r}) as lock:` and pass lock.run_id")
    if run_id is not None and other.get("run_id") != run_id:
        raise LockError(f"{store} is locked by run {other.get('run_id')}, not by {run_id}; "
                        "a stale worker from another run must not write here")
