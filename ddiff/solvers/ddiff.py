"""DDiff (Dual Ascent Diffusion, Algorithm 1) and its ablations of the paper's Table 2.

Room: ``ddiff`` — pure torch.

DDiff is linearized ADMM on ``min_x ℓ(x) − log p(x)`` whose prior step is a pretrained diffusion
model kept on its own noise manifold (``ddiff_algorithm.md``):

    z = x̂_0(x_t)                                    (1) prior: one Tweedie denoise, 1 NFE
    x = (z − u) − γ_t ∇ℓ(z − u)/‖∇ℓ(z − u)‖          (2) data: one normalized gradient step
    ε̃ = (x_t − √ᾱ_t x)/√(1 − ᾱ_t)                  (3) implied noise
    x_{t−1} = √ᾱ_{t−1}(x + u) + √(1 − ᾱ_{t−1} − s_t²) ε̃ + s_t ξ     (5) back onto the manifold
    u ← u + (x − z)                                 (6) dual ascent

``DDiffHQS`` drops the dual variable (``u ≡ 0``); ``DiffPnPADMM``/``DiffPnPHQS`` drop the noising
step and denoise ``√ᾱ_t (x + u)`` at a decreasing level instead (classic PnP with a diffusion
denoiser). The gradient never goes through the network: NFE = steps, and the cost per step is one
network forward plus one forward/backward of the operator.

**Two x-updates.** ``x_update="gradient"`` is the paper's (2): a fixed-length step γ_t, tuned per
task at 1000 steps and σ_y = 0.05 (``DDiff.paper(task)``). ``x_update="discrepancy"`` — the
default, ``DDiff.auto()`` — has no step size. Its box, as run:

    z = x̂_0(x_t)                                               (1) prior: Tweedie denoise, 1 NFE
    x = Π_C(z − u),  C = {x : D(y, A x) ≤ τ m}                    (2) data: exact projection (:mod:`.data_fit`)
    x_{t−1} = √ᾱ_{t−1}(x + u) + √(1 − ᾱ_{t−1} − s_t²) ε̃ + s_t ξ      (3)–(5) as above
    u ← (u + x − z) · σ̄²_{t−1}/σ̄²_t,   σ̄_t² = (1 − ᾱ_t)/ᾱ_t          (6) rescaled dual ascent (0 after t = 0)

``Π_C`` is the Euclidean projection onto the images that explain the data to the noise level
(Morozov's discrepancy principle), so the measurements and σ_y decide how far the data step moves,
at any step budget: it is the exact proximal map of ``C``'s indicator, and the ADMM penalty lives in
the prior step alone. Reading the prior step as a proximal map is an approximation: the Tweedie
denoiser is the MMSE estimate at level ``σ̄_t``, which is the proximal map of *some* prior with
penalty ``ρ_t = 1/σ̄_t²`` (Gribonval 2011) but not of ``−log p`` itself. ADMM with a changing penalty
keeps the *unscaled* dual ``ρ u`` fixed (Boyd et al. 2011, §3.4.1), hence the rescaling in (6);
without it the dual accumulates every projection and diverges.

**The returned point.** With the discrepancy x-update every dual-ascent solver here (DDiff, its
HQS ablation, the two PnP ablations) returns the last x-update ``x`` — the point that satisfies
``D(y, A x) ≤ τ m``, whose χ²_ν the trace, the run summary and the audit report. With the paper's
gradient step they return Algorithm 1's output ``x + u`` of the last step (the final diffusion
state; ``u`` the dual that step used).
"""
from __future__ import annotations

import math

import torch

from .base import Solver, check_int, check_positive, check_steps, likelihood_grad, per_sample_norm, randn
from .data_fit import PROJECTIONS, project_to_discrepancy
from .observed import observed_mask

__all__ = ["DDiff", "DDiffHQS", "DiffPnPADMM", "DiffPnPHQS", "PAPER_HYPERPARAMETERS", "REFERENCE_NUMEL",
           "X_UPDATES"]

#: ``n₀`` — values per image of the paper's 256×256×3 images, for which its γ₀ were tuned.
REFERENCE_NUMEL = 256 * 256 * 3

