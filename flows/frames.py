"""Whole-frame reconstruction of measurement stores (CT sinograms, MRI k-space, Fourier magnitudes).

Room: ``flows`` — prefect, torch, ``storage``, ``ddiff``, ``operators``; the domain maths is in
:mod:`flows.measure`, the store layout in :mod:`storage.frames`.

Why whole frames: a global operator (``halo is None``: Radon, Fourier) mixes every image pixel into
every measurement, so no part of the measurement determines a part of the image — there is no tile
to cut. Each frame is one "tile" of the ledger; frames are solved in fixed batches of
``execution.batch_size`` (one network call per step for the batch), each frame with its own
generator seeded from ``(seed, frame, 0)``; a batch holding any pending frame is re-solved whole
and only its pending frames are written, so a resumed run writes the bytes an uninterrupted run
would. Same flow (``reconstruct_stack`` dispatches here), lock, ledger, progress, retries, task
runners (thread pool or Dask) and summary artifact as the tiled path.

**Stacks of slices** (``--solver volume_ddiff``: frames = consecutive z-slices, e.g. a CT volume
scanned slice by slice): frames are solved in z-bricks of ``brick_z`` core slices by the volume
solver with its through-plane coupling (``operators.SliceWise`` of the store's operator); each brick
also solves ``overlap_z`` slices of context on both sides (clipped at the stack's ends) and writes
its core slices only, so every slice has coupled neighbours on both sides except at the ends.

The prior's U-Net needs sides divisible by its downsampling factor ``d``: the image is solved on
the grid padded up to multiples of ``d`` at the bottom/right with ``A'(x') = A(x'[:N, :M])`` (the
padding is in ``A'``'s null space; the prior fills it) and cropped back.
"""
from __future__ import annotations

import inspect
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import operators
import storage
from ddiff.metrics import chi2_reduced

from . import tiles as T
from .measure import MeasurementMap, measurement_operator
from .noise import resolve_measurement_noise
from .params import ReconstructParams
from .calibration import attach_calibration
from .batches import Tally, batch_run_name, cut_for_testing, in_flight, retryable, run_batches, run_stage
from .reconstruct import solver_config
from .run_report import frame_table, summary_markdown
from .ui import abspath, artifact_key, batch_label, flow_run_namer

#: solvers that take the frames of a measurement store as the slices of one volume (coupled in z)
FRAME_VOLUME_SOLVERS = ("volume_ddiff", "volume_diffpnp_admm")

__all__ = ["FrameOperator", "frame_batches", "solve_frame_batch", "reconstruct_frames", "frame_chi2_flags",
           "audit_inputs"]


class FrameOperator(torch.nn.Module):
    """``A'(x') = A(x'[..., :N, :M])`` on a grid padded to ``(Np, Mp)``; ``adjoint`` pads ``Aᴴ`` with
    zeros (passing ``image_size`` to operators whose adjoint needs it, e.g. CT with a set detector count)."""

    halo = None

    def __init__(self, op, image_shape: tuple[int, int], padded: tuple[int, int]):
        super().__init__()
        self.op, (self.N, self.M), (self.Np, self.Mp) = op, image_shape, padded
        self.linear = bool(getattr(op, "linear", False))
        if self.linear:
            self._adj_kw = {"image_size": self.N} if "image_size" in inspect.signature(op.adjoint).parameters else {}

    def forward(self, x):
        return self.op(x[..., : self.N, : self.M])

    def adjoint(self, y):
        x = self.op.adjoint(y, **self._adj_kw)
        return F.pad(x, (0, self.Mp - self.M, 0, self.Np - self.N))


def frame_batches(n_frames: int, batch_size: int) -> list[list[int]]:
    """Frames in fixed batches (fixed by the frame count alone, so a resumed run forms the same ones)."""
    return [list(range(i, min(n_frames, i + batch_size))) for i in range(0, n_frames, batch_size)]


