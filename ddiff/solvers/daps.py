"""DAPS — Decoupled Annealing Posterior Sampling (Zhang et al., CVPR 2025), pixel "DAPS-1K".

Room: ``ddiff`` — pure torch.

In the VE view ``x_σ = x_0 + σ n`` with the VP network behind the denoiser
``D(x; σ) = x − σ ε_θ(x/√(1+σ²), t(σ))`` (unclipped; ``t(σ)`` the fractional VP step, §1.5),
for the annealing levels ``σ_0 = 100 > … > σ_{N−1} > σ_N = 0`` (EDM poly-7, §5.2, main branch):

    x ← σ_0 n
    for i: x̂_0 = Euler PF-ODE from σ_i to σ_min (N_ode steps, dx/dσ = (x − D(x;σ))/σ)   N_ode NFE
           x_0y = K Langevin steps from x̂_0 on
                  s(x) = −∇‖A(x) − y‖²/τ² + (x̂_0 − x)/σ_i²,  x ← x + η s(x) + √(2η) ε
           x ← x_0y + σ_{i+1} n

with ``η = lr (1 + (i/(N+1))(lr_min_ratio − 1))``. DAPS-1K: N = 200, N_ode = 5 (1000 NFE),
τ = 0.01; per-task K and lr from ``baselines_spec.md`` §5.5. No network gradients are taken.
For non-Gaussian noise the data term generalises to ``2 σ_eff² nll(y, A(x))/τ²``. A sample whose
Langevin chain turns non-finite is reset to zeros and stays there for the rest of that annealing
step (the reference's early stop on NaN, per sample), and is reported in the trace (``reset``).
"""
from __future__ import annotations

import math

import torch

from .base import Solver, check_int, check_positive, randn

__all__ = ["DAPS", "poly_sigmas"]


def poly_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> list[float]:
    """EDM's poly-ρ levels ``(σmax^{1/ρ} + r (σmin^{1/ρ} − σmax^{1/ρ}))^ρ`` for ``r = linspace(0,1,n)``."""
    r = torch.linspace(0, 1, n, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return ((a + r * (b - a)) ** rho).tolist()


class DAPS(Solver):
    """DAPS with ``annealing_steps`` × ``ode_steps`` NFE and ``mcmc_steps`` Langevin steps each."""

    TASKS = {  # main branch, group `pixel` (K, lr)
        "super_resolution": (100, 1e-4), "gaussian_blur": (100, 1e-4), "motion_blur": (100, 5e-5),
        "inpainting_box": (100, 5e-5), "inpainting_random": (100, 1e-4), "phase_retrieval": (100, 5e-5),
        "nonlinear_blur": (200, 1e-5), "hdr": (100, 2e-5),
    }

    def __init__(self, prior, annealing_steps: int = 200, ode_steps: int = 5, mcmc_steps: int = 100,
                 lr: float = 1e-4, lr_min_ratio: float = 0.01, tau: float = 0.01,
                 sigma_max: float = 100.0, sigma_min: float = 0.1, sigma_min_ode: float = 0.01):
        super().__init__(prior)
        self.annealing_steps = check_int("annealing_steps", annealing_steps, 1)
        self.ode_steps = check_int("ode_steps", ode_steps, 1)
        self.mcmc_steps = check_int("mcmc_steps", mcmc_steps, 0)
        self.lr = check_positive("lr", lr)
        self.lr_min_ratio = check_positive("lr_min_ratio", lr_min_ratio)
        self.tau = check_positive("tau", tau)
        self.sigma_max, self.sigma_min = check_positive("sigma_max", sigma_max), check_positive("sigma_min", sigma_min)
        self.sigma_min_ode = check_positive("sigma_min_ode", sigma_min_ode)

    @classmethod
    def reference(cls, task: str) -> dict:
        """DAPS-1K settings of the reference's pixel configs for one of the paper's tasks."""
        if task not in cls.TASKS:
            raise ValueError(f"no DAPS reference setting for {task!r}; known: {', '.join(cls.TASKS)}")
        k, lr = cls.TASKS[task]
        return dict(annealing_steps=200, ode_steps=5, mcmc_steps=k, lr=lr, lr_min_ratio=0.01, tau=0.01)

    def denoise(self, net, x, sigma: float):
        """``D(x; σ) = x − σ ε_θ(x/√(1+σ²), t(σ))`` — one NFE, not clipped."""
        t = net.schedule.timestep_for_sigma(sigma)
        return x - sigma * net.eps(x / math.sqrt(1 + sigma**2), t)

    @staticmethod
    def _reset_diverged(xm: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
        """Mark the chains of ``xm`` ``(B, C, H, W)`` that turned non-finite (or were already marked in
        ``bad`` ``(B,)``) and set them to zeros in place — the reference's early stop on NaN, per
        sample, checked after every Langevin step so that the operator never sees a non-finite
        input. Returns the updated ``bad``."""
        bad = bad | ~torch.isfinite(xm.reshape(xm.shape[0], -1)).all(1)
        if bad.any():
            xm[bad] = 0.0
        return bad

    def _run(self, net, y, operator, noise, x_shape, generator, emit):
        dt = y.real.dtype if y.is_complex() else y.dtype
        N = self.annealing_steps
        sigmas = poly_sigmas(self.sigma_max, self.sigma_min, N + 1)[:N] + [0.0]
        data_weight = 2 * noise.effective_sigma(y) ** 2 / self.tau**2  # ‖A x − y‖²/τ² for Gaussian noise
        x = self.sigma_max * randn(x_shape, generator, dt, y.device)
        for i in range(N):
            sigma = sigmas[i]
            # prior step: Euler PF-ODE from σ_i down to σ_min_ode
            x0 = x
            grid = poly_sigmas(sigma, self.sigma_min_ode, self.ode_steps + 1)
            for s_a, s_b in zip(grid[:-1], grid[1:]):
                x0 = x0 + (s_b - s_a) * (x0 - self.denoise(net, x0, s_a)) / s_a
            # Langevin MCMC on p(x0 | x_σ, y) ∝ exp(−data(x)) N(x; x̂0, σ_i² I)
            eta = self.lr * (1 + (i / (N + 1)) * (self.lr_min_ratio - 1))
            xm = x0.clone()
            bad = self._reset_diverged(xm, torch.zeros(xm.shape[0], dtype=torch.bool, device=xm.device))
            for _ in range(self.mcmc_steps):
                with torch.enable_grad():
                    xv = xm.detach().requires_grad_(True)
                    (g,) = torch.autograd.grad((data_weight * noise.nll(y, operator(xv))).sum(), xv)
                score = -g + (x0 - xm) / sigma**2
                xm = xm + eta * score + math.sqrt(2 * eta) * randn(x_shape, generator, dt, y.device)
                bad = self._reset_diverged(xm, bad)
            x = xm + sigmas[i + 1] * randn(x_shape, generator, dt, y.device) if sigmas[i + 1] > 0 else xm
            emit({"i": i, "sigma": sigma, "lr": eta, "x0hat": x0, "x0y": xm, "reset": int(bad.sum())})
        return x
