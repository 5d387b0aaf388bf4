"""``reconstruct_stack``: input store -> tiled, batched, resumable reconstruction + diagnostics.

Room: ``flows`` — prefect, prefect-dask, ``storage``, ``ddiff``, ``operators``.

What happens (one flow run)::

    setup      operator + tile plan + resolved solver config; storage.create_output (refuses a
               different config unless overwrite); storage.RunLock (refuses a concurrent run)
    solve      sub-flow "solve-tiles" on the chosen task runner (bounded thread pool, or Dask via
               prefect-dask): one task per batch of B tiles (one network call per step for the
               batch), retried on failure; tasks get descriptors, never arrays; batches whose
               tiles are all in the ledger are skipped (resume)
    assemble   one task per frame: blend staged tiles into the root image (level 0), then its pyramid
    finalize   COMPLETE marker, summary markdown artifact, a small result dict

Nothing array-valued goes to the Prefect database: results are not persisted and every task
returns a small dict. The device section of a task is guarded by the Prefect global concurrency
limit ``execution.gpu_limit`` (``strict=True``) when the device is CUDA.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

import storage
from ddiff.priors.loading import NAMED_WEIGHTS

from . import tiles as T
from .checks import check_reconstruct
from .noise import noise_model, resolve_noise, sample_frames
from .params import ReconstructParams
from .ui import (abspath, artifact_key, batch_label, ensure_gpu_limit, flow_run_namer, is_control_signal, run_tags,
                 tag_this_run)

__all__ = ["reconstruct_stack", "run_config", "artifact_key"]


def _retryable(task, task_run, state) -> bool:
    """Retry failures a second try may fix (a lost worker, a transient I/O error); never the
    deliberate ``fail_after_tiles`` interruption nor deterministic errors — bad input or
    configuration (``ValueError``, storage errors) and writes that fail for a lasting reason (disk
    full, file-size limit, read-only or vanished folder): those fail the same way again."""
    try:
        state.result()
    except (T.InjectedFailure, ValueError, TypeError, KeyError):
        return False
    except OSError as exc:
        return exc.errno not in storage.safety.DETERMINISTIC_ERRNOS
    except Exception:  # noqa: BLE001
        return True
    return True


_not_injected = _retryable  # the name tests and older callers use


def _batch_run_name(parameters: dict) -> str:
    d = parameters.get("desc") or {}
    return "solve " + (d.get("label") or batch_label(d.get("items") or []))


@task(name="solve-tile-batch", task_run_name=_batch_run_name, persist_result=False, cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=1, retry_condition_fn=_retryable)
def solve_tiles(desc: dict) -> dict:
    """One batch of tiles (descriptor in, small dict out); see :func:`flows.tiles.solve_batch`."""
    return T.solve_batch(desc)


@task(name="assemble-frame", task_run_name="assemble frame {frame}", persist_result=False, cache_policy=NO_CACHE, retries=1)
def assemble_frame(output: str, frame: int, run_id: str) -> int:
    return storage.assemble_frame(output, frame, run_id=run_id)


def run_config(p: ReconstructParams) -> tuple[dict, "T.Geometry", int, str]:
    """``(config, geometry, channels, prior_sha256)``: the run configuration recorded in (and hashed
    by) the output manifest — operator, noise, prior identity, solver and resolved hyperparameters,
    seed, batch size and dtype — and the tile geometry."""
    stack = storage.open_stack(p.input_store)
    _, C, H, W = stack.shape
    prior_path, prior_sha = T.prior_identity(p.prior)
    probe = T.build_operator(p.operator.name, p.operator.params, None)
    f = 1
    if hasattr(probe, "output_shape"):  # super-resolution: the stack holds the low-resolution grid
        f = max(1, round(512 / probe.output_shape(512, 512)[0]))
    op = T.build_operator(p.operator.name, p.operator.params, (H * f, W * f))
    overlap = p.overlap if getattr(op, "halo", None) is not None else 0
    if 2 * overlap > min(p.tile, H, W) and op.halo is not None:
        raise ValueError(f"overlap={p.overlap} is too large for tile={p.tile}: need 2*overlap <= tile")
    geo = T.operator_geometry(op, (H, W), C, p.tile, overlap)
    noise, estimate = resolve_noise(p.noise, stack)
    _check_noise(noise, stack)
    config = solver_config(p, p.operator.name, p.operator.params, prior_path, noise.model_dump(exclude_none=True))
    if estimate is not None:  # deterministic (a fixed sample of the stack): a resumed run hashes the same
        config["noise_estimate"] = estimate
    return config, geo, C, prior_sha


def solver_config(p: ReconstructParams, op_name: str, op_params: dict, prior_path: str, noise: dict) -> dict:
    """The hashed run configuration shared by the tiled and the whole-frame (:mod:`flows.frames`) paths."""
    config = {
        "operator": {"name": op_name, "params": op_params},
        "noise": noise,
        "prior": p.prior if p.prior in NAMED_WEIGHTS else Path(p.prior).name,
        "prior_path": prior_path,
        "solver": p.solver.name,
        "hyperparameters": p.solver.resolve(op_name),
        "seed": int(p.seed),
        "batch_size": int(p.execution.batch_size),
        "dtype": p.execution.dtype,
        # torch's CPU reductions split work by thread count, so it changes the last bits: every task
        # runs with this recorded count (local threads, Dask workers, a resumed mix give the same bytes)
        "torch_threads": T.resolved_threads(p.execution.torch_threads),
    }
    if p.solver.seeds > 1:  # only then: configurations of single-sample runs keep their hash
        config["seeds"] = int(p.solver.seeds)
    return config


def _check_noise(noise, stack: storage.Stack) -> None:
    """The noise model accepts the data (valid entries of the estimation sample) — before a byte is
    written; e.g. a camera offset above the dark pixels is one clear line naming ``noise.offset``."""
    import torch

    frames, valid = sample_frames(stack)
    model = noise_model(noise.model_dump(exclude_none=True), stack)
    vals = stack.to_model(frames[valid])
    if vals.size:
        model.validate(torch.from_numpy(vals)[None])


def noise_text(config: dict) -> str:
    """One line: the run's noise model in data units, and where its parameters came from."""
    n = config["noise"]
    est = config.get("noise_estimate")
    if n["kind"] == "gaussian":
        s = f"Gaussian σ = {n['sigma']:.4g} ADU"
    else:
        s = f"camera gain {n['gain']:.4g} e⁻/ADU, offset {n['offset']:.4g} ADU"
        s += f", read noise {n['read_noise']:.4g} e⁻" if n.get("read_noise") is not None else " (pure Poisson)"
    if est:
        fixed = f"; given: {', '.join(est['fixed'])}" if est.get("fixed") else ""
        s += f" — estimated from the data ({est['summary']}{fixed})"
    return s