def _padded(n: int, d: int) -> int:
    return -(-n // d) * d


def solve_frame_batch(desc: dict) -> dict:
    """Solve one batch of frames and write the pending ones (descriptor in, small dict out)."""
    cfg = desc["config"]
    out = storage.open_output(desc["output"])
    stack = storage.open_stack(desc["input"])
    meas = out.manifest["measurement"]
    threads = cfg.get("torch_threads") or desc.get("torch_threads")  # recorded: the same bytes on any worker
    if threads:
        torch.set_num_threads(int(threads))
    device, dtype = desc.get("device", "cpu"), desc.get("dtype", "fp32")
    prior = T.load_prior_cached(cfg["prior_path"], device, dtype)
    d = int(getattr(prior, "downsampling", 1) or 1)
    N, M = (int(v) for v in meas["image_shape"])
    op = measurement_operator(meas)
    mm = MeasurementMap(meas, out.intensity, op)
    A = FrameOperator(op, (N, M), (_padded(N, d), _padded(M, d))).to(device)
    frames, zb = [int(f) for f in desc["frames"]], cfg.get("zbricks")
    read = frames if zb is None else list(range(max(0, frames[0] - zb["overlap_z"]),
                                                min(out.n_frames, frames[-1] + 1 + zb["overlap_z"])))
    y = torch.cat([mm.to_model(torch.from_numpy(np.asarray(stack.array[f]))[None]) for f in read]).to(device)
    noise = operators.GaussianNoise(mm.sigma_to_model(cfg["noise"]["sigma"]))
    gens = [torch.Generator(device=device if device != "mps" else "cpu").manual_seed(T.tile_seed(cfg["seed"], f, 0))
            for f in (frames if zb is None else frames[:1])]  # a brick: one generator, from its first core slice
    solver = T.make_solver(cfg, prior, keep_samples=True)
    with T._device_guard(device, desc.get("gpu_limit")):
        if zb is None:
            res = solver.solve(y, A, noise, generator=gens, x_shape=(len(frames), y.shape[1], A.Np, A.Mp))
            unc = T.seed_spread(res, A, noise, y, cfg.get("bounds"), cfg.get("features", False))  # (B, 7, Np, Mp) with seeds >= 2, else None
            x = res.x
        else:  # the brick as one volume (1, C, Z, ·, ·); its core slices are kept
            yv = y.movedim(0, 1)[None]
            res = solver.solve(yv, operators.SliceWise(A), noise, generator=gens,
                               x_shape=(1, y.shape[1], len(read), A.Np, A.Mp))
            core = [read.index(f) for f in frames]
            x, y, unc = res.x[0].movedim(1, 0)[core], y[core], None
    x = x.float()[..., :N, :M].cpu()
    op = op.cpu()
    with torch.no_grad():
        Ax = op(x)
    y = y.cpu()
    done = {int(f) for f in desc.get("done", [])}
    written, chis, fail_after = 0, [], desc.get("fail_after")
    for i, f in enumerate(frames):
        if f in done:  # written by an earlier (interrupted) run: identical batch, identical bytes
            continue
        yi, Axi = y[i:i + 1], Ax[i:i + 1]
        chi = float(chi2_reduced(yi, Axi, noise.sigma)[0])
        r = mm.residual_to_stored(yi - Axi, stack.frame_shape)[0]
        fin = r[np.isfinite(r)].astype(np.float64)
        diag = {"chi2_nu": chi, "nll": float(noise.nll(yi, Axi)[0]), "residual_norm": float(np.linalg.norm(fin)),
                "residual_rms": float(np.sqrt(np.mean(fin ** 2))), "nfe": int(res.nfe),
                "seconds": float(res.seconds) / len(frames)}
        storage.write_frame_result(out, f, x[i].numpy(), diag, r, run_id=desc["run_id"],
                                   uncertainty=None if unc is None else unc[i, :, :N, :M])
        written += 1
        chis.append(chi)
        if fail_after is not None and written >= int(fail_after):
            raise T.InjectedFailure(f"fail_after_tiles: interrupted deliberately after {written} frame(s) of {frames}")
    return {"tiles": len(frames), "written": written, "seconds": float(res.seconds), "nfe": int(res.nfe),
            "chi2_nu": chis, "pid": os.getpid()}


def frame_config(p: ReconstructParams, stack: storage.Stack, meas: dict) -> tuple[dict, str]:
    """``(config, prior_sha256)`` of a whole-frame run: the store's operator, σ in the measurement's units."""
    name = meas["operator"]["name"]
    default = ReconstructParams.model_fields["operator"].default_factory().name
    if p.operator.name not in (name, default) or p.operator.params:
        raise ValueError(f"{stack.path} holds {meas['domain']} measurements of `{name}` (geometry recorded at ingest); "
                         f"drop --operator {p.operator.name} / --op-param: the store's operator is used")
    noise, estimate = resolve_measurement_noise(p.noise, stack, meas)
    prior_path, prior_sha = T.prior_identity(p.prior)
    config = solver_config(p, name, meas["operator"]["params"], prior_path, {"kind": "gaussian", "sigma": float(noise.sigma)})
    config["noise_units"] = f"sigma in the units of the stored {meas['domain']} measurements"
    if p.solver.name in FRAME_VOLUME_SOLVERS:  # frames = consecutive slices of a volume: coupled z-bricks
        if p.solver.seeds > 1:
            raise ValueError(f"--seeds {p.solver.seeds} with solver {p.solver.name}: seed spread maps of volumes are not "
                             "built yet; drop --seeds, or use --solver ddiff (slice by slice) for them")
        config["zbricks"] = {"brick_z": int(p.brick_z), "overlap_z": int(p.overlap_z if p.overlap_z is not None else 2)}
    if estimate is not None:
        config["noise_estimate"] = estimate
    if p.calibration and p.solver.name in FRAME_VOLUME_SOLVERS:
        raise ValueError(f"--calibration with solver {p.solver.name}: bounds of volumes are not built yet; use --solver ddiff")
    attach_calibration(p.calibration, p.solver.seeds, config, prior_sha, float(noise.sigma))  # measurement units
    return config, prior_sha


@task(name="solve-frame-batch", persist_result=False, cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1,
      retry_condition_fn=retryable, task_run_name=batch_run_name)
def solve_frames_task(desc: dict) -> dict:
    """One batch of whole frames; see :func:`solve_frame_batch`."""
    return solve_frame_batch(desc)


@flow(name="solve-frames", persist_result=False, flow_run_name=flow_run_namer("solve frames of", "params.output_store"))
def solve_frames_stage(params: ReconstructParams, run_id: str, artifact_id: str | None = None) -> dict:
    """One task per pending batch of frames; the descriptors are rebuilt from manifest and ledger."""
    p, logger = params, get_run_logger()
    out = storage.open_output(p.output_store)
    led, total = out.ledger, out.n_frames
    already = led.count("solved")
    descs = []
    zb = out.manifest["config"].get("zbricks")
    batches = frame_batches(out.n_frames, p.execution.batch_size if zb is None else zb["brick_z"])
    for i, frames in enumerate(batches):
        done = [f for f in frames if led.is_done(f, 0, "solved")]
        if len(done) < len(frames):
            descs.append({"input": out.manifest["input"]["path"], "output": str(out.path.resolve()), "run_id": run_id,
                          "frames": frames, "done": done, "config": out.manifest["config"],
                          "label": batch_label([[f, 0] for f in frames], i, len(batches)),
                          "device": p.execution.device, "dtype": p.execution.dtype,
                          "torch_threads": p.execution.torch_threads, "gpu_limit": p.execution.gpu_limit})
    if p.fail_after_tiles is not None:  # testing hook: stop after the k-th new frame
        descs = cut_for_testing(descs, p.fail_after_tiles, lambda d: len(d["frames"]) - len(d["done"]))
    return run_batches(solve_frames_task.with_options(retries=p.execution.retries), descs,
                       window=in_flight(p.execution), tally=Tally(already, total, "frames", artifact_id), logger=logger)


def frame_dof(out: storage.OutputStore) -> int:
    """Real measured values per frame (complex entries count twice)."""
    meas = out.manifest["measurement"]
    h, w = out.plan.frame_shape
    if meas["domain"] == "kspace":
        return 2 * out.channels * len(meas["operator"]["params"]["lines"]) * w
    return out.channels * h * w


def frame_chi2_flags(out: storage.OutputStore, alpha: float = 0.01) -> list[tuple[int, int, float, float]]:
    """Frames whose χ²_ν is implausible under the Gaussian model: exact χ²_m upper tail ``p < alpha``."""
    from ddiff.audit import scaled_chi2_sf

    chi = np.asarray(out.open_diagnostics()["chi2_nu"].values, dtype=np.float64)
    m = torch.full(chi.shape, float(frame_dof(out)), dtype=torch.float64)
    p = scaled_chi2_sf(torch.from_numpy(chi) * m, m, 2 * m, 8 * m).numpy()
    return [(int(t), int(k), float(chi[t, k]), float(p[t, k])) for t, k in zip(*np.nonzero(p < alpha))]


def check_frames(p: ReconstructParams):
    """:func:`flows.checks.check_reconstruct` for a measurement store: everything that can fail before
    the first frame, checked without writing; returns :class:`flows.checks.Prepared` (``geo`` None)."""
    from .checks import Prepared, checked_prior

    stack = storage.open_stack(p.input_store)
    meas = storage.measurement_of(stack)
    bad = int((stack.meta.get("validity") or {}).get("invalid", 0))
    if bad:  # the whole-frame solvers take every measured entry: refused here, not by the solver mid-run
        raise ValueError(f"{p.input_store}: {bad} of its {meas['domain']} measurements are masked (NaN/Inf ingested "
                         "with nonfinite='mask'); whole-frame reconstruction cannot leave measurements out yet — "
                         "repair or drop those frames and ingest again")
    config, prior_sha = frame_config(p, stack, meas)
    prior = checked_prior(p, config, stack.shape[1], f"the measurements in {p.input_store} have")
    action, _ = storage.output_action(p.output_store, stack, storage.TilePlan(stack.frame_shape, halo=None), config,
                                      prior_sha256=prior_sha, overwrite=p.overwrite, replace_unused=True,
                                      frames=storage.frame_spec(meas))
    return Prepared(config, None, prior_sha, prior, action)


def reconstruct_frames(p: ReconstructParams, state: dict) -> dict:
    """The whole-frame path of ``reconstruct_stack`` (called inside that flow); same result dict.
    ``state["progress"]``: the progress artifact's id (for the failure summary)."""
    from prefect.runtime import flow_run

    from .run_report import frame_fit_rows, prior_only_result, publish_fit_table

    logger = get_run_logger()
    t0 = time.perf_counter()
    stack = storage.open_stack(p.input_store)
    meas = storage.measurement_of(stack)
    prep = check_frames(p)  # before a byte is written (a start that fails here leaves nothing)
    config, prior_sha = prep.config, prep.prior_sha256
    out = storage.create_frame_output(p.output_store, stack, config, prior_sha256=prior_sha, overwrite=p.overwrite,
                                      replace_unused=True)
    lock = storage.RunLock(out.path, run_id=str(flow_run.id or "") or None).acquire()
    try:
        total, already = out.n_frames, out.ledger.count("solved")
        logger.info("%s: %d frames of %s measurements (image %s), %d already solved", out.path, total,
                    meas["domain"], meas["image_shape"], already)
        stage = run_stage(solve_frames_stage, p, out, lock.run_id, already, total, "frames", state)
        storage.finalize(out, run_id=lock.run_id)
    finally:
        lock.release()
    result = {"output": abspath(out.path), "n_frames": out.n_frames, "n_tiles": total, "unit": "frames",
              "solved": stage["solved"],
              "skipped": already, "wall_seconds": time.perf_counter() - t0, "solver_seconds": stage["solver_seconds"],
              "nfe": stage["nfe"], "complete": True, "worker_pids": stage["pids"],
              "worker_threads": [out.manifest["config"].get("torch_threads")], "noise": out.manifest["config"]["noise"],
              "noise_estimate": out.manifest["config"].get("noise_estimate"),
              "noise_units": out.manifest["config"]["noise_units"], **prior_only_result(out, logger)}
    if p.artifacts:
        fit = frame_fit_rows(out.path)
        publish_fit_table(out.path, fit)
        md = summary_markdown(p, out, result, frame_table(out), frame_chi2_flags(out), fit)
        md += (f"\n\nWhole frames: {meas['domain']} measurements of `{meas['operator']['name']}` reconstructed on the "
               f"{meas['image_shape']} image grid; σ is in the measurement's units; residuals in `diagnostics/residual` "
               "are on the measurement grid.")
        create_markdown_artifact(md, key=artifact_key("reconstruct-summary", p.output_store),
                                 description=f"reconstruction summary: {abspath(out.path)}")
    logger.info("done: %s", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()})
    return result


def audit_inputs(out: storage.OutputStore, stack: storage.Stack, t0: int, t1: int):
    """``(x̂, y, A, noise)`` in model space for frames ``[t0, t1)`` of a whole-frame output."""
    meas = out.manifest["measurement"]
    op = measurement_operator(meas)
    mm = MeasurementMap(meas, out.intensity, op)
    x = torch.from_numpy(out.intensity.to_model(out.recon()[t0:t1]))
    y = mm.to_model(torch.from_numpy(np.asarray(stack.array[t0:t1])))
    return x, y, op, operators.GaussianNoise(mm.sigma_to_model(out.manifest["config"]["noise"]["sigma"]))
