"""Running a stage's batch tasks: which task runner, how many in flight, retries, and the loop that
submits descriptors, collects small result dicts and stops scheduling after the first failure.

Room: ``flows`` — prefect, prefect-dask; no torch, no array ever passes through here (tasks get
descriptors and return small dicts). Shared by the tiled path (:mod:`flows.reconstruct`), the
whole-frame path (:mod:`flows.frames`) and every later stage that solves work in batches.

The loop (:func:`run_batches`) keeps at most ``window`` batches submitted — the thread pool's size or
the Dask cluster's thread count — so that after the first error at most one batch per worker is
still running: those finish (their work is in the ledger and kept), nothing new starts, and the
first error is raised. Resume is the caller's business (it only submits pending batches).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

from prefect import tags
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

import storage

from .tiles import InjectedFailure
from .ui import abspath, artifact_key, batch_label

__all__ = ["retryable", "batch_run_name", "task_runner", "in_flight", "cut_for_testing", "Tally", "run_batches", "run_stage"]


def retryable(task, task_run, state) -> bool:
    """Retry failures a second try may fix (a lost worker, a transient I/O error); never the
    deliberate ``fail_after_tiles`` interruption nor deterministic errors — bad input or
    configuration (``ValueError``, storage errors) and writes that fail for a lasting reason (disk
    full, file-size limit, read-only or vanished folder): those fail the same way again."""
    try:
        state.result()
    except (InjectedFailure, ValueError, TypeError, KeyError):
        return False
    except OSError as exc:
        return exc.errno not in storage.safety.DETERMINISTIC_ERRNOS
    except Exception:  # noqa: BLE001
        return True
    return True


def batch_run_name(parameters: dict) -> str:
    """The task-run name of a batch in the UI: ``solve <label>`` (e.g. ``solve batch 3/12: frame 1 tiles 0-3``)."""
    d = parameters.get("desc") or {}
    return "solve " + (d.get("label") or batch_label(d.get("items") or []))


def _api_url() -> str | None:
    """The API URL this flow run talks to (a temporary server's too), for the processes it starts."""
    try:
        from prefect.context import FlowRunContext

        return str(FlowRunContext.get().client.api_url).rstrip("/") or None
    except Exception:  # noqa: BLE001 - outside a flow run
        return None


def task_runner(execution):
    """The stage's task runner from ``ReconstructParams.execution``: a bounded thread pool, a Dask
    cluster at ``dask_address``, or a local Dask cluster of ``dask_workers`` processes."""
    ex = execution
    if ex.dask_address or ex.dask_workers:
        from prefect_dask import DaskTaskRunner

        if ex.dask_address:
            return DaskTaskRunner(address=ex.dask_address)
        # workers get a scratch directory outside the repository (see flows/__init__.py for the
        # import-path guard that makes `import storage` right whatever the directory is)
        kw = {"n_workers": ex.dask_workers, "threads_per_worker": 1, "processes": True,
              "dashboard_address": None, "local_directory": tempfile.mkdtemp(prefix="ddiff-dask-")}
        api = _api_url()
        if api:  # workers report to this run's API server instead of each starting a temporary one
            kw["env"] = {"PREFECT_API_URL": api}
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kw)
    return ThreadPoolTaskRunner(max_workers=ex.max_workers)


def in_flight(execution) -> int:
    """How many batch tasks to keep submitted at once: the thread pool's size, or the Dask cluster's
    thread count (so the first failure stops the run within one batch per worker). Call inside the
    stage's flow run (it asks that run's task runner)."""
    ex = execution
    if not (ex.dask_address or ex.dask_workers):
        return max(1, ex.max_workers)
    try:
        from prefect.context import FlowRunContext

        info = FlowRunContext.get().task_runner.client.scheduler_info()
        return max(1, sum(int(w.get("nthreads", 1)) for w in info["workers"].values()))
    except Exception:  # noqa: BLE001 - no scheduler info: one per requested worker
        return max(1, ex.dask_workers, ex.max_workers)