def _descriptors(p: ReconstructParams, out: storage.OutputStore, config: dict, run_id: str, down: int) -> list[dict]:
    batches = T.group_batches(out.plan, out.n_frames, p.execution.batch_size, int(out.manifest["scale"]), down)
    led = out.ledger
    descs = []
    for i, items in enumerate(batches):
        done = [it for it in items if led.is_done(it[0], it[1], "solved")]
        if len(done) == len(items):
            continue
        descs.append({"input": str(Path(p.input_store).resolve()), "output": str(out.path.resolve()),
                      "run_id": run_id, "items": items, "done": done, "config": config,
                      "label": batch_label(items, i, len(batches)),
                      "device": p.execution.device, "dtype": p.execution.dtype,
                      "torch_threads": p.execution.torch_threads, "gpu_limit": p.execution.gpu_limit})
    return descs


@flow(name="solve-tiles", persist_result=False, flow_run_name=flow_run_namer("solve tiles of", "params.output_store"))
def solve_stage(params: ReconstructParams, run_id: str, artifact_id: str | None = None) -> dict:
    """Submit one task per pending batch on this flow's task runner; track progress as batches finish.

    Its parameters are the run's (small) parameter model and lock id; the batch descriptors are
    rebuilt here from the output's manifest and ledger, so nothing large enters the Prefect DB."""
    p = params
    logger = get_run_logger()
    out = storage.open_output(p.output_store)
    config = out.manifest["config"]
    prior = T.load_prior_cached(config["prior_path"], p.execution.device, p.execution.dtype)
    descs = _descriptors(p, out, config, run_id, int(getattr(prior, "downsampling", 1) or 1))
    total, already = out.n_frames * out.plan.n_tiles, out.ledger.count("solved")
    fail_after_tiles = p.fail_after_tiles
    if fail_after_tiles is not None:  # testing hook: submit only up to the batch holding the k-th new tile
        k, left, cut = int(fail_after_tiles), int(fail_after_tiles), []
        if k == 0:
            raise T.InjectedFailure("fail_after_tiles=0: interrupted before any tile")
        for d in descs:
            n_new = len(d["items"]) - len(d["done"])
            if n_new >= left:
                cut.append({**d, "fail_after": left})
                break
            cut.append(d)
            left -= n_new
        descs = cut
    task = solve_tiles.with_options(retries=p.execution.retries)
    window = _in_flight(p)
    pending, running = list(descs), []
    done_tiles, solver_s, nfe, errors, pids, threads = already, 0.0, 0, [], set(), set()
    while pending or running:
        # keep at most `window` batches in flight; after the first error nothing new is scheduled
        while pending and len(running) < window and not errors:
            with tags(*run_tags(operator=p.operator.name, solver=p.solver.name, prior=p.prior)):
                running.append(task.submit(pending.pop(0)))
        if not running:
            break
        fut = next(as_completed(running))
        running.remove(fut)
        try:
            r = fut.result()
        except Exception as exc:  # noqa: BLE001 - let the running ones finish (their work is kept), then raise
            if not errors:
                logger.error("stopping: %s (%d batches not started)", exc, len(pending))
            errors.append(exc)
            continue
        done_tiles += r["written"]
        solver_s += r["seconds"]
        nfe += r["nfe"] * r["tiles"]
        pids.add(r["pid"])
        threads.add(r.get("threads"))
        if artifact_id is not None:
            update_progress_artifact(artifact_id, progress=100.0 * done_tiles / max(total, 1))
        logger.info("tiles %d/%d solved (batch of %d, %.2fs)", done_tiles, total, r["tiles"], r["seconds"])
    if errors:
        raise errors[0]
    return {"solved": done_tiles - already, "solver_seconds": solver_s, "nfe": nfe, "pids": sorted(pids),
            "threads": sorted(threads)}