# Appendix A.5 (σ_y = 0.05, 1000 steps): task -> (γ0 FFHQ, γ0 ImageNet, t_γ FFHQ, t_γ ImageNet,
# t0 FFHQ, t0 ImageNet, noising)
PAPER_HYPERPARAMETERS = {
    "super_resolution": (18, 18, 90, 90, 1, 1, "fresh"),
    "inpainting_box": (30, 50, 90, 500, 1, 1, "fresh"),
    "inpainting_random": (50, 50, 90, 90, 1, 1, "fresh"),
    "gaussian_blur": (2.9, 1.8, 90, 90, 50, 50, "ancestral"),
    "motion_blur": (2.9, 1.5, 90, 90, 80, 80, "ancestral"),
    "phase_retrieval": (38, 38, 90, 90, 1, 1, "fresh"),
    "nonlinear_blur": (2.5, 2.5, 90, 90, 120, 120, "ancestral"),
    "hdr": (3.5, 3.8, 90, 90, 120, 100, "ancestral"),
}

#: the x-update rules: the paper's normalized gradient step, or the self-calibrated projection
X_UPDATES = ("discrepancy", "gradient")
#: the paper's step policy when ``x_update="gradient"`` is chosen without values (its deblurring row)
_GRADIENT_DEFAULTS = dict(gamma0=2.9, a=3.3, b=0.1, t_gamma=90, rescale_step=True)


