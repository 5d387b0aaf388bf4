"""The solve stage of a volume run: one Prefect task per batch of bricks (:mod:`flows.bricks`).

Room: ``flows`` — prefect, :mod:`flows.batches` (the shared scheduler), :mod:`flows.bricks`.

``reconstruct_stack`` runs everything else of a volume run as for 2-D tiles — pre-flight checks
(:func:`flows.bricks.check_volume`), ``storage.create_output``, the run lock, the progress artifact,
assembly of every plane from its staged tiles, pyramid, ``finalize`` and the summary; only this
stage differs: bricks instead of tiles. Descriptors are rebuilt from the output's manifest and
ledger (nothing large enters the Prefect database); a batch whose plane-tiles are all in the ledger
is skipped, a batch with any pending one is solved again whole and writes only those (resume gives
the bytes of an uninterrupted run).
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

import storage

from . import bricks as B
from . import tiles as T
from .batches import Tally, batch_run_name, cut_for_testing, in_flight, retryable, run_batches
from .params import ReconstructParams
from .ui import batch_label, flow_run_namer, run_tags

__all__ = ["solve_bricks", "volume_stage", "brick_descriptors"]


@task(name="solve-brick-batch", task_run_name=batch_run_name, persist_result=False, cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=1, retry_condition_fn=retryable)
def solve_bricks(desc: dict) -> dict:
    """One batch of bricks (descriptor in, small dict out); see :func:`flows.bricks.solve_brick_batch`."""
    return B.solve_brick_batch(desc)


def brick_descriptors(p: ReconstructParams, out: storage.OutputStore, config: dict, run_id: str, down: int) -> list[dict]:
    """One descriptor per batch of bricks with a pending plane-tile (fixed batches: :func:`flows.bricks.brick_batches`)."""
    batches = B.brick_batches(out, p.execution.batch_size, down)
    layout, zplan, led = out.layout, storage.bricks.ZPlan(**config["volume"]["zplan"]), out.ledger
    descs = []
    for i, bricks in enumerate(batches):
        items = [[f, k] for t, j, k in bricks for f in storage.bricks.brick_frames(layout, zplan, t, j)]
        done = [it for it in items if led.is_done(it[0], it[1], "solved")]
        if len(done) == len(items):
            continue
        descs.append({"input": str(Path(p.input_store).resolve()), "output": str(out.path.resolve()), "run_id": run_id,
                      "bricks": bricks, "items": items, "done": done, "config": config,
                      "label": f"bricks {len(bricks)} · " + batch_label(items, i, len(batches)),
                      "device": p.execution.device, "dtype": p.execution.dtype,
                      "torch_threads": p.execution.torch_threads, "gpu_limit": p.execution.gpu_limit})
    return descs


@flow(name="solve-bricks", persist_result=False, flow_run_name=flow_run_namer("solve bricks of", "params.output_store"))
def volume_stage(params: ReconstructParams, run_id: str, artifact_id: str | None = None) -> dict:
    """Submit one task per pending batch of bricks on this flow's task runner (the tiled stage's
    contract: same parameters, same result dict; progress counts plane-tiles, the ledger's unit)."""
    p = params
    out = storage.open_output(p.output_store)
    config = out.manifest["config"]
    prior = T.load_prior_cached(config["prior_path"], p.execution.device, p.execution.dtype)
    descs = brick_descriptors(p, out, config, run_id, int(getattr(prior, "downsampling", 1) or 1))
    if p.fail_after_tiles is not None:  # testing hook: stop after the k-th new plane-tile
        descs = cut_for_testing(descs, p.fail_after_tiles, lambda d: len(d["items"]) - len(d["done"]))
    tally = Tally(out.ledger.count("solved"), out.n_frames * out.plan.n_tiles, "plane-tiles", artifact_id)
    return run_batches(solve_bricks.with_options(retries=p.execution.retries), descs, window=in_flight(p.execution),
                       tally=tally, logger=get_run_logger(),
                       task_tags=run_tags(operator=p.operator.name, solver=config["solver"], prior=p.prior))