def _in_flight(p: ReconstructParams) -> int:
    """How many batch tasks to keep submitted at once: the thread pool's size, or the Dask cluster's
    thread count (so the first failure stops the run within one batch per worker)."""
    ex = p.execution
    if not (ex.dask_address or ex.dask_workers):
        return max(1, ex.max_workers)
    try:
        from prefect.context import FlowRunContext

        info = FlowRunContext.get().task_runner.client.scheduler_info()
        return max(1, sum(int(w.get("nthreads", 1)) for w in info["workers"].values()))
    except Exception:  # noqa: BLE001 - no scheduler info: one per requested worker
        return max(1, ex.dask_workers, ex.max_workers)


def _api_url() -> str | None:
    """The API URL this flow run talks to (a temporary server's too), for the processes it starts."""
    try:
        from prefect.context import FlowRunContext

        return str(FlowRunContext.get().client.api_url).rstrip("/") or None
    except Exception:  # noqa: BLE001 - outside a flow run
        return None


def _task_runner(p: ReconstructParams):
    ex = p.execution
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


def frame_table(out: storage.OutputStore) -> list[dict]:
    """Per-frame diagnostics from the output's diagnostics dataset (small: one row per frame)."""
    ds = out.open_diagnostics()
    chi = np.asarray(ds["chi2_nu"].values, dtype=np.float64)
    sec = np.asarray(ds["seconds"].values, dtype=np.float64)
    rows = []
    for t in range(chi.shape[0]):
        rows.append({"frame": t, "chi2_mean": float(np.nanmean(chi[t])), "chi2_max": float(np.nanmax(chi[t])),
                     "seconds": float(np.nansum(sec[t]))})
    return rows


def chi2_flags(out: storage.OutputStore, alpha: float = 0.01) -> list[tuple[int, int, float, float]]:
    """Tiles whose χ²_ν is implausible under Gaussian noise: exact χ²_m upper-tail ``p < alpha``
    (m = valid values in the tile's blend window; for photon counts the Gaussian reference is an
    approximation — the audit's tests are exact). Returns ``(frame, tile, chi2_nu, p)``."""
    import torch

    from ddiff.audit import scaled_chi2_sf

    ds = out.open_diagnostics()
    chi = np.asarray(ds["chi2_nu"].values, dtype=np.float64)
    C = out.channels
    m = np.array([C * t.blend_shape[0] * t.blend_shape[1] for t in out.plan], dtype=np.float64)
    m = np.broadcast_to(m, chi.shape).copy()
    if "dof" in ds:  # valid measurements per tile (masked entries do not count)
        m = np.where(np.isfinite(ds["dof"].values), ds["dof"].values, m)
    S = torch.from_numpy(chi * m)
    mm = torch.from_numpy(m)
    p = scaled_chi2_sf(S, mm, 2 * mm, 8 * mm).numpy()
    return [(int(t), int(k), float(chi[t, k]), float(p[t, k])) for t, k in zip(*np.nonzero(p < alpha))]