class _DualAscentBase(Solver):
    """Hyperparameters shared by DDiff and its ablations (names as in the algorithm spec).

    Args:
        prior: a prior exposing ``eps(x_t, t)``, ``channels`` and ``schedule``.
        steps: number of diffusion steps N (respaced from the 1000-step schedule; paper: 1000).
        x_update: ``"discrepancy"`` (default, self-calibrated: no step size, see the module
            docstring) or ``"gradient"`` (the paper's normalized step with γ₀, a, b, t_γ).
        tau: discrepancy level, the x-update stops at ``D(y, A x) = τ m`` (1: the noise level).
        max_inner: inner iterations of the discrepancy projection per step (hybrid LSQR, or
            descent for nonlinear/photon problems); the last step, which is the output, runs to
            convergence with up to 10× as many.
        projection: ``"exact"`` (default: the nearest point of the discrepancy set, hybrid LSQR) or
            ``"cgls"`` (the stopped CGLS of earlier releases, kept for comparison) — linear
            operators with Gaussian noise; other problems use the descent approximation either way.
        gamma0: base step size γ₀ of the gradient x-update (an ℓ2 distance for 256×256×3 images,
            see ``rescale_step``).
        a, b: step-down policy, ``γ_t = a·γ₀`` for ``t > t_gamma`` else ``b·γ₀``.
        t_gamma: original step index where the step size drops.
        t0: noise threshold; for ``t ≤ t0`` the noising step adds no fresh noise (ξ = 0).
        noising: ``"ancestral"`` (DDPM-equivalent ζ) or ``"fresh"`` (ζ = √(1 − ᾱ_{t−1})).
        early_stop: tolerance on ``‖x − z‖/‖z‖`` per sample, or ``None`` to run all steps.
        rescale_step: multiply γ_t by ``√(n/n₀)`` (``n`` values per image) so the paper's γ₀
            transfer to tiles and small images with the same per-pixel step. On by default.

    ``gamma0``, ``a``, ``b``, ``t_gamma`` and ``rescale_step`` belong to the gradient x-update;
    giving one with ``x_update="discrepancy"`` is an error (it would be silently unused).
    """

    use_dual = True

    def __init__(
        self,
        prior,
        steps: int = 100,
        x_update: str = "discrepancy",
        tau: float = 1.0,
        max_inner: int = 5,
        projection: str = "exact",
        gamma0: float | None = None,
        a: float | None = None,
        b: float | None = None,
        t_gamma: int | None = None,
        t0: int = 1,
        noising: str = "fresh",
        early_stop: float | None = None,
        rescale_step: bool | None = None,
    ):
        super().__init__(prior)
        T = prior.schedule.T
        self.steps = check_steps(steps, T)
        if x_update not in X_UPDATES:
            raise ValueError(f"x_update must be one of {', '.join(X_UPDATES)}, got {x_update!r}")
        self.x_update = x_update
        self.tau = check_positive("tau", tau)
        self.max_inner = check_int("max_inner", max_inner, 1, 1000)
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        self.projection = projection
        step_kw = dict(gamma0=gamma0, a=a, b=b, t_gamma=t_gamma, rescale_step=rescale_step)
        given = [k for k, v in step_kw.items() if v is not None]
        if x_update == "discrepancy" and given:
            raise ValueError(f"{', '.join(given)} only apply to x_update='gradient' (the paper's step); the "
                             "discrepancy x-update has no step size — drop them or pass x_update='gradient'")
        step_kw = {k: (_GRADIENT_DEFAULTS[k] if v is None else v) for k, v in step_kw.items()}
        self.gamma0 = check_positive("gamma0", step_kw["gamma0"])
        self.a = check_positive("a", step_kw["a"])
        self.b = check_positive("b", step_kw["b"])
        t_gamma = step_kw["t_gamma"]
        if not (isinstance(t_gamma, int) and 0 <= t_gamma < T):
            raise ValueError(f"t_gamma must be an integer step in 0..{T - 1}, got {t_gamma!r}")
        if not (isinstance(t0, int) and -1 <= t0 < T):
            raise ValueError(f"t0 must be an integer step in -1..{T - 1}, got {t0!r}")
        if noising not in ("ancestral", "fresh"):
            raise ValueError(f"noising must be 'ancestral' or 'fresh', got {noising!r}")
        self.t_gamma, self.t0, self.noising = t_gamma, t0, noising
        self.early_stop = None if early_stop is None else check_positive("early_stop", early_stop)
        self.rescale_step = bool(step_kw["rescale_step"])

    @classmethod
    def auto(cls, steps: int = 100) -> dict:
        """The self-calibrated setting (the constructor's defaults) as constructor keywords: the
        discrepancy x-update at τ = 1 with ≤ 5 inner iterations per step (the exact projection inside
        a 5-dimensional Krylov space; the last step converges), fresh noising, ``t0 = 1``.
        Nothing in it depends on the task, the image size or σ_y: the measurements set the step."""
        return dict(steps=steps, x_update="discrepancy", tau=1.0, max_inner=5, projection="exact", noising="fresh", t0=1,
                    early_stop=None)

    @classmethod
    def paper(cls, task: str, dataset: str = "ffhq") -> dict:
        """The paper's appendix-A.5 hyperparameters for ``task`` as constructor keywords.

        ``task`` is one of the eight operator names (``super_resolution``, ``inpainting_box``,
        ``inpainting_random``, ``gaussian_blur``, ``motion_blur``, ``phase_retrieval``,
        ``nonlinear_blur``, ``hdr``); ``dataset`` is ``"ffhq"`` or ``"imagenet"``.
        """
        if task not in PAPER_HYPERPARAMETERS:
            raise ValueError(f"unknown task {task!r}; the paper's tasks are: {', '.join(PAPER_HYPERPARAMETERS)}")
        if dataset not in ("ffhq", "imagenet"):
            raise ValueError(f"unknown dataset {dataset!r}; use 'ffhq' or 'imagenet'")
        g_f, g_i, tg_f, tg_i, t0_f, t0_i, noising = PAPER_HYPERPARAMETERS[task]
        i = dataset == "imagenet"
        return dict(
            steps=1000, x_update="gradient", gamma0=float(g_i if i else g_f), a=3.3, b=0.1,
            t_gamma=tg_i if i else tg_f, t0=t0_i if i else t0_f, noising=noising, early_stop=None,
        )

    def gamma(self, t: int, numel: int) -> float:
        """Step size γ_t (step-down policy, rescaled by ``√(n/n₀)`` unless ``rescale_step=False``)."""
        g = (self.a if t > self.t_gamma else self.b) * self.gamma0
        return g * math.sqrt(numel / REFERENCE_NUMEL) if self.rescale_step else g

    def noise_scale(self, abar_t: float, abar_prev: float) -> float:
        """The paper's ζ (here ``s_t``): ancestral ``√((1−ᾱ_{t−1})/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_{t−1})``,
        or fresh ``√(1−ᾱ_{t−1})``."""
        if self.noising == "fresh":
            return math.sqrt(1 - abar_prev)
        return math.sqrt((1 - abar_prev) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_prev)

    def data_step(self, operator, noise, y, v, gamma, last: bool = False, observed=None):
        """(2) the x-update at ``v``; returns ``(x, info)`` with per-sample diagnostics.

        ``gradient``: ``x = v − γ ∇ℓ(v)/‖∇ℓ(v)‖`` with the norm taken per sample (``info``: ``nll``
        at ``v``). ``discrepancy``: the projection onto ``{D(y, A x) ≤ τ m}`` (``info``: ``chi2_nu``,
        ``D(y, A x)/m`` at the new ``x``, and ``inner`` iterations used); ``observed``: the mask of
        observed entries (computed when not given)."""
        if self.x_update == "discrepancy":
            # the last x-update is the output: it runs to convergence (up to 10× the iterations, ≈ free)
            x, info = project_to_discrepancy(operator, noise, y, v, self.tau, self.max_inner * (10 if last else 1),
                                             observed=observed, method=self.projection)
            return x, {"chi2_nu": info["discrepancy"], "inner": info["iters"]}
        g, nll = likelihood_grad(operator, noise, y, v)
        return v - gamma * g / per_sample_norm(g).clamp_min(1e-30), {"nll": nll}

    def dual_update(self, u, x, z, sched, t: int, t_prev: int):
        """(6) ``u ← u + (x − z)``; with the discrepancy x-update, rescaled by ``σ̄²_{t−1}/σ̄²_t``
        (the prior step's penalty ``1/σ̄_t²`` changes, the unscaled dual is kept; 0 after t = 0)."""
        if not self.use_dual:
            return u
        u = u + (x - z)
        if self.x_update == "discrepancy":
            u = u * ((sched.sigma_bar(t_prev) / sched.sigma_bar(t)) ** 2 if t_prev >= 0 else 0.0)
        return u


