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
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

import storage
from ddiff.priors.loading import NAMED_WEIGHTS

from . import tiles as T
from .batches import Tally, batch_run_name, cut_for_testing, in_flight, retryable, run_batches, run_stage
from .calibration import attach_calibration
from .checks import check_reconstruct
from .noise import noise_model, resolve_noise, sample_frames
from .params import ReconstructParams
from .volumes import volume_stage
from .ui import (abspath, artifact_key, batch_label, ensure_gpu_limit, flow_run_namer, is_control_signal, run_tags,
                 tag_this_run)

__all__ = ["reconstruct_stack", "run_config", "artifact_key"]


@task(name="solve-tile-batch", task_run_name=batch_run_name, persist_result=False, cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=1, retry_condition_fn=retryable)
def solve_tiles(desc: dict) -> dict:
    """One batch of tiles (descriptor in, small dict out); see :func:`flows.tiles.solve_batch`."""
    return T.solve_batch(desc)


@task(name="assemble-frame", task_run_name="assemble frame {frame}", persist_result=False, cache_policy=NO_CACHE, retries=1,
      retry_condition_fn=retryable)
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
        small = f"tile={p.tile}" if p.tile <= min(H, W) else f"the {H}×{W} frames of {p.input_store}"
        raise ValueError(f"overlap={p.overlap} is too large for {small}: need 2*overlap <= min(tile, frame height, "
                         f"frame width); pass overlap={min(p.tile, H, W) // 2} or less")
    geo = T.operator_geometry(op, (H, W), C, p.tile, overlap)
    noise, estimate = resolve_noise(p.noise, stack)
    _check_noise(noise, stack)
    config = solver_config(p, p.operator.name, p.operator.params, prior_path, noise.model_dump(exclude_none=True))
    if estimate is not None:  # deterministic (a fixed sample of the stack): a resumed run hashes the same
        config["noise_estimate"] = estimate
    sigma = config["noise"].get("sigma") if config["noise"].get("kind") == "gaussian" else None
    attach_calibration(p.calibration, p.solver.seeds, config, prior_sha,
                       None if sigma is None else float(sigma) * abs(stack.intensity.scale))
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
    elif p.keep_features:  # a one-seed calibration run (flows.calibrate): the bound features are kept
        config["features"] = True
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
    if p.fail_after_tiles is not None:  # testing hook: submit only up to the batch holding the k-th new tile
        descs = cut_for_testing(descs, p.fail_after_tiles, lambda d: len(d["items"]) - len(d["done"]))
    tally = Tally(already, total, "tiles", artifact_id)
    return run_batches(solve_tiles.with_options(retries=p.execution.retries), descs, window=in_flight(p.execution),
                       tally=tally, logger=logger,
                       task_tags=run_tags(operator=p.operator.name, solver=p.solver.name, prior=p.prior))


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

    from .run_report import (chi2_flags, frame_fit_rows, frame_table, prior_only_result, publish_fit_table,
                             summary_markdown)

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
        stage = run_stage(volume_stage if "volume" in config else solve_stage,  # z-stacks: bricks (flows.volumes)
                          p, out, lock.run_id, already, total, "tiles", state)
        futs = [assemble_frame.submit(str(out.path), t, lock.run_id) for t in range(out.n_frames)]
        for f in futs:
            f.result()
        storage.finalize(out, run_id=lock.run_id)
    except BaseException:
        _discard_failed_start(out, prep.action)
        lock.release(quiet=True)  # the run's own error is what the user must see
        raise
    lock.release()
    result = {"output": abspath(out.path), "n_frames": out.n_frames, "n_tiles": total, "unit": "tiles",
              "solved": stage["solved"],
              "skipped": already, "wall_seconds": time.perf_counter() - t0,
              "solver_seconds": stage["solver_seconds"], "nfe": stage["nfe"], "complete": True,
              "worker_pids": stage["pids"], "worker_threads": stage["threads"], "noise": out.manifest["config"]["noise"],
              "noise_estimate": out.manifest["config"].get("noise_estimate"), **prior_only_result(out, logger)}
    if p.artifacts:
        rows, flags, fit = frame_table(out), chi2_flags(out), frame_fit_rows(out.path)
        publish_fit_table(out.path, fit)
        create_markdown_artifact(summary_markdown(p, out, result, rows, flags, fit),
                                 key=artifact_key("reconstruct-summary", p.output_store),
                                 description=f"reconstruction summary: {abspath(out.path)}")
    logger.info("done: %s", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()})
    return result
