"""What the Prefect UI shows about a run: names, tags, artifact keys, pictures, events, failure summaries.

Room: ``flows`` — prefect (client, artifacts, events, runtime), ``storage`` (counting a ledger);
no torch. Every flow of the pipeline goes through these helpers so that a facility operator sees
the same vocabulary everywhere:

* **names** — flow-run and task-run names built from the data (store names, frame/batch ranges,
  the date): :func:`flow_run_namer`, :func:`batch_label`;
* **tags** — ``operator:<forward model>``, ``solver:<name>``, ``prior:<name>``, ``user:<login>``
  (:func:`run_tags`, :func:`tag_this_run`);
* **artifact keys** — unique per *resolved* output path (:func:`artifact_key`), so two outputs
  called ``recon.zarr`` in different folders never overwrite each other's artifacts;
* **pictures** — PNGs embedded as ``data:image/png`` URIs in markdown artifacts
  (:func:`png_markdown`). Prefect 3.9's UI renders markdown artifacts through react-markdown
  with an explicit exception for ``data:image/*`` sources on ``<img>`` (``lazy-markdown`` in the
  bundled UI); an *image* artifact would also work but prints its URL — the whole base64 — under
  the picture, and a ``file://`` URL is blocked by every browser;
* **events** — ``ddiff.audit.flagged`` and ``ddiff.run.failed`` with the store and the counts
  (:func:`emit`), for automations (``docs/deploy.md`` §4);
* **failures** — :func:`report_failure` / :func:`failure_markdown`: what failed, what is safe, the
  command that resumes, and the ``ddiff.run.failed`` event;
* **the GPU limit** — :func:`ensure_gpu_limit` creates the global concurrency limit on first use.
"""
from __future__ import annotations

import base64
import datetime as _dt
import getpass
import hashlib
import re
from pathlib import Path
from typing import Any, Callable

__all__ = ["artifact_key", "abspath", "run_tags", "tag_this_run", "flow_run_namer", "batch_label", "png_markdown",
           "emit", "store_resource", "failure_markdown", "report_failure", "is_control_signal", "interrupted", "ensure_gpu_limit", "today"]


def abspath(path: str | Path) -> str:
    """The absolute, user-expanded form of ``path`` (what the UI shows; symlinks are kept)."""
    return str(Path(path).expanduser().absolute())


def artifact_key(prefix: str, path: str | Path) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes; ≤ 100 characters) unique per
    *resolved* store path: ``<prefix>-<folder name>-<8 hex of sha256(absolute path)>``."""
    full = str(Path(path).expanduser().resolve())
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    name = re.sub(r"[^a-z0-9]+", "-", Path(full).name.lower()).strip("-") or "store"
    head = f"{prefix}-{name}"[: 100 - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _get(obj: Any, dotted: str, default=None):
    """``obj.a.b`` for pydantic models or dicts (flow-run parameters arrive as either)."""
    for part in dotted.split("."):
        if obj is None:
            return default
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
    return default if obj is None else obj


def run_tags(*, operator: str | None = None, solver: str | None = None, prior: str | None = None) -> list[str]:
    """``operator:<forward model>``, ``solver:<name>``, ``prior:<name>`` and ``user:<login>`` (who ran it:
    ``$DDIFF_USER`` when set, else the login name)."""
    import os

    tags = []
    if operator:
        tags.append(f"operator:{operator}")
    if solver:
        tags.append(f"solver:{solver}")
    if prior:
        tags.append(f"prior:{Path(str(prior)).name}")
    try:
        user = os.environ.get("DDIFF_USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        user = None
    if user:
        tags.append(f"user:{user}")
    return tags


def tag_this_run(tags: list[str]) -> None:
    """Add ``tags`` to the current flow run (its own tags are fixed when it is created; the flows
    learn theirs from their parameters). Best effort: never fails a run."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    try:
        run_id = flow_run.id
        if not run_id:
            return
        current = list(flow_run.tags or [])
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, tags=sorted(set(current) | set(tags)))
    except Exception:  # noqa: BLE001
        pass