class DDiff(_DualAscentBase):
    """Dual Ascent Diffusion (Algorithm 1). See :class:`_DualAscentBase` for the keywords."""

    def _run(self, net, y, operator, noise, x_shape, generator, emit):
        sched, dev, dt = net.schedule, y.device, (y.real.dtype if y.is_complex() else y.dtype)
        ts = sched.respace(self.steps)
        n = math.prod(x_shape[1:])
        x_t = randn(x_shape, generator, dt, dev)  # x_T ~ N(0, I)
        u = torch.zeros(x_shape, dtype=dt, device=dev)  # dual variable
        out = torch.empty(x_shape, dtype=dt, device=dev)
        obs = observed_mask(operator, u, y)  # the entries D and m count, once per solve
        active = torch.arange(x_shape[0], device=dev)  # samples not yet early-stopped
        A, y_a, obs_a = operator, y, obs
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1  # ᾱ_{−1} = 1 after the last step
            ab, ab_prev = sched.abar(t), sched.abar(t_prev)
            gamma = self.gamma(t, n) if self.x_update == "gradient" else None
            z = net.x0(x_t, t)  # (1) z-update: Tweedie denoise on the manifold, 1 NFE
            x, fit = self.data_step(A, noise, y_a, z - u, gamma, last=t_prev < 0, observed=obs_a)  # (2)
            eps_tilde = (x_t - math.sqrt(ab) * x) / math.sqrt(1 - ab)  # (3) implied noise
            primal = per_sample_norm(x - z).flatten()
            stop = primal / per_sample_norm(z).flatten().clamp_min(1e-30) < (self.early_stop or 0.0)  # (4)
            s = self.noise_scale(ab, ab_prev)  # (5) noising step; ξ = 0 below the threshold t0
            xi = randn(x.shape, _subset(generator, active), dt, dev) if t > self.t0 and s > 0 else 0.0
            x_t = math.sqrt(ab_prev) * (x + u) + math.sqrt(max(1 - ab_prev - s**2, 0.0)) * eps_tilde + s * xi
            result = self.returned_point(x, u)
            u = self.dual_update(u, x, z, sched, t, t_prev)  # (6) dual ascent
            emit({
                "i": i, "t": t, "gamma": gamma, "x": x, "z": z, "u": u, "x_t": x_t,
                "primal_residual": primal, "dual_norm": per_sample_norm(u).flatten(), "active": active, **fit,
            })
            if stop.any():  # (4) early stop per sample, so a batch answers like each tile alone
                out[active[stop]] = result[stop]
                keep = torch.nonzero(~stop).flatten()
                if keep.numel() == 0:
                    return out
                active, x_t, u, y_a, obs_a, result = (active[keep], x_t[keep], u[keep], y_a[keep], obs_a[keep],
                                                      result[keep])
                A = select_samples(A, keep)  # an operator that differs per sample keeps each its own
        out[active] = result
        return out

    def returned_point(self, x, u):
        """The solver's output at a step (module docstring): ``x`` with the discrepancy x-update,
        Algorithm 1's ``x + u`` with the paper's gradient step."""
        return x if self.x_update == "discrepancy" else x + u


