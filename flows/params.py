"""Parameter models of the flows (pydantic v2): validated on entry, rendered as forms in the UI.

Room: ``flows`` — pydantic only here (no torch import at module level, so the CLI's ``--help``
stays fast).

Units: noise parameters are in the **data's units** (the input store's pixel values, e.g. ADU;
camera gain in e⁻/ADU, read noise in e⁻); the store's intensity map to model space is composed into
the likelihood (``operators.noise_units``). The benchmark's ``sigma_y`` stays in model space (the
paper's protocol).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

__all__ = ["OperatorSpec", "NoiseSpec", "SolverSpec", "ExecutionSpec", "IngestParams", "ReconstructParams",
           "AuditParams", "TrainParams", "BenchmarkParams", "BENCH_PRESETS", "SOLVER_NAMES", "PAPER_TASKS"]

#: solver name -> class name in ``ddiff``
SOLVER_NAMES = {"ddiff": "DDiff", "ddiff_hqs": "DDiffHQS", "diffpnp_admm": "DiffPnPADMM",
                "diffpnp_hqs": "DiffPnPHQS", "dps": "DPS", "diffpir": "DiffPIR", "daps": "DAPS",
                # volumes (z-stacks solved as bricks, flows.volumes): DDiff with a through-plane coupling block
                "volume_ddiff": "VolumeDDiff", "volume_diffpnp_admm": "VolumeDiffPnPADMM"}
#: the paper's eight tasks (operator names) with DDiff.paper(...) hyperparameters
PAPER_TASKS = ("super_resolution", "inpainting_box", "inpainting_random", "gaussian_blur", "motion_blur",
               "phase_retrieval", "nonlinear_blur", "hdr")


def _check_device(v: str) -> str:
    if not (v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit()) or v == "mps"):
        raise ValueError(f"device={v!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return v


#: a torch device name, checked on entry
Device = Annotated[str, AfterValidator(_check_device)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OperatorSpec(_Model):
    """Forward model ``A``: a registered name (``operators.available()``) and its keywords."""

    name: str = Field("gaussian_blur", description="registered operator name, e.g. gaussian_blur, or a volume "
                                                   "operator (widefield3d: z-stacks solved as bricks)")
    params: dict[str, Any] = Field(default_factory=dict, description="operator keywords, e.g. {'std': 3.0}")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        import operators

        if v not in operators.available() and v not in operators.volume_operators():
            raise ValueError(f"unknown operator {v!r}; available: {', '.join(operators.available())}; "
                             f"volumes: {', '.join(operators.volume_operators())}")
        return v


class NoiseSpec(_Model):
    """Measurement noise model, parameters in the DATA's units (the input store's pixel values: ADU).

    ``kind``: ``gaussian`` (σ in ADU), ``poisson`` (photon counting: gain, offset),
    ``poisson_gaussian`` (a camera: gain e⁻/ADU, offset ADU, read noise e⁻), or ``auto`` (default:
    the model and its parameters are estimated from the stack — a camera when its variance grows
    with the signal, else Gaussian). A parameter left out (None) is estimated from the data; a
    parameter given is used as is (and held fixed while the others are estimated). The estimate
    and its standard errors are recorded in the output manifest (``noise_estimate``) and the run
    summary. See ``docs/modalities.md`` (noise and masks)."""

    kind: Literal["auto", "gaussian", "poisson", "poisson_gaussian"] = Field(
        "auto", description="auto (estimate from the data), gaussian, poisson or poisson_gaussian (camera)")
    sigma: Optional[float] = Field(None, ge=0, description="Gaussian σ in ADU (data units, > 0); None: estimated")
    gain: Optional[float] = Field(None, gt=0, description="camera conversion gain, e⁻ per ADU; None: estimated")
    offset: Optional[float] = Field(None, description="camera black level (bias), ADU; None: estimated")
    read_noise: Optional[float] = Field(None, ge=0, description="camera read noise, e⁻ RMS; None: estimated")

    @model_validator(mode="after")
    def _fits_kind(self):
        camera = [n for n in ("gain", "offset", "read_noise") if getattr(self, n) is not None]
        if self.kind == "gaussian" and camera:
            raise ValueError(f"noise kind 'gaussian' takes sigma only, not {camera}; use kind 'poisson_gaussian' for a camera")
        if self.kind in ("poisson", "poisson_gaussian") and self.sigma is not None:
            raise ValueError("a camera's Gaussian part is its read noise (e⁻): give read_noise, not sigma")
        if self.kind == "poisson" and self.read_noise not in (None, 0):
            raise ValueError("noise kind 'poisson' has no read noise; use kind 'poisson_gaussian'")
        if self.kind == "auto" and self.sigma is not None and camera:
            raise ValueError("give either sigma (Gaussian) or camera parameters (gain/offset/read_noise), not both")
        return self

    def complete(self) -> bool:
        """True when every parameter of ``kind`` is given (nothing to estimate)."""
        if self.kind == "gaussian":
            return self.sigma is not None
        if self.kind == "poisson":
            return self.gain is not None and self.offset is not None
        if self.kind == "poisson_gaussian":
            return None not in (self.gain, self.offset, self.read_noise)
        return False

    def build(self, intensity: dict | None, integer: bool = False):
        """The noise model in model space for a store whose intensity map is ``intensity``
        (``{"scale": a, "offset": b}``: model = a·ADU + b; None = the identity, for data already in
        model units — stores pass theirs, see ``flows.noise.noise_model``); ``integer``: the data
        are whole ADU (a camera's ADC rounding joins its read noise). Needs a complete spec
        (see :meth:`complete`; ``flows.noise.resolve_noise`` estimates the missing parameters)."""
        import operators

        if not self.complete():
            raise ValueError(f"noise spec {self.model_dump(exclude_none=True)} has parameters to estimate; "
                             "resolve it against the input stack first (flows.noise.resolve_noise)")
        a, b = (1.0, 0.0) if intensity is None else (float(intensity["scale"]), float(intensity["offset"]))
        if self.kind == "gaussian":
            if self.sigma <= 0:
                raise ValueError("noise.sigma must be > 0 for Gaussian noise")
            return operators.gaussian_in_data_units(self.sigma, a, b)
        return operators.CameraNoise(self.gain, self.offset, self.read_noise or 0.0, a, b, adc_step=1.0 if integer else 0.0)


class SolverSpec(_Model):
    """Solver and hyperparameters.

    ``settings="auto"`` (default): DDiff-family solvers run self-calibrated (``DDiff.auto()``: the
    discrepancy x-update, no step size to tune, 100 steps); the other solvers run with their class
    defaults. ``settings="paper"``: ``DDiff.paper(task)``, the appendix-A.5 values tuned at 1000
    steps and σ_y = 0.05 (``task`` defaults to the operator name when it is one of the paper's
    eight). ``steps`` and ``hyperparameters`` override either."""

    name: Literal["ddiff", "ddiff_hqs", "diffpnp_admm", "diffpnp_hqs", "dps", "diffpir", "daps", "volume_ddiff",
                  "volume_diffpnp_admm"] = Field(
        "ddiff", description="ddiff; ablations ddiff_hqs (no dual variable), diffpnp_admm / diffpnp_hqs (no noising "
                             "step), each with `settings`; baselines dps, diffpir, daps (reference settings); "
                             "volume_ddiff / volume_diffpnp_admm: z-stacks solved as bricks with a through-plane "
                             "coupling (chosen for ddiff / diffpnp_admm when the operator is a volume operator)")
    settings: Literal["auto", "paper"] = Field(
        "auto", description="auto: step sizes chosen from the measurements (discrepancy principle); "
                            "paper: the paper's per-task values")
    steps: Optional[int] = Field(None, ge=1, le=1000, description="diffusion steps (None: 100 auto, 1000 paper)")
    task: Optional[str] = Field(None, description="paper task whose hyperparameters to start from (settings=paper)")
    dataset: Literal["ffhq", "imagenet"] = "ffhq"
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="constructor keywords overriding the defaults")
    seeds: int = Field(1, ge=1, le=64, description="estimate = mean of this many seeded runs per tile "
                                                   "(ddiff.SeedMean: a posterior-mean estimate at seeds × the NFE)")

    def resolve(self, operator_name: str) -> dict:
        """Constructor keywords: the settings' values + ``hyperparameters`` + ``steps``."""
        import ddiff

        cls = getattr(ddiff, SOLVER_NAMES[self.name])
        kw: dict = {}
        if self.settings == "paper" and hasattr(cls, "paper"):
            task = self.task or (operator_name if operator_name in PAPER_TASKS else None)
            if task is None:
                raise ValueError(f"settings 'paper' needs one of the paper's tasks; {operator_name!r} is not one — "
                                 f"name the task whose values to use ({', '.join(PAPER_TASKS)}) or use settings 'auto'")
            kw.update(cls.paper(task, self.dataset))
        elif self.settings == "auto" and hasattr(cls, "auto"):
            kw.update(cls.auto())
        kw.update(self.hyperparameters)
        if self.steps is not None:
            kw["steps"] = int(self.steps)
        return kw


class ExecutionSpec(_Model):
    """Where and how tasks run (none of this changes the result, except ``batch_size``/``dtype``,
    which are part of the output's configuration hash)."""

    device: Device = Field("cpu", description="'cpu', 'cuda' or 'cuda:N'")
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    batch_size: int = Field(4, ge=1, le=1024, description="tiles per network call")
    max_workers: int = Field(1, ge=1, le=64, description="concurrent batch tasks (bounded thread pool)")
    torch_threads: Optional[int] = Field(None, ge=1, le=256, description="torch intra-op threads per task")
    dask_address: Optional[str] = Field(None, description="tcp://host:port of a Dask scheduler")
    dask_workers: int = Field(0, ge=0, le=256, description="start a LocalCluster with this many workers (0: no Dask)")
    gpu_limit: Optional[str] = Field("gpu", description="Prefect global concurrency limit guarding the device (cuda only)")
    retries: int = Field(1, ge=0, le=10)


    @model_validator(mode="after")
    def _one_cluster(self):
        if self.dask_address and self.dask_workers:
            raise ValueError("give either dask_address (an existing cluster) or dask_workers (a local one), not both")
        return self


class IngestParams(_Model):
    source: str = Field(..., description="TIFF/OME-TIFF, .npy, folder of frames, or file.h5:/dataset")
    store: str = Field(..., description="OME-Zarr input store to create")
    axes: Optional[str] = Field(None, description="the source's axes in its own order, letters of 'tczyx' "
                                                  "(e.g. 'zyx', 'TZCYX'); default: from the file's metadata")
    pixel_size: Optional[list[float]] = Field(None, description="[y, x] (or [s]) physical pixel size; default: the file's")
    z_step: Optional[float] = Field(None, gt=0, description="physical z spacing; default: the file's")
    time_step: Optional[float] = Field(None, gt=0, description="time between frames; default: the file's")
    space_unit: Optional[str] = Field(None, description="OME-NGFF space unit, e.g. micrometer")
    time_unit: Optional[str] = Field(None, description="OME-NGFF time unit, e.g. second")
    chunk: int = Field(256, ge=8)
    intensity: Any = Field("percentile", description="'percentile', 'minmax', 'dtype' or [low, high]")
    nonfinite: Literal["refuse", "mask"] = "refuse"
    max_size: Optional[Any] = Field(None, description="largest declared (uncompressed) source size accepted, e.g. "
                                                      "'500G'; default: the free space of the store's disk")
    saturation: Optional[Any] = Field("dtype", description="values >= this level are saturated (invalid): 'dtype' "
                                      "(the integer maximum; default), a level in data units, or None")
    mask: Optional[str] = Field(None, description="validity mask file (.npy/.tif, non-zero = valid): (H,W), (T,H,W) or (T,C,H,W)")
    bad_pixels: Optional[str] = Field(None, description="detector bad-pixel map (.npy/.tif, non-zero = bad): (H,W) or (C,H,W)")
    overwrite: bool = False
    domain: Literal["image", "sinogram", "kspace", "fourier_magnitude"] = Field(
        "image", description="what the frames are: images (tiled), or measurements solved per frame "
                             "(sinogram: angle × detector; kspace: complex, DC centred; fourier_magnitude)")
    angles: Any = Field(None, description="sinogram: projection angles in degrees (list, count, 'start:stop:step', "
                                          "comma list or a .npy/.txt file)")
    sampling_mask: Optional[str] = Field(None, description="kspace: sampling mask .npy, (H,) rows or (H, W) "
                                                           "(default: rows that are not all zero)")
    image_size: Optional[int] = Field(None, ge=8, description="sinogram/fourier_magnitude: side N of the N×N image "
                                                              "(default: detector count / from the padding)")
    oversample: float = Field(2.0, ge=0, description="fourier_magnitude: the padding rule of phase_retrieval")

    @model_validator(mode="after")
    def _domain_options(self):
        if self.domain != "sinogram" and self.angles is not None:
            raise ValueError(f"angles apply to --domain sinogram, not {self.domain}")
        if self.domain != "kspace" and self.sampling_mask is not None:
            raise ValueError(f"sampling_mask applies to --domain kspace, not {self.domain}")
        if self.domain != "image" and (self.mask or self.bad_pixels):
            raise ValueError(f"validity masks (mask, bad_pixels) apply to images; {self.domain} measurements "
                             "take nonfinite='mask' only")
        return self

    @field_validator("mask", "bad_pixels")
    @classmethod
    def _file_exists(cls, v):
        if v is not None and not Path(v).is_file():
            raise ValueError(f"{v!r} does not exist (a .npy or .tif image)")
        return v

    @field_validator("source")
    @classmethod
    def _source_exists(cls, v: str) -> str:
        path = v
        for ext in (".h5:", ".hdf5:", ".hdf:"):  # file.h5:/dataset
            if ext in v:
                path = v[: v.index(ext) + len(ext) - 1]
        if not Path(path).exists():
            raise ValueError(f"source {path!r} does not exist")
        return v


class ReconstructParams(_Model):
    input_store: str = Field(..., description="ingested OME-Zarr input store (storage.ingest)")
    output_store: str = Field(..., description="output store to create or resume")
    operator: OperatorSpec = Field(default_factory=OperatorSpec)
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    prior: str = Field("default", description="'default' or a .safetensors/.pt checkpoint path")
    solver: SolverSpec = Field(default_factory=SolverSpec)
    tile: int = Field(256, ge=8, description="tile core size (pixels of the input grid)")
    overlap: int = Field(16, ge=0, description="blend overlap on each side (pixels)")
    seed: int = Field(0, ge=0, description="base seed; each tile uses its own generator from (seed, frame, tile)")
    brick_z: int = Field(16, ge=1, description="volumes: planes per brick core (each brick also reads the "
                                               "operator's halo_z planes on both sides)")
    overlap_z: Optional[int] = Field(None, ge=0, description="volumes: planes beyond its core whose measurements a "
                                     "brick also fits (None: twice the operator's halo_z, at least 1)")
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    calibration: Optional[str] = Field(None, description="calibration record (`ddiff calibrate`; 'demo' = the shipped "
                                       "one): also write calibrated bounds uncertainty/lower, upper; implies its seeds")
    overwrite: bool = Field(False, description="replace an output written with a different configuration")
    artifacts: bool = Field(True, description="publish progress/summary artifacts")
    keep_features: SkipJsonSchema[bool] = Field(False)  # set by `ddiff calibrate`: keep the bound features (K = 1)
    # testing hook, left out of the JSON schema: deployment forms in the Prefect UI never show it
    fail_after_tiles: SkipJsonSchema[Optional[int]] = Field(
        None, ge=0, description="TESTING: stop with an error after this many tiles are written")

    @field_validator("input_store")
    @classmethod
    def _exists(cls, v: str) -> str:
        if not (Path(v) / "zarr.json").is_file():
            raise ValueError(f"input store {v!r} does not exist or is not a Zarr store; run `ddiff ingest` first")
        return v


class AuditParams(_Model):
    output_store: str = Field(..., description="a finished reconstruction (reconstruct_stack output)")
    report_dir: Optional[str] = Field(None, description="where the report goes (default: <output>.audit)")
    alpha: float = Field(0.05, gt=0, lt=1)
    window: int = Field(16, ge=1)
    control: Literal["sidak", "bonferroni", "bh"] = "sidak"
    max_figures: int = Field(4, ge=0)
    max_width: Optional[float] = Field(None, gt=0, description="calibrated bounds wider than this (image units) are "
                                       "labelled unresolved (default: 10 % of the input's intensity range)")
    artifacts: bool = True


class TrainParams(_Model):
    data_store: str = Field(..., description="ingested store of CLEAN images (storage.ingest)")
    out_dir: str = Field(..., description="checkpoint folder (rerun resumes)")
    preset: str = Field("compact", description="ADMUNet preset")
    crop: int = Field(64, ge=8)
    steps: int = Field(1000, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-4, gt=0)
    seed: int = 0
    device: Optional[str] = None
    max_minutes: Optional[float] = Field(None, gt=0)
    export: Optional[str] = Field(None, description="write the EMA weights here as .safetensors when done")
    gpu_limit: Optional[str] = Field("gpu", description="Prefect global concurrency limit held while training on CUDA")
    init: Optional[str] = Field(None, description="start a new run from these weights: 'default' or a "
                                ".safetensors/.pt path (staged training; ignored when resuming)")
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    lr_min: float = Field(0.0, ge=0, description="lr reached at the last step of a cosine/linear schedule")
    warmup_steps: int = Field(0, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    low_t_fraction: float = Field(0.0, ge=0, le=1, description="share of each batch with t < 250")


#: the benchmark's solvers: the seven diffusion solvers (DDiff twice: ``ddiff`` with the paper's values,
#: ``ddiff_auto`` self-calibrated) and the TV-regularized classical baseline
_BENCH_SOLVERS = ("ddiff", "ddiff_auto", *[n for n in SOLVER_NAMES if n != "ddiff" and not n.startswith("volume_")],
                  "tv")  # the paper's protocol is 2-D: the volume solvers are benchmarked by benchmarks/volume*.py
#: the benchmark's presets (``ddiff bench --preset``); any field given explicitly overrides them.
#: ``cpu`` is sized to finish in under 30 minutes on a 2-core CPU with the embedded prior.
BENCH_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(size=256, n_images=100, nfe=1000, tasks=list(PAPER_TASKS),
                  solvers=list(_BENCH_SOLVERS),
                  noise_sweep=[0.01, 0.05, 0.1, 0.2, 0.5], nfe_sweep=[50, 100, 200, 500, 1000],
                  sweep_task="phase_retrieval", noise_sweep_solvers=["ddiff", "ddiff_auto", "daps", "dps", "diffpir", "tv"],
                  nfe_sweep_solvers=["ddiff", "ddiff_auto", "daps", "dps", "diffpir"], phase_retrieval_runs=5, tune_images=8,
                  tv_weights=[0.002, 0.005, 0.01, 0.02, 0.05, 0.1], tv_iters=300),
    "cpu": dict(size=64, n_images=5, nfe=100, tasks=list(PAPER_TASKS),
                solvers=list(_BENCH_SOLVERS),
                noise_sweep=[0.01, 0.05, 0.1, 0.2, 0.5], nfe_sweep=[20, 50, 100, 200],
                sweep_task="gaussian_blur", noise_sweep_solvers=["ddiff", "ddiff_auto", "daps", "diffpir", "tv"],
                nfe_sweep_solvers=["ddiff", "ddiff_auto", "daps", "dps", "diffpir"], phase_retrieval_runs=5, tune_images=4,
                tv_weights=[0.002, 0.005, 0.01, 0.02, 0.05, 0.1], tv_iters=300),
    "smoke": dict(size=32, n_images=2, nfe=4, tasks=list(PAPER_TASKS),
                  solvers=list(_BENCH_SOLVERS),
                  noise_sweep=[0.05, 0.2], nfe_sweep=[2, 4], sweep_task="gaussian_blur",
                  noise_sweep_solvers=["ddiff", "ddiff_auto", "daps", "tv"], nfe_sweep_solvers=["ddiff", "ddiff_auto", "daps"],
                  phase_retrieval_runs=2, tune_images=2, tv_weights=[0.01, 0.05], tv_iters=20),
}


class BenchmarkParams(_Model):
    """The paper's protocol (Table 1, Table 2, noise and NFE sweeps) on one prior.

    Every ``None`` field takes the ``preset``'s value (:data:`BENCH_PRESETS`). Images: ``images``
    (a folder of PNG/TIFF or a ``.npy`` stack, centre-cropped to ``size``) or, when absent, crops
    of the HELD-OUT part of scikit-image's bundled images (the embedded prior never saw them).
    """

    preset: Literal["paper", "cpu", "smoke"] = "cpu"
    out: str = Field("bench", description="output folder (rerunning the same configuration resumes)")
    prior: str = Field("default", description="'default' or a .safetensors/.pt checkpoint path")
    dataset: Literal["ffhq", "imagenet"] = Field("ffhq", description="which of the paper's DDiff settings to use")
    images: Optional[str] = Field(None, description="evaluation images (folder or .npy); None: bundled held-out crops")
    tasks: Optional[list[str]] = None
    solvers: Optional[list[str]] = None
    size: Optional[int] = Field(None, ge=16, le=4096)
    n_images: Optional[int] = Field(None, ge=1)
    nfe: Optional[int] = Field(None, ge=1, le=10000, description="NFE budget of every diffusion solver (Table 1/2)")
    sigma_y: float = Field(0.05, gt=0, description="measurement noise σ_y of Table 1/2 (model space)")
    noise_sweep: Optional[list[float]] = Field(None, description="σ_y values of the noise study (Fig. 3)")
    nfe_sweep: Optional[list[int]] = Field(None, description="NFE budgets of the speed study (Fig. 5)")
    sweep_task: Optional[str] = None
    noise_sweep_solvers: Optional[list[str]] = None
    nfe_sweep_solvers: Optional[list[str]] = None
    phase_retrieval_runs: Optional[int] = Field(None, ge=1, le=100, description="best of R runs (paper: 5)")
    tune_images: Optional[int] = Field(None, ge=1, description="training crops for tuning TV's weight")
    tv_weights: Optional[list[float]] = None
    tv_iters: Optional[int] = Field(None, ge=1)
    hyperparameters: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-solver constructor overrides, e.g. {'ddiff': {'gamma0': 5.0}}")
    nonlinear_blur_weights: Optional[str] = Field(None, description="bkse GOPRO_wVAE.pth (nonlinear blur runs only with it)")
    seed: int = Field(0, ge=0)
    device: Device = "cpu"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    gpu_limit: Optional[str] = Field("gpu", description="Prefect global concurrency limit each cell holds on CUDA")
    overwrite: bool = Field(False, description="discard finished cells of a different configuration in out")


    @model_validator(mode="after")
    def _names(self):
        r = self.resolved()
        for field in ("solvers", "noise_sweep_solvers", "nfe_sweep_solvers"):
            bad = [s for s in r[field] if s not in _BENCH_SOLVERS]
            if bad:
                raise ValueError(f"{field}: unknown solver(s) {bad}; choose from {', '.join(_BENCH_SOLVERS)}")
        bad = [t for t in [*r["tasks"], r["sweep_task"]] if t not in PAPER_TASKS]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; the paper's tasks are: {', '.join(PAPER_TASKS)}")
        if any(s <= 0 for s in r["noise_sweep"]) or any(n < 1 for n in r["nfe_sweep"]):
            raise ValueError("noise_sweep values must be > 0 and nfe_sweep values >= 1")
        unknown = [s for s in self.hyperparameters if s not in _BENCH_SOLVERS]
        if unknown:
            raise ValueError(f"hyperparameters for unknown solver(s) {unknown}; choose from {', '.join(_BENCH_SOLVERS)}")
        if self.preset == "paper" and self.images is None:
            raise ValueError("the paper preset evaluates YOUR 256² validation images (FFHQ/ImageNet): pass images=<folder "
                             "or .npy>; the bundled crops are for the cpu and smoke presets")
        return self

    def resolved(self) -> dict[str, Any]:
        """The preset overlaid with every field given explicitly (JSON-ready)."""
        preset = BENCH_PRESETS[self.preset]
        return {k: preset.get(k) if v is None else v for k, v in self.model_dump().items()}
