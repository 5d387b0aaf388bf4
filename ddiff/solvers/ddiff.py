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
"""
from __future__ import annotations

import math

import torch

from .base import Solver, check_positive, check_steps, likelihood_grad, per_sample_norm, randn

__all__ = ["DDiff", "DDiffHQS", "DiffPnPADMM", "DiffPnPHQS", "PAPER_HYPERPARAMETERS", "REFERENCE_NUMEL"]

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


class _DualAscentBase(Solver):
    """Hyperparameters shared by DDiff and its ablations (names as in the algorithm spec).

    Args:
        prior: a prior exposing ``eps(x_t, t)``, ``channels`` and ``schedule``.
        steps: number of diffusion steps N (respaced from the 1000-step schedule; paper: 1000).
        gamma0: base step size γ₀ (an ℓ2 distance for 256×256×3 images, see ``rescale_step``).
        a, b: step-down policy, ``γ_t = a·γ₀`` for ``t > t_gamma`` else ``b·γ₀``.
        t_gamma: original step index where the step size drops.
        t0: noise threshold; for ``t ≤ t0`` the noising step adds no fresh noise (ξ = 0).
        noising: ``"ancestral"`` (DDPM-equivalent ζ) or ``"fresh"`` (ζ = √(1 − ᾱ_{t−1})).
        early_stop: tolerance on ``‖x − z‖/‖z‖`` per sample, or ``None`` to run all steps.
        rescale_step: multiply γ_t by ``√(n/n₀)`` (``n`` values per image) so the paper's γ₀
            transfer to tiles and small images with the same per-pixel step. On by default.
    """

    use_dual = True
    use_noising = True

    def __init__(
        self,
        prior,
        steps: int = 1000,
        gamma0: float = 2.9,
        a: float = 3.3,
        b: float = 0.1,
        t_gamma: int = 90,
        t0: int = 50,
        noising: str = "ancestral",
        early_stop: float | None = None,
        rescale_step: bool = True,
    ):
        super().__init__(prior)
        T = prior.schedule.T
        self.steps = check_steps(steps, T)
        self.gamma0 = check_positive("gamma0", gamma0)
        self.a = check_positive("a", a)
        self.b = check_positive("b", b)
        if not (isinstance(t_gamma, int) and 0 <= t_gamma < T):
            raise ValueError(f"t_gamma must be an integer step in 0..{T - 1}, got {t_gamma!r}")
        if not (isinstance(t0, int) and -1 <= t0 < T):
            raise ValueError(f"t0 must be an integer step in -1..{T - 1}, got {t0!r}")
        if noising not in ("ancestral", "fresh"):
            raise ValueError(f"noising must be 'ancestral' or 'fresh', got {noising!r}")
        self.t_gamma, self.t0, self.noising = t_gamma, t0, noising
        self.early_stop = None if early_stop is None else check_positive("early_stop", early_stop)
        self.rescale_step = bool(rescale_step)

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
            steps=1000, gamma0=float(g_i if i else g_f), a=3.3, b=0.1,
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

    def data_step(self, operator, noise, y, v, gamma):
        """(2) ``x = v − γ ∇ℓ(v)/‖∇ℓ(v)‖`` with the norm taken per sample."""
        g, nll = likelihood_grad(operator, noise, y, v)
        return v - gamma * g / per_sample_norm(g).clamp_min(1e-30), nll


class DDiff(_DualAscentBase):
    """Dual Ascent Diffusion (Algorithm 1). See :class:`_DualAscentBase` for the keywords."""

    def _run(self, net, y, operator, noise, x_shape, generator, emit):
        sched, dev, dt = net.schedule, y.device, (y.real.dtype if y.is_complex() else y.dtype)
        ts = sched.respace(self.steps)
        n = math.prod(x_shape[1:])
        x_t = randn(x_shape, generator, dt, dev)  # x_T ~ N(0, I)
        u = torch.zeros(x_shape, dtype=dt, device=dev)  # dual variable
        out = torch.empty(x_shape, dtype=dt, device=dev)
        active = torch.arange(x_shape[0], device=dev)  # samples not yet early-stopped
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1  # ᾱ_{−1} = 1 after the last step
            ab, ab_prev = sched.abar(t), sched.abar(t_prev)
            y_a, gamma = y[active], self.gamma(t, n)
            z = net.x0(x_t, t)  # (1) z-update: Tweedie denoise on the manifold, 1 NFE
            x, _ = self.data_step(operator, noise, y_a, z - u, gamma)  # (2) x-update at v = z − u
            eps_tilde = (x_t - math.sqrt(ab) * x) / math.sqrt(1 - ab)  # (3) implied noise
            primal = per_sample_norm(x - z).flatten()
            stop = primal / per_sample_norm(z).flatten().clamp_min(1e-30) < (self.early_stop or 0.0)  # (4)
            s = self.noise_scale(ab, ab_prev)  # (5) noising step; ξ = 0 below the threshold t0
            xi = randn(x.shape, _subset(generator, active), dt, dev) if t > self.t0 and s > 0 else 0.0
            x_t = math.sqrt(ab_prev) * (x + u) + math.sqrt(max(1 - ab_prev - s**2, 0.0)) * eps_tilde + s * xi
            x_plus_u = x + u
            if self.use_dual:
                u = u + (x - z)  # (6) dual ascent
            emit({
                "i": i, "t": t, "gamma": gamma, "x": x, "z": z, "u": u, "x_t": x_t,
                "primal_residual": primal, "dual_norm": per_sample_norm(u).flatten(),
                "nll": noise.nll(y_a, operator(x)), "active": active,
            })
            if stop.any():  # (4) early stop per sample, so a batch answers like each tile alone
                out[active[stop]] = x_plus_u[stop]
                keep = ~stop
                active, x_t, u = active[keep], x_t[keep], u[keep]
                if active.numel() == 0:
                    return out
        out[active] = x_t  # the final diffusion state, x + u of the last step
        return out


def _subset(generator, active):
    if isinstance(generator, (list, tuple)):
        return [generator[int(i)] for i in active]
    return generator


class DDiffHQS(DDiff):
    """DDiff without the dual variable (``u ≡ 0``): linearized half-quadratic splitting on the
    diffusion manifold. With ``a = b = 1`` and ``gamma0 = 90`` it is the reference's ablation."""

    use_dual = False