def cut_for_testing(descs: list[dict], fail_after: int, n_new) -> list[dict]:
    """The ``fail_after_tiles`` testing hook: the descriptors up to the one holding the ``fail_after``-th
    new item, which gets ``"fail_after"`` (its task raises :class:`InjectedFailure` after writing that
    many). ``n_new(desc)``: the items of ``desc`` not yet done."""
    left, cut = int(fail_after), []
    if left == 0:
        raise InjectedFailure("fail_after_tiles=0: interrupted before any item")
    for d in descs:
        n = n_new(d)
        if n >= left:
            cut.append({**d, "fail_after": left})
            break
        cut.append(d)
        left -= n
    return cut


@dataclass
class Tally:
    """What a stage's finished batches add up to; each batch task returns ``{"tiles", "written",
    "seconds", "nfe", "pid", ["threads"]}`` (``tiles``: items in the batch, tiles or frames)."""

    done: int  # items already done before this run (resume)
    total: int
    unit: str = "tiles"
    artifact_id: str | None = None
    already: int = field(init=False)
    solver_seconds: float = 0.0
    nfe: int = 0
    pids: set = field(default_factory=set)
    threads: set = field(default_factory=set)

    def __post_init__(self):
        self.already = self.done

    def add(self, r: dict, logger) -> None:
        self.done += r["written"]
        self.solver_seconds += r["seconds"]
        self.nfe += r["nfe"] * r["tiles"]
        self.pids.add(r["pid"])
        if r.get("threads") is not None:
            self.threads.add(r["threads"])
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, progress=100.0 * self.done / max(self.total, 1))
        logger.info("%s %d/%d solved (batch of %d, %.2fs)", self.unit, self.done, self.total, r["tiles"], r["seconds"])

    def result(self) -> dict:
        return {"solved": self.done - self.already, "solver_seconds": self.solver_seconds, "nfe": self.nfe,
                "pids": sorted(self.pids), "threads": sorted(self.threads)}


def run_batches(task, descs: list[dict], *, window: int, tally: Tally, logger, task_tags=()) -> dict:
    """Submit ``task`` once per descriptor with at most ``window`` in flight, add each result to
    ``tally``; after the first error nothing new is scheduled, the running ones finish (their work is
    kept) and that error is raised. Returns ``tally.result()``."""
    pending, running, errors = list(descs), [], []
    while pending or running:
        while pending and len(running) < window and not errors:
            with tags(*task_tags):
                running.append(task.submit(pending.pop(0)))
        if not running:
            break
        fut = next(as_completed(running))
        running.remove(fut)
        try:
            r = fut.result()
        except Exception as exc:  # noqa: BLE001 - let the running ones finish, then raise
            if not errors:
                logger.error("stopping: %s (%d batches not started)", exc, len(pending))
            errors.append(exc)
            continue
        tally.add(r, logger)
    if errors:
        raise errors[0]
    return tally.result()


def run_stage(stage_flow, p, out, run_id: str, already: int, total: int, unit: str, state: dict) -> dict:
    """Publish the run's progress artifact (``state["progress"]``: its id, for the failure summary) and
    run ``stage_flow(p, run_id, artifact_id)`` — the sub-flow that submits the pending batches
    (:func:`run_batches`) — on the execution's task runner; nothing to do when every item is done.
    Returns the stage's :meth:`Tally.result`."""
    art = None
    if p.artifacts:
        art = create_progress_artifact(progress=100.0 * already / max(total, 1),
                                       key=artifact_key("reconstruct-progress", p.output_store),
                                       description=f"{unit} solved in {abspath(out.path)}")
        state["progress"] = art
    if already >= total and p.fail_after_tiles is None:
        return Tally(already, total, unit).result()
    return stage_flow.with_options(task_runner=task_runner(p.execution))(p, run_id, None if art is None else str(art))
