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
  only when it is complete, so ``path`` is absent, the old complete store, or the new complete one;
* :func:`atomic_write_json` writes ``path`` through a temporary file + ``os.replace`` so a reader
  sees either the old or the new complete file, never a torn one (the ledger relies on this);
* :class:`RunLock` is an ``O_CREAT | O_EXCL`` lock file ``<store>/.ddiff.lock`` holding
  ``{"pid", "host", "run_id", "created"}``. A lock whose pid is dead *on this host* is stale and is
  broken automatically; a lock held by another host is never broken automatically (we cannot see
  its processes) — the error says which file to delete once that run is known to be gone.
"""
from __future__ import annotations

import hashlib
import json
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
    "SourceError", "safe_subpath", "atomic_write", "atomic_directory", "atomic_write_json", "read_json", "canonical_hash",
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


@contextmanager
def atomic_directory(path: str | os.PathLike, replace_old: bool, label: str = "tmp") -> Iterator[Path]:
    """Yield a fresh hidden sibling folder path ``.<name>.<label>-<pid>-<hex>`` to build a store in;
    when the block ends normally, swap it into ``path``.

    ``replace_old``: ``path`` holds an old store to replace — it is renamed aside, the new folder
    renamed in, then the old one deleted (a reader sees the old or the new store, never a mix).
    Otherwise ``path`` must be absent or an empty folder (removed first). Deciding whether an
    existing ``path`` may be replaced is the caller's job. On any exception the temporary folder is
    deleted and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if replace_old:
            trash = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            if path.exists():  # an empty folder
                path.rmdir()
            os.replace(tmp, path)
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
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self._held = True
            return self
        raise LockError(f"could not acquire {self.path} after 3 attempts (contention); retry")

    def release(self) -> None:
        if not self._held:
            return
        other = self.holder(self.store)
        if other is not None and other.get("run_id") == self.run_id:
            os.remove(self.path)
        self._held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def require_lock(store: str | os.PathLike, run_id: str | None) -> None:
    """Raise :class:`LockError` unless ``store`` is locked (by ``run_id`` when one is given)."""
    other = RunLock.holder(store)
    if other is None:
        raise LockError(f"writing to {store} needs the run lock; wrap the run in "
                        f"`with storage.RunLock({str(store)!r}) as lock:` and pass lock.run_id")
    if run_id is not None and other.get("run_id") != run_id:
        raise LockError(f"{store} is locked by run {other.get('run_id')}, not by {run_id}; "
                        "a stale worker from another run must not write here")
