"""The paper's evaluation protocol on tensors: its tasks, every solver at one NFE budget, the
per-image metrics, and best-of-R for unstable tasks.

Room: ``flows`` (the benchmark package :mod:`flows.bench`) — torch, numpy, ``operators``, ``ddiff``
(solvers, metrics). No files, no Prefect: :mod:`flows.bench.flow` runs the grid,
:mod:`flows.bench.store` keeps the records, :mod:`flows.bench.report` renders them. It lives in
``flows`` rather than ``ddiff`` because it is the benchmark's protocol, not part of the solver library.

Conventions (``ddiff_algorithm.md``, ``baselines_spec.md``):

* **Tasks** are the paper's eight operators at its settings. Kernels are in pixels and stay as
  published (61×61 blurs, ×4 SR, oversampling 2); the inpainting box keeps its *area fraction*
  (128² of 256² → ``size/2``, margin ``16·size/256``), so a 64² crop loses a quarter, not all.
* **Equal NFE.** One budget ``nfe`` configures every diffusion solver: DDiff, its ablations and
  DPS run ``nfe`` respaced steps; DiffPIR ``nfe + 1`` (its last timestep, t = 0, needs no network
  call); DAPS ``nfe / ode_steps`` annealing steps of ``ode_steps`` network calls (DAPS-1K =
  200 × 5). Hyperparameters are the paper's appendix A.5 for DDiff and its three ablations
  (``ddiff_hqs`` is :class:`DDiffHQS` with ``DDiff.paper(task)``, the a/b step-down, as in the CLI
  and the flows) and the reference configs for the baselines; a task without a reference setting
  uses the documented fallback in :data:`BASELINE_FALLBACK`. Overrides replace any of them: the
  reference implementation's constant-step DDiff-HQS is :data:`DDIFF_HQS_REFERENCE`, chosen with
  ``--set ddiff_hqs.a=1 --set ddiff_hqs.b=1 --set ddiff_hqs.gamma0=90`` (the committed
  ``benchmarks/results/bench_cpu*`` runs predate this and used it, see their README).
* **Metrics per image**: PSNR, SSIM, LPIPS (NaN when AlexNet weights are absent), χ²_ν and the
  paper's residual ``|‖y − A(x̂)‖²/m − σ_y²|`` (:func:`image_metrics`).
* **Best of R** (phase retrieval, R = 5 in the paper): R seeded runs, and per image the run with
  the highest PSNR against the truth — an oracle choice, as the paper's protocol is.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from ddiff import metrics
from ddiff.solvers import DAPS, DPS, DDiff, DDiffHQS, DiffPIR, DiffPnPADMM, DiffPnPHQS, TVReconstruction
from ddiff.solvers.ddiff import PAPER_HYPERPARAMETERS
from ddiff.solvers.dps import DPS_SCALES

__all__ = ["TASKS", "SOLVERS", "DIFFUSION_SOLVERS", "ABLATION", "DDIFF_HQS_REFERENCE", "BASELINE_FALLBACK", "task_operator_params",
           "solver_kwargs", "build_solver", "image_metrics", "CellResult", "solve_best_of", "forward_seconds",
           "tune_tv_weight", "run_seed"]

#: the paper's eight tasks, in the order of its Table 1
TASKS = tuple(PAPER_HYPERPARAMETERS)
#: solver name -> class; ``ddiff`` runs the paper's per-task values (``DDiff.paper``), ``ddiff_auto``
#: the self-calibrated default (``DDiff.auto``); ``tv`` is the classical TV-regularized baseline
SOLVERS = {"ddiff": DDiff, "ddiff_auto": DDiff, "ddiff_hqs": DDiffHQS, "diffpnp_admm": DiffPnPADMM, "diffpnp_hqs": DiffPnPHQS,
           "dps": DPS, "diffpir": DiffPIR, "daps": DAPS, "tv": TVReconstruction}
DIFFUSION_SOLVERS = tuple(n for n in SOLVERS if n != "tv")
#: the paper's Table 2 (dual variable × noising step)
ABLATION = ("ddiff", "ddiff_hqs", "diffpnp_admm", "diffpnp_hqs")
#: the reference implementation's DDiff-HQS ablation: a constant step of 90 on the normalized gradient.
#: Not a default: pass it as overrides (``--set ddiff_hqs.a=1 --set ddiff_hqs.b=1 --set ddiff_hqs.gamma0=90``)
DDIFF_HQS_REFERENCE = dict(a=1.0, b=1.0, gamma0=90.0)
#: settings for tasks the baselines' reference configs do not cover (their deblurring values)
BASELINE_FALLBACK = {"dps": dict(zeta=0.3), "diffpir": dict(lambda_=7.0, zeta=0.3)}


def task_operator_params(task: str, size: int) -> dict:
    """Keywords for ``operators.get_operator(task, ...)`` on ``size × size`` images."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the paper's tasks are: {', '.join(TASKS)}")
    if task == "inpainting_box":
        margin = max(1, round(16 * size / 256))
        return dict(box_size=size // 2, margin=(margin, margin), image_size=(size, size))
    if task == "inpainting_random":
        return dict(prob=0.7, image_size=(size, size))
    if task == "super_resolution":
        return dict(scale=4)
    return {}


def solver_kwargs(name: str, task: str, nfe: int, dataset: str = "ffhq", overrides: dict | None = None) -> dict:
    """Constructor keywords of solver ``name`` for ``task`` at a budget of ``nfe`` network calls.

    ``overrides`` (constructor keywords) are applied last. ``tv`` ignores ``nfe``.
    """
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose from {', '.join(SOLVERS)}")
    if not (isinstance(nfe, int) and nfe >= 1):
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    cls = SOLVERS[name]
    if name in ABLATION:
        kw = cls.paper(task, dataset) | dict(steps=nfe)
    elif name == "ddiff_auto":
        kw = DDiff.auto(steps=nfe)  # self-calibrated: the same keywords for every task, σ_y and budget
    elif name == "dps":
        kw = dict(zeta=DPS_SCALES.get(task, BASELINE_FALLBACK["dps"]["zeta"]), steps=nfe)
    elif name == "diffpir":
        ref = DiffPIR.TASKS.get(task, BASELINE_FALLBACK["diffpir"])
        kw = dict(lambda_=ref["lambda_"], zeta=ref["zeta"], steps=nfe + 1)
    elif name == "daps":
        kw = DAPS.reference(task)
        kw["ode_steps"] = min(kw["ode_steps"], nfe)  # budgets below one annealing step: shorter ODE
        kw["annealing_steps"] = nfe // kw["ode_steps"]
    else:
        kw = {}
    kw.update(overrides or {})
    return kw


def build_solver(name: str, prior, kwargs: dict):
    """``SOLVERS[name](prior, **kwargs)`` (``tv`` takes no prior)."""
    return SOLVERS[name](**kwargs) if name == "tv" else SOLVERS[name](prior, **kwargs)


def image_metrics(x_hat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, operator, noise) -> dict[str, torch.Tensor]:
    """Per-image metrics ``{name: (B,) float64}``: ``psnr``, ``ssim``, ``lpips`` (vs. truth ``x``,
    images in ``[−1, 1]``) and the data fit ``chi2_nu`` (ideal 1) and ``residual`` (ideal 0)."""
    with torch.no_grad():
        Ax = operator(x_hat)
        sigma = noise.effective_sigma(y)
        out = {"psnr": metrics.psnr(x_hat, x), "ssim": metrics.ssim(x_hat, x), "lpips": metrics.lpips(x_hat, x),
               "chi2_nu": metrics.chi2_reduced(y, Ax, sigma), "residual": metrics.residual_gap(y, Ax, sigma)}
    return {k: v.detach().double().cpu() for k, v in out.items()}


def run_seed(seed: int, run: int, image: int) -> int:
    """The generator seed of ``image`` in ``run`` (independent of the batch it is solved in)."""
    return (int(seed) * 1_000_003 + int(run) * 10_007 + int(image)) % (2**63)


@dataclass
class CellResult:
    """One solver on one batch: the chosen reconstructions ``x`` ``(B, C, H, W)``, per-image
    ``metrics``, the chosen ``run`` per image, NFE and wall seconds of ONE run (batch), ``runs``."""

    x: torch.Tensor
    metrics: dict[str, torch.Tensor]
    run: torch.Tensor
    nfe: int
    seconds: float
    runs: int


def solve_best_of(solver, y, operator, noise, x_true, runs: int = 1, seed: int = 0, images=None) -> CellResult:
    """Solve ``runs`` times with per-image generators; keep per image the run of highest PSNR.

    ``images`` are the images' global indices (for :func:`run_seed`; default ``0..B−1``).
    Seconds and NFE are those of one run, averaged over the runs.
    """
    B = y.shape[0]
    images = list(range(B)) if images is None else list(images)
    best_x, best_m, best_run = None, None, torch.zeros(B, dtype=torch.long)
    nfe = seconds = 0.0
    for r in range(runs):
        gens = [torch.Generator(device=y.device).manual_seed(run_seed(seed, r, i)) for i in images]
        res = solver.solve(y, operator, noise, generator=gens, x_shape=tuple(x_true.shape))
        m = image_metrics(res.x, x_true, y, operator, noise)
        nfe, seconds = nfe + res.nfe, seconds + res.seconds
        if best_x is None:
            best_x, best_m = res.x.clone(), m
            continue
        better = m["psnr"] > best_m["psnr"]
        best_x[better.to(best_x.device)] = res.x[better.to(res.x.device)]
        best_m = {k: torch.where(better, m[k], best_m[k]) for k in m}
        best_run[better] = r
    return CellResult(best_x, best_m, best_run, int(round(nfe / runs)), seconds / runs, runs)


def forward_seconds(prior, x_shape, repeats: int = 5, t: int = 500) -> float:
    """Median wall seconds of ONE network forward ``prior.eps`` on a batch of shape ``x_shape``
    (after one warm-up call): the unit of the NFE floor ``NFE × forward``."""
    x = torch.zeros(x_shape, dtype=torch.float32, device=next(iter(_devices(prior)), "cpu"))
    with torch.no_grad():
        prior.eps(x, t)
        times = []
        for _ in range(repeats):
            _sync(x.device)
            t0 = time.perf_counter()
            prior.eps(x, t)
            _sync(x.device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tune_tv_weight(y, operator, noise, x_true, weights, iters: int = 300) -> float:
    """The TV weight of ``weights`` with the best mean PSNR on ``(y, x_true)`` (tuning images,
    never the evaluation images)."""
    if not weights:
        raise ValueError("tune_tv_weight needs at least one candidate weight")
    scores = [metrics.psnr(TVReconstruction(weight=w, iters=iters).solve(y, operator, noise, x_shape=tuple(x_true.shape)).x,
                          x_true).mean().item()
              for w in weights]
    best = max(range(len(weights)), key=lambda i: scores[i] if math.isfinite(scores[i]) else -math.inf)
    return float(weights[best])


def _devices(prior):
    return (p.device for p in prior.parameters()) if hasattr(prior, "parameters") else iter(())


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
