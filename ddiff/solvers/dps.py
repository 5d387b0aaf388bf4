"""DPS — Diffusion Posterior Sampling (Chung et al., ICLR 2023), as the reference code runs it.

Room: ``ddiff`` — pure torch.

Per step ``t`` (``baselines_spec.md`` §3.2), from ``x_T ~ N(0, I)``:

    ε̂ = ε_θ(x_t, t);  x̂_0 = clip((x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, −1, 1)
    x' = c₁ x̂_0 + c₂ x_t + σ_t z          (DDPM ancestral step, z = 0 at the last step)
    r  = ‖y − A(x̂_0)‖                     (un-squared, per sample)
    x_{t−1} = x' − ζ ∇_{x_t} r            (through the clip and the network)

The gradient goes through the network, so every step costs a forward *and* a backward pass.
The residual norm is taken per sample and summed over the batch (the reference's batch-wide norm
couples samples; it always ran batch size 1). For non-Gaussian noise models the residual
generalises to ``r = σ_eff √(2 (nll(y, A x̂_0) − nll(y, y)))``, which is ``‖y − A x̂_0‖`` for
Gaussian noise. The variance is the learned range when the prior offers ``eps_and_v`` (ADM
checkpoints), else the posterior variance ``β̃_t`` (with ``β̃`` at the first step replaced by the
second, as the reference clips it).
"""
from __future__ import annotations

import math

import torch

from ..priors.base import tweedie_x0
from .base import Solver, check_positive, check_steps, randn

__all__ = ["DPS"]

#: ζ per task from the reference configs (``baselines_spec.md`` §3.3).
DPS_SCALES = {
    "super_resolution": 0.3, "gaussian_blur": 0.3, "motion_blur": 0.3, "inpainting_random": 0.5,
    "inpainting_box": 0.5, "phase_retrieval": 1.0, "nonlinear_blur": 0.3,
}


class DPS(Solver):
    """DPS with step ``zeta`` (the reference's ``scale``) over ``steps`` respaced DDPM steps."""

    def __init__(self, prior, steps: int = 1000, zeta: float = 0.3):
        super().__init__(prior)
        self.steps = check_steps(steps, prior.schedule.T)
        self.zeta = check_positive("zeta", zeta)

    @classmethod
    def reference(cls, task: str) -> dict:
        """The reference config's ``steps`` and ``zeta`` for one of the paper's tasks."""
        if task not in DPS_SCALES:
            raise ValueError(f"no DPS reference setting for {task!r}; known: {', '.join(DPS_SCALES)}")
        return dict(steps=1000, zeta=DPS_SCALES[task])

    def _run(self, net, y, operator, noise, x_shape, generator, emit):
        sched, dt = net.schedule, y.real.dtype if y.is_complex() else y.dtype
        ts = sched.respace(self.steps)
        sigma = noise.effective_sigma(y)
        nll_floor = noise.nll(y, y)
        x = randn(x_shape, generator, dt, y.device)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            ab, ab_prev = sched.abar(t), sched.abar(t_prev)
            alpha = ab / ab_prev  # respaced α_t and β_t
            beta = 1 - alpha
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                eps, v = net.eps_and_v(x_in, t)  # one NFE, with gradient
                x0 = tweedie_x0(x_in, eps, ab)  # clipped, so the gradient is zero where clipped
                excess = (noise.nll(y, operator(x0)) - nll_floor).clamp_min(0)
                r = sigma * torch.sqrt(2 * excess + 1e-30)  # ‖y − A(x̂_0)‖ for Gaussian noise
                (grad,) = torch.autograd.grad(r.sum(), x_in)
            x0 = x0.detach()
            if t_prev >= 0:
                c1 = beta * math.sqrt(ab_prev) / (1 - ab)
                c2 = (1 - ab_prev) * math.sqrt(alpha) / (1 - ab)
                log_var = self._log_variance(beta, ab, ab_prev, v)
                x_prime = c1 * x0 + c2 * x.detach() + torch.exp(0.5 * log_var) * randn(x_shape, generator, dt, y.device)
            else:
                x_prime = x0  # at t = 0: c1 = 1, c2 = 0, no noise
            x = (x_prime - self.zeta * grad).detach()
            emit({"i": i, "t": t, "x_t": x, "x0": x0, "residual": r.detach()})
        return x

    @staticmethod
    def _log_variance(beta, ab, ab_prev, v):
        """log σ_t²: learned range ``f log β_t + (1−f) log β̃_t`` (``f = (v+1)/2``) or ``log β̃_t``.

        Only called for ``t_{i−1} ≥ 0``, where ``β̃_t = β_t (1−ᾱ_{t−1})/(1−ᾱ_t) > 0``; the last
        step (to ``t = −1``) adds no noise, which is why the reference's clip of ``β̃_0`` never
        matters here.
        """
        log_bt = math.log(beta * (1 - ab_prev) / (1 - ab))
        if v is None:
            return torch.tensor(log_bt)
        f = (v.detach() + 1) / 2
        return f * math.log(beta) + (1 - f) * log_bt