def select_samples(operator, keep: torch.Tensor):
    """The operator for the samples ``keep`` of a batch: ``operator.select(keep)`` for operators
    whose samples differ (``operators.Validity`` with per-sample masks, the flows' per-tile
    operators); an operator without ``select`` is the same for every sample."""
    return operator.select(keep) if hasattr(operator, "select") else operator


def _subset(generator, active):
    if isinstance(generator, (list, tuple)):
        return [generator[int(i)] for i in active]
    return generator


class DDiffHQS(DDiff):
    """DDiff without the dual variable (``u ≡ 0``): linearized half-quadratic splitting on the
    diffusion manifold. With ``a = b = 1`` and ``gamma0 = 90`` it is the reference's ablation."""

    use_dual = False


#: DDiff keywords of the noising step, which the PnP ablations do not have
_NOISING_KEYS = ("early_stop", "noising", "t0")


def _without(kw: dict, keys) -> dict:
    return {k: v for k, v in kw.items() if k not in keys}


class DiffPnPADMM(DDiff):
    """PnP-ADMM with a one-step Tweedie denoiser at a decreasing level (no noising step):
    ``z = x̂_0(√ᾱ_t (x + u))`` at step ``t``, then the x- and dual updates of DDiff. Starts from
    ``x = u = 0``; returns the point of the module docstring's convention. Deterministic: there is no noising step, so
    ``t0``, ``noising`` and ``early_stop`` do not exist here (passing them is an error)."""

    def __init__(self, prior, **kwargs):
        unused = sorted(set(kwargs) & set(_NOISING_KEYS))
        if unused:
            raise ValueError(f"{type(self).__name__} has no noising step: {', '.join(unused)} do not apply")
        super().__init__(prior, **kwargs)

    @classmethod
    def paper(cls, task: str, dataset: str = "ffhq") -> dict:
        """DDiff's appendix-A.5 step policy for ``task`` (without its noising settings)."""
        return _without(super().paper(task, dataset), _NOISING_KEYS)

    @classmethod
    def auto(cls, steps: int = 100) -> dict:
        """DDiff's self-calibrated setting without its noising settings."""
        return _without(super().auto(steps), _NOISING_KEYS)

    def _run(self, net, y, operator, noise, x_shape, generator, emit):
        return _pnp_loop(self, net, y, operator, noise, x_shape, emit)


class DiffPnPHQS(DiffPnPADMM):
    """:class:`DiffPnPADMM` with ``u ≡ 0``."""

    use_dual = False


def _pnp_loop(solver, net, y, operator, noise, x_shape, emit):
    """The loop of the two PnP ablations (no diffusion state, deterministic)."""
    sched, dev = net.schedule, y.device
    dt = y.real.dtype if y.is_complex() else y.dtype  # images are real even when y is k-space
    n = math.prod(x_shape[1:])
    x = torch.zeros(x_shape, dtype=dt, device=dev)
    u = torch.zeros_like(x)
    obs = observed_mask(operator, x, y)
    ts = sched.respace(solver.steps)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        gamma = solver.gamma(t, n) if solver.x_update == "gradient" else None
        z = net.x0(math.sqrt(sched.abar(t)) * (x + u), t)  # prior: denoise at level t, no fresh noise
        x, fit = solver.data_step(operator, noise, y, z - u, gamma, last=t_prev < 0, observed=obs)  # data step
        result = solver.returned_point(x, u)
        u = solver.dual_update(u, x, z, sched, t, t_prev)  # dual ascent (0 after the last step when rescaled)
        emit({
            "i": i, "t": t, "gamma": gamma, "x": x, "z": z, "u": u,
            "primal_residual": per_sample_norm(x - z).flatten(), "dual_norm": per_sample_norm(u).flatten(), **fit,
        })
    return result
