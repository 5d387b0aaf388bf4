"""``ddiff calibrate``: calibrate the per-pixel bounds of a run's settings on references with ground truth.

Room: ``flows`` — prefect, numpy, torch, ``storage``, ``ddiff.audit`` (the math: features, scale rule,
RCPS), the reconstruct flow (the very pipeline a run uses).

What happens (one flow run; every step resumes):

1. checks, before anything is written: the references store (clean frames, finite), its frame count
   against the smallest set that can certify α at δ (:func:`ddiff.audit.min_calibration_frames`,
   after the part that fits the scale rule), channels against the prior, a paired measurement store's
   frame count and grid, the record path;
2. measurements — simulated (``A(x) + σ n`` in the references' units, seeded) and ingested with the
   references' intensity map, or the paired store of real measurements of the same frames;
3. the reconstruction with the run's settings and K ≥ 2 seeds (:func:`flows.reconstruct_stack`, in
   ``<record>.work/``: an interrupted calibration resumes);
4. per pixel: the seed mean, the bound features from ``uncertainty/``, the truth; frames shuffled
   (seeded); the scale rule fitted on the first ``fit_fraction`` of them, λ chosen by RCPS on the
   rest (:func:`ddiff.audit.calibrate_bounds`); the record (JSON, :mod:`flows.calibration`) written
   atomically.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from prefect import flow, get_run_logger
from pydantic import Field

import storage
from storage.safety import atomic_write_json, creatable

from .calibration import FORMAT, guarantee_sentence, record_settings
from .params import ExecutionSpec, NoiseSpec, OperatorSpec, ReconstructParams, SolverSpec, _Model
from .ui import flow_run_namer

__all__ = ["CalibrateParams", "calibrate_bounds_flow", "check_calibrate", "run_calibrate", "add_arguments"]


class CalibrateParams(_Model):
    references: str = Field(..., description="ingested store of reference (ground-truth) frames")
    record: str = Field(..., description="the calibration record to write (JSON)")
    measurements: Optional[str] = Field(None, description="ingested store of real measurements of the same frames "
                                                          "(else they are simulated with the operator and --sigma)")
    work_dir: Optional[str] = Field(None, description="where the simulated store and the reconstruction go "
                                                      "(default: <record>.work)")
    alpha: float = Field(0.1, gt=0, lt=1, description="target expected fraction of pixels outside their bounds")
    delta: float = Field(0.1, gt=0, lt=1, description="allowed probability that the calibration set misleads")
    bound: Literal["wsr", "hb"] = Field("wsr", description="upper confidence bound: Waudby-Smith–Ramdas or "
                                                           "Hoeffding–Bentkus")
    fit_fraction: float = Field(0.5, gt=0, lt=1, description="frames that fit the scale rule (the rest choose λ)")
    objective: Literal["balanced", "narrow"] = Field("balanced", description="the scale rule models the error's sd "
                                                     "(balanced) or minimises the mean width (narrow); docs/audit.md §6")
    shuffle_seed: int = Field(0, ge=0)
    operator: OperatorSpec = Field(default_factory=OperatorSpec)
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    prior: str = "default"
    solver: SolverSpec = Field(default_factory=lambda: SolverSpec(seeds=4))
    tile: int = Field(256, ge=8)
    overlap: int = Field(16, ge=0)
    seed: int = Field(0, ge=0)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    overwrite: bool = Field(False, description="replace an existing record")


def _work(p: CalibrateParams) -> Path:
    return Path(p.work_dir) if p.work_dir else Path(str(p.record) + ".work")


def check_calibrate(p: CalibrateParams) -> tuple[storage.Stack, np.ndarray]:
    """Everything that can fail before a byte is written; returns ``(references, truth frames)``
    (physical units, ``(n, C, H, W)`` float32). One-line ``ValueError`` naming the problem and the fix."""
    from ddiff.audit import min_calibration_frames

    from . import tiles as T
    from .checks import check_operator

    rec = Path(p.record)
    if rec.exists() and not p.overwrite:
        raise ValueError(f"{rec} exists; pass --overwrite to replace the record")
    if not creatable(rec.parent if str(rec.parent) else Path(".")):
        raise ValueError(f"cannot write {rec}: its folder is not writable")
    refs = storage.open_stack(p.references)
    if storage.measurement_of(refs) is not None:
        raise ValueError(f"{p.references} holds measurements, not reference images; ingest the ground-truth frames "
                         "(ddiff ingest) and pass the measurements with --measurements")
    n, C, H, W = refs.shape
    need = int(np.ceil(min_calibration_frames(p.alpha, p.delta, p.bound) / (1 - p.fit_fraction)))
    if n < need:
        raise ValueError(f"{p.references} has {n} reference frames; alpha {p.alpha:g} at delta {p.delta:g} "
                         f"({p.bound.upper()}, {p.fit_fraction:.0%} of them fitting the scale rule) needs at least "
                         f"{need} — add frames (crops of more images) or raise --alpha/--delta")
    truth = np.asarray(refs.array[:], dtype=np.float32)
    bad = ~np.isfinite(truth)
    if refs.valid is not None:
        bad |= ~np.asarray(refs.valid[:], bool)
    if bad.any():
        f = int(np.nonzero(bad.reshape(n, -1).any(1))[0][0])
        raise ValueError(f"{p.references}: reference frame {f} has {int(bad[f].sum())} NaN/Inf or invalid pixels; "
                         "references must be complete ground truth — drop or repair those frames")
    _, prior_sha = T.prior_identity(p.prior)
    prior = T.load_prior_cached(p.prior, p.execution.device, p.execution.dtype)
    if int(prior.channels) != C:
        raise ValueError(f"prior={p.prior!r} models {prior.channels}-channel images but the references have {C} "
                         "channel(s); calibrate with references of the run's channels")
    if p.measurements is None:
        check_operator(p.operator.name, p.operator.params)
        if p.noise.kind not in ("gaussian", "auto") or p.noise.sigma is None:
            raise ValueError("simulated calibration needs Gaussian noise with its level: pass --sigma (the "
                             "references' units), or pair the references with --measurements (real data)")
    else:
        meas = storage.open_stack(p.measurements)
        if meas.shape[0] != n:
            raise ValueError(f"{p.measurements} has {meas.shape[0]} frames but {p.references} has {n}; the stores "
                             "must hold the same frames in the same order")
        record = storage.measurement_of(meas)
        grid = tuple(record["image_shape"]) if record is not None else None
        if grid is not None and grid != (H, W):
            raise ValueError(f"the measurements in {p.measurements} reconstruct {grid} images but the references are "
                             f"{(H, W)}; pair each measurement with its own reference frame")
    return refs, truth


def _simulate(p: CalibrateParams, refs: storage.Stack, truth: np.ndarray, work: Path) -> str:
    """Measurements ``A(x) + σ n`` of the references (their units, seeded), ingested with their intensity map."""
    import torch

    import operators

    from . import ingest_stack, tiles as T
    from .params import IngestParams

    store = work / "measured.zarr"
    x = torch.from_numpy(refs.to_model(truth))
    op = T.build_operator(p.operator.name, p.operator.params, tuple(x.shape[-2:]))
    sigma_model = float(p.noise.sigma) * abs(refs.intensity.scale)
    with torch.no_grad():
        y = operators.GaussianNoise(sigma_model).sample(op(x), torch.Generator().manual_seed(p.seed + 7919))
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "measured.npy", refs.intensity.from_model(y.numpy()))
    ingest_stack(IngestParams(source=str(work / "measured.npy"), store=str(store), axes="tcyx", overwrite=True,
                              intensity=[refs.intensity.low, refs.intensity.high], chunk=max(64, p.tile)),
                 artifacts=False)
    return str(store)


@flow(name="calibrate-bounds", persist_result=False, flow_run_name=flow_run_namer("calibrate bounds for", "params.record"))
def calibrate_bounds_flow(params: CalibrateParams) -> dict:
    """Calibrate and write the record; returns ``{"record", "lambda", "ucb", "frames", "seconds", ...}``."""
    from ddiff.audit import FEATURES, calibrate_bounds

    from . import reconstruct_stack

    p = params if isinstance(params, CalibrateParams) else CalibrateParams.model_validate(params)
    logger = get_run_logger()
    t0 = time.perf_counter()
    refs, truth = check_calibrate(p)
    work = _work(p)
    source = p.measurements or _simulate(p, refs, truth, work)
    rp = ReconstructParams(input_store=source, output_store=str(work / "recon.zarr"), operator=p.operator,
                           noise=p.noise, prior=p.prior, solver=p.solver, tile=p.tile, overlap=p.overlap, seed=p.seed,
                           execution=p.execution, overwrite=True, artifacts=False, keep_features=True)
    rec = reconstruct_stack(rp)
    out = storage.open_output(rec["output"])
    imap = out.intensity
    mean = imap.to_model(out.recon()[:]).astype(np.float64)
    err = np.abs(imap.to_model(truth).astype(np.float64) - mean)
    if err.shape != mean.shape:
        raise ValueError(f"the reconstructions are {mean.shape[1:]} but the references {truth.shape[1:]}")
    k = abs(float(imap.scale))
    feats = np.stack([np.stack([storage.read_uncertainty(out, t)[m] for m in FEATURES])
                      for t in range(out.n_frames)]).astype(np.float64) * k  # back to model units
    perm = np.random.default_rng(p.shuffle_seed).permutation(out.n_frames)
    cal = calibrate_bounds(feats[perm], err[perm], p.alpha, p.delta, p.bound, p.fit_fraction, seed=p.shuffle_seed,
                           objective=p.objective)
    cfg = out.manifest["config"]
    stack = storage.open_stack(source)
    sigma = cfg["noise"].get("sigma") if cfg["noise"].get("kind") == "gaussian" else None
    sigma_model = None if sigma is None else (float(sigma) if storage.is_frame_output(out)
                                               else float(sigma) * abs(stack.intensity.scale))
    n, C, H, W = truth.shape
    record = {
        "format": FORMAT, "alpha": p.alpha, "delta": p.delta, "bound": p.bound,
        "procedure": (f"RCPS (Angelopoulos et al. 2021): scale rule s fitted on {cal['n_fit']} frames ("
                      + ("a model of the error's sd" if p.objective == "balanced" else "the smallest mean width")
                      + f"), factor lambda chosen on the other {cal['n_lambda']} frames with the "
                      f"{'Waudby-Smith-Ramdas' if p.bound == 'wsr' else 'Hoeffding-Bentkus'} upper confidence bound "
                      "on the mean per-frame pixel miscoverage"),
        "lambda": cal["lambda"], "rule": cal["rule"], "objective": p.objective, "ucb": cal["ucb"], "risk_calibration": cal["risk"],
        "seeds": int(cfg.get("seeds", 1)), "steps": cfg["hyperparameters"].get("steps"), "solver": cfg["solver"],
        "operator": cfg["operator"], "noise": {**cfg["noise"], "sigma_model": sigma_model},
        "prior": cfg["prior"], "prior_sha256": out.manifest["prior_sha256"], "settings": record_settings(cfg, sigma_model),
        "tile": p.tile, "overlap": p.overlap, "frames": int(n), "pixels": int(n * C * H * W), "frame_shape": [H, W],
        "channels": int(C), "n_fit": cal["n_fit"], "n_lambda": cal["n_lambda"],
        "references": {"path": str(Path(p.references).resolve()), "data_sha256": refs.meta.get("data_sha256")},
        "measurements": "simulated" if p.measurements is None else str(Path(p.measurements).resolve()),
        "guarantee": guarantee_sentence({"alpha": p.alpha, "delta": p.delta}, n),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(p.record, record)
    logger.info("calibrated %s: lambda %.4g on %d frames (UCB %.4f <= alpha %g)", p.record, cal["lambda"],
                cal["n_lambda"], cal["ucb"], p.alpha)
    return {"record": str(Path(p.record).resolve()), "lambda": cal["lambda"], "ucb": cal["ucb"],
            "risk": cal["risk"], "frames": int(n), "rule": cal["rule"], "seconds": time.perf_counter() - t0,
            "solver_seconds": rec["solver_seconds"]}


def run_calibrate(a, command_server) -> int:
    """``ddiff calibrate`` (arguments from :func:`flows.cli.build_parser`): check, calibrate, print the record."""
    from .cli_options import _reconstruct_params
    from .console import _console, _LedgerProgress

    a.input, a.output = a.references, str(Path(a.record + ".work") / "recon.zarr")  # the shared option parser
    r = _reconstruct_params(a) if (Path(a.references) / "zarr.json").is_file() else None
    if r is None:
        raise ValueError(f"references {a.references!r} is not an ingested store; run `ddiff ingest REFS {a.references}` first")
    p = CalibrateParams(references=a.references, record=a.record, measurements=a.measurements, work_dir=a.work_dir,
                        alpha=a.alpha, delta=a.delta, bound=a.bound, fit_fraction=a.fit_fraction, objective=a.rule, operator=r.operator, noise=r.noise, prior=r.prior,
                        solver=r.solver, tile=r.tile, overlap=r.overlap, seed=r.seed, execution=r.execution,
                        overwrite=a.overwrite)
    check_calibrate(p)  # before Prefect starts: bad input is one line, nothing written
    with command_server(), _LedgerProgress(str(_work(p) / "recon.zarr"), "tiles solved", not a.no_progress):
        res = calibrate_bounds_flow(p)
    _console().print(f"[green]calibrated[/green] {res['record']}: λ {res['lambda']:.4g} on {res['frames']} frames, "
                     f"UCB {res['ucb']:.4f} ≤ α {p.alpha:g} at δ {p.delta:g}; {res['seconds']:.0f} s "
                     f"(solver {res['solver_seconds']:.0f} s). Use: ddiff reconstruct IN OUT --calibration {a.record}")
    return 0


def add_arguments(sp) -> None:
    """The options of ``ddiff calibrate`` beyond the ones it shares with ``ddiff reconstruct``."""
    sp.add_argument("references", help="an ingested store of ground-truth frames")
    sp.add_argument("record", help="the calibration record (JSON) to write")
    sp.add_argument("--measurements", default=None, help="ingested store of real measurements of the same frames "
                    "(default: simulated with the operator and --sigma)")
    sp.add_argument("--work-dir", default=None, help="simulated store and reconstruction (default: RECORD.work)")
    sp.add_argument("--alpha", type=float, default=0.1, help="expected fraction of pixels outside their bounds (0.1)")
    sp.add_argument("--delta", type=float, default=0.1, help="probability that the calibration set misleads (0.1)")
    sp.add_argument("--bound", default="wsr", choices=["wsr", "hb"], help="Waudby-Smith–Ramdas (default) or "
                    "Hoeffding–Bentkus upper confidence bound")
    sp.add_argument("--fit-fraction", type=float, default=0.5, help="share of the frames that fit the scale rule; "
                    "the rest choose the factor (0.5)")
    sp.add_argument("--rule", default="balanced", choices=["balanced", "narrow"], help="balanced (default): the "
                    "width follows the expected error, misses spread over all pixels; narrow: the smallest mean "
                    "width, misses gather where errors are largest (docs/audit.md §6)")