def flow_run_namer(verb: str, store_param: str, extra: Callable[[dict], str] | None = None) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``"<verb> <store folder name> · <extra> · <date>"`` from the run's
    parameters (``store_param`` is a dotted path into them, e.g. ``params.output_store``)."""

    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters or {}
        store = _get(params, store_param)
        parts = [f"{verb} {Path(str(store)).name}" if store else verb]
        if extra is not None:
            try:
                more = extra(params)
            except Exception:  # noqa: BLE001 - a name must never fail a run
                more = ""
            if more:
                parts.append(more)
        parts.append(today())
        return " · ".join(parts)

    return name


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    vals, out = sorted(set(int(v) for v in values)), []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(out)


def batch_label(items: list, index: int | None = None, total: int | None = None) -> str:
    """``"frames 0-3 · tiles 0-2 · batch 2/9"`` for a batch of ``[[frame, tile], ...]``."""
    label = f"frames {_ranges([f for f, _ in items])} · tiles {_ranges([k for _, k in items])}"
    if index is not None and total is not None:
        label += f" · batch {index + 1}/{total}"
    return label


def _small_png(raw: bytes) -> bytes:
    """The PNG re-encoded with a 256-colour palette when that is smaller (about half, for the audit's
    figures: they sit in the Prefect database once per run). Pillow comes with matplotlib."""
    import io

    try:
        from PIL import Image

        buf = io.BytesIO()
        Image.open(io.BytesIO(raw)).convert("RGB").quantize(256).save(buf, "PNG", optimize=True)
        return buf.getvalue() if buf.tell() < len(raw) else raw
    except Exception:  # noqa: BLE001 - the original is always a valid fallback
        return raw


def png_markdown(path: str | Path, alt: str, max_bytes: int = 1_500_000) -> str:
    """``![alt](data:image/png;base64,...)`` for a PNG file, palette-compressed (empty when missing;
    when larger than ``max_bytes`` its absolute path is given instead)."""
    p = Path(path)
    if not p.is_file():
        return ""
    raw = _small_png(p.read_bytes())
    if len(raw) > max_bytes:
        return f"*{alt}: `{abspath(p)}` ({len(raw) / 1e6:.1f} MB, too large to embed)*"
    return f"![{alt}](data:image/png;base64,{base64.b64encode(raw).decode('ascii')})"


def store_resource(path: str | Path) -> dict[str, str]:
    """The Prefect event resource naming a store: ``ddiff.store.<absolute path>``."""
    full = abspath(path)
    return {"prefect.resource.id": f"ddiff.store.{full}", "prefect.resource.name": Path(full).name,
            "ddiff.store.path": full}


def emit(event: str, store: str | Path, payload: dict) -> None:
    """Emit the Prefect event ``event`` about ``store`` (related to the current flow run when there
    is one). Events are best effort by design: a lost event never fails a run."""
    from prefect.events import emit_event
    from prefect.runtime import flow_run

    related = []
    try:
        if flow_run.id:
            related.append({"prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                            "prefect.resource.role": "flow-run", "prefect.resource.name": str(flow_run.name)})
    except Exception:  # noqa: BLE001
        pass
    try:
        emit_event(event=event, resource=store_resource(store), related=related, payload=payload)
    except Exception:  # noqa: BLE001
        pass


def is_control_signal(exc: BaseException) -> bool:
    """Prefect's own control flow (a run paused or aborted by the API): not a failure to report."""
    from prefect.exceptions import PrefectSignal

    return isinstance(exc, PrefectSignal)


def interrupted(exc: BaseException) -> bool:
    """Ctrl-C, SIGTERM (a cancelled or stopped worker run) or exit — as opposed to an error."""
    from prefect.exceptions import TerminationSignal

    return isinstance(exc, (KeyboardInterrupt, SystemExit, TerminationSignal))


def describe(exc: BaseException) -> str:
    """``"Type: message"`` on one line (a termination signal says what it means)."""
    msg = " ".join(str(exc).split())
    if type(exc).__name__ == "TerminationSignal":
        msg = f"signal {getattr(exc, 'signal', '?')} (the run was cancelled or its worker stopped)"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def failure_markdown(what: str, exc: BaseException, safe: list[str], resume: list[str]) -> str:
    """The short failure summary an operator reads first: what failed, what is safe, what resumes."""
    kind = "interrupted" if interrupted(exc) else "failed"
    lines = [f"# {what} {kind.upper()}", "", f"- **error:** `{describe(exc)[:400]}`", f"- when: {today()}", "",
             "**What is safe**", ""]
    lines += [f"- {s}" for s in safe]
    lines += ["", "**To resume** (work already done is kept and skipped)", ""]
    lines += [f"```\n{r}\n```" for r in resume]
    return "\n".join(lines)


def report_failure(flow: str, store, exc: BaseException, safe: list[str], resume: list[str], *, key: str,
                   payload: dict | None = None) -> None:
    """A failed or interrupted run of ``flow`` on ``store``: the failure summary as the markdown artifact
    ``key`` and the event ``ddiff.run.failed`` (payload: ``flow``, ``error``, ``interrupted``, ``resume`` and
    ``payload``). Prefect's own pause/abort signals are not failures and publish nothing. Never raises."""
    from prefect.artifacts import create_markdown_artifact

    if is_control_signal(exc):
        return
    word = "INTERRUPTED" if interrupted(exc) else "FAILED"
    try:
        create_markdown_artifact(failure_markdown(f"{flow} of `{abspath(store)}`", exc, safe, resume), key=key,
                                 description=f"{word}: {flow} of {abspath(store)}")
    except Exception:  # noqa: BLE001
        pass
    emit("ddiff.run.failed", store, {"flow": flow, "error": describe(exc)[:500],
                                     "interrupted": interrupted(exc), "resume": resume[-1] if resume else None,
                                     **(payload or {})})


def ensure_gpu_limit(name: str, *, slots: int = 1) -> bool:
    """Make sure the Prefect global concurrency limit ``name`` exists (created with ``slots`` slots on
    first use). Returns True when it was created now. A server that refuses raises ONE line naming
    the command that creates it by hand."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    how = f"create it with `prefect gcl create {name} --limit {slots}` (one slot per GPU)"
    try:
        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(name)
                return False
            except ObjectNotFound:
                pass
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except Exception:  # noqa: BLE001 - created meanwhile by a concurrent run?
                client.read_global_concurrency_limit_by_name(name)
                return False
            return True
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"the Prefect global concurrency limit {name!r} guarding the GPU is missing and could not be "
                           f"created ({type(exc).__name__}: {exc}); {how}") from None