def settings_text(config: dict) -> str:
    """One line saying how the solver chose its data step (for summaries and the audit)."""
    hp = config.get("hyperparameters", {})
    if hp.get("x_update") == "discrepancy":
        return (f"data step: self-calibrated — every tile's x-update stops where χ²_ν = τ = {hp.get('tau', 1.0):g} "
                f"(discrepancy principle; {hp.get('steps')} steps, noising `{hp.get('noising')}`); χ²_ν near 1 is "
                "by construction, so read the audit's regional tests, not the frame χ²_ν, for structure left unexplained")
    if hp.get("x_update") == "gradient":
        return f"data step: fixed step sizes γ₀ = {hp.get('gamma0')} (a = {hp.get('a')}, b = {hp.get('b')}; the paper's values)"
    return f"solver `{config.get('solver')}` with its own data step"


def summary_markdown(p: ReconstructParams, out: storage.OutputStore, result: dict, rows: list[dict],
                     flags: list, fit: list[dict] | None = None) -> str:
    """The run summary (markdown). ``rows``: :func:`frame_table` (the solver's tile χ²_ν); ``fit``:
    :func:`flows.run_report.frame_fit_rows` (the frame χ²_ν, the audit's definition)."""
    fit_by = {r["frame"]: r for r in fit or []}
    lines = ["# ddiff reconstruction", "",
             f"- input: `{abspath(p.input_store)}`", f"- output: `{abspath(out.path)}` (OME-NGFF image at the root, {out.levels} pyramid levels, axes "
             f"`{out.layout.axes}`; diagnostics: `diagnostics/`)",
             f"- operator: `{p.operator.name}` {p.operator.params or ''}; noise: {noise_text(out.manifest['config'])}",
             f"- prior: `{p.prior}`; solver: `{p.solver.name}` {out.manifest['config']['hyperparameters']}",
             f"- {settings_text(out.manifest['config'])}",
             f"- tiles: {out.plan.n_tiles}/frame × {out.n_frames} frames (tile {list(out.plan.tile)}, overlap "
             f"{out.plan.overlap}, halo {out.plan.halo}); batch {p.execution.batch_size}; device `{p.execution.device}`",
             f"- this run: {result['solved']} tiles solved, {result['skipped']} already done (resume); "
             f"wall {result['wall_seconds']:.1f}s, solver {result['solver_seconds']:.1f}s", "",
             "| frame | χ²_ν (frame) | expected | p (misfit) | tile χ²_ν mean | tile χ²_ν max | solver s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows[:200]:
        f = fit_by.get(r["frame"], {})
        frame_chi = f"{f['chi2_nu']:.4f}" if f else "—"
        lines.append(f"| {r['frame']} | {frame_chi} | {f.get('expected', '—')} | {f.get('p_misfit', '—')} | "
                     f"{r['chi2_mean']:.4f} | {r['chi2_max']:.4f} | {r['seconds']:.2f} |")
    lines += ["", "*χ²_ν (frame)* is the number the audit and `ddiff demo` report: the assembled frame re-measured, "
              "entries within the operator's halo of the frame edge left out. *tile χ²_ν* is each tile's own fit "
              "(blend window, against its reflect-padded read window, edge included) — what the self-calibrated data "
              "step drives to τ; the two differ by a few percent (docs/audit.md §1).",
              "", f"**Tiles with implausible tile χ²_ν (p < 0.01): {len(flags)}**", ""]
    for t, k, c, pv in flags[:50]:
        lines.append(f"- frame {t} tile {k}: χ²_ν = {c:.3f} (p = {pv:.2g})")
    lines += ["", "Run `ddiff audit` (flow `audit-reconstruction`) for the regional hallucination audit."]
    return "\n".join(lines)


def _discard_failed_start(out: storage.OutputStore, action: str) -> None:
    """A run that created its output and failed before its first tile leaves nothing (we hold the
    lock, nothing of value is inside), so a corrected command starts clean."""
    try:
        if action != "resume" and out.ledger.count("solved") == 0:
            shutil.rmtree(out.path, ignore_errors=True)
    except Exception:  # noqa: BLE001 - never hide the run's own error
        pass


def _frames_label(params: dict) -> str:
    inp = params.get("params")
    inp = inp.get("input_store") if isinstance(inp, dict) else getattr(inp, "input_store", None)
    n = storage.open_stack(inp).shape[0]
    return f"{n} frame{'s' if n != 1 else ''} from {Path(inp).name}"


@flow(name="reconstruct-stack", persist_result=False, task_runner=ThreadPoolTaskRunner(max_workers=2),
      flow_run_name=flow_run_namer("reconstruct", "params.output_store", _frames_label))
def reconstruct_stack(params: ReconstructParams) -> dict:
    """Reconstruct every frame of ``params.input_store`` into ``params.output_store``.

    Resumable: rerun with the same parameters to finish an interrupted run (done tiles are skipped,
    results are bit-identical to an uninterrupted run). A different configuration is refused
    unless ``overwrite``; a concurrent run on the same output is refused (run lock).
    A failed or interrupted run marks its progress artifact, publishes a failure summary (what
    failed, what is safe, the resume command) and emits ``ddiff.run.failed`` (:mod:`flows.run_report`).
    Returns ``{"output", "n_frames", "n_tiles", "solved", "skipped", "wall_seconds",
    "solver_seconds", "nfe", "complete"}``.
    """
    from .run_report import publish_failure

    p = params if isinstance(params, ReconstructParams) else ReconstructParams.model_validate(params)
    tag_this_run(run_tags(operator=p.operator.name, solver=p.solver.name, prior=p.prior))
    state: dict = {"progress": None}
    try:
        return _reconstruct(p, state)
    except BaseException as exc:
        if p.artifacts and not is_control_signal(exc):
            publish_failure(p, exc, state["progress"])
        raise


def _reconstruct(p: ReconstructParams, state: dict) -> dict:
    from prefect.runtime import flow_run

    from .run_report import frame_fit_rows, publish_fit_table

    if storage.measurement_of(p.input_store) is not None:  # sinograms, k-space, ...: whole frames
        from .frames import reconstruct_frames

        return reconstruct_frames(p, state)
    logger = get_run_logger()
    t0 = time.perf_counter()
    # before a byte is written: device, noise, operator keywords, prior (file, keys, channels), solver
    # keywords, output target (see flows.checks) — a start that fails here leaves nothing
    prep = check_reconstruct(p)
    config, geo, prior_sha = prep.config, prep.geo, prep.prior_sha256
    if p.execution.device.startswith("cuda") and p.execution.gpu_limit:
        if ensure_gpu_limit(p.execution.gpu_limit):
            logger.info("created the Prefect global concurrency limit %r (1 slot); more GPUs: prefect gcl update %s "
                        "--limit N", p.execution.gpu_limit, p.execution.gpu_limit)
    out = storage.create_output(p.output_store, p.input_store, geo.plan, config, prior_sha256=prior_sha,
                                scale=geo.scale, overwrite=p.overwrite, replace_unused=True)
    run_id = str(flow_run.id or "") or None
    lock = storage.RunLock(out.path, run_id=run_id).acquire()
    try:
        total = out.n_frames * out.plan.n_tiles
        already = out.ledger.count("solved")
        logger.info("%s: %d frames × %d tiles, %d already solved", out.path, out.n_frames, out.plan.n_tiles, already)
        art = None
        if p.artifacts:
            art = create_progress_artifact(progress=100.0 * already / max(total, 1),
                                           key=artifact_key("reconstruct-progress", p.output_store),
                                           description=f"tiles solved in {abspath(out.path)}")
            state["progress"] = art
        stage = {"solved": 0, "solver_seconds": 0.0, "nfe": 0, "pids": [], "threads": []}
        if already < total or p.fail_after_tiles is not None:
            from .volumes import volume_stage  # z-stacks: bricks instead of tiles, the rest as here

            stage = (volume_stage if "volume" in config else solve_stage).with_options(task_runner=_task_runner(p))(
                p, lock.run_id, None if art is None else str(art))
        futs = [assemble_frame.submit(str(out.path), t, lock.run_id) for t in range(out.n_frames)]
        for f in futs:
            f.result()
        storage.finalize(out, run_id=lock.run_id)
    except BaseException:
        _discard_failed_start(out, prep.action)
        lock.release(quiet=True)  # the run's own error is what the user must see
        raise
    lock.release()
    result = {"output": abspath(out.path), "n_frames": out.n_frames, "n_tiles": total, "solved": stage["solved"],
              "skipped": already, "wall_seconds": time.perf_counter() - t0,
              "solver_seconds": stage["solver_seconds"], "nfe": stage["nfe"], "complete": True,
              "worker_pids": stage["pids"], "worker_threads": stage["threads"], "noise": out.manifest["config"]["noise"],
              "noise_estimate": out.manifest["config"].get("noise_estimate")}
    if p.artifacts:
        rows, flags, fit = frame_table(out), chi2_flags(out), frame_fit_rows(out.path)
        publish_fit_table(out.path, fit)
        create_markdown_artifact(summary_markdown(p, out, result, rows, flags, fit),
                                 key=artifact_key("reconstruct-summary", p.output_store),
                                 description=f"reconstruction summary: {abspath(out.path)}")
    logger.info("done: %s", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()})
    return result