class DiffPnPADMM(DDiff):
    """PnP-ADMM with a one-step Tweedie denoiser at a decreasing level (no noising step):
    ``z = x̂_0(√ᾱ_t (x + u))`` at step ``t``, then the x- and dual updates of DDiff. Starts from
    ``x = u = 0``; returns ``x + u`` of the last step."""

    use_noising = False

    def _run(self, net, y, operator, noise, x_shape, generator, emit):
        return _pnp_loop(self, net, y, operator, noise, x_shape, emit)


class DiffPnPHQS(DiffPnPADMM):
    """:class:`DiffPnPADMM` with ``u ≡ 0``."""

    use_dual = False


def _pnp_loop(solver, net, y, operator, noise, x_shape, emit):
    """The loop of the two PnP ablations (no diffusion state, deterministic)."""
    sched, dev, dt = net.schedule, y.device, y.dtype
    n = math.prod(x_shape[1:])
    x = torch.zeros(x_shape, dtype=dt, device=dev)
    u = torch.zeros_like(x)
    for i, t in enumerate(sched.respace(solver.steps)):
        gamma = solver.gamma(t, n)
        z = net.x0(math.sqrt(sched.abar(t)) * (x + u), t)  # prior: denoise at level t, no fresh noise
        x, _ = solver.data_step(operator, noise, y, z - u, gamma)  # data: normalized gradient step
        if solver.use_dual:
            u = u + (x - z)  # dual ascent
        emit({
            "i": i, "t": t, "gamma": gamma, "x": x, "z": z, "u": u,
            "primal_residual": per_sample_norm(x - z).flatten(), "dual_norm": per_sample_norm(u).flatten(),
            "nll": noise.nll(y, operator(x)),
        })
    return x + u
