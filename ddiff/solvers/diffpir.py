"""DiffPIR — Denoising Diffusion Models for Plug-and-Play Image Restoration (Zhu et al., 2023).

Room: ``ddiff`` — pure torch.

Over the ``quad`` timestep sequence ``t_0 = 999 > … > t_{N−1} = 0`` (``baselines_spec.md`` §4):

    x̂_0 = clip(x̂_0(x_t), −1, 1)                                  denoise, 1 NFE
    x̂_0 ← argmin_x ‖y − A x‖² + ρ_t ‖x − x̂_0‖²,   ρ_t = λ σ_n² / σ̄_t²     data step
    ε̂  = (x_t − √ᾱ_t x̂_0)/√(1 − ᾱ_t)
    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'}) (√(1−ζ) ε̂ + √ζ ε)                    re-noise (η = 0)

``σ_n`` is DiffPIR's noise level in ``[0, 1]`` units, i.e. half the model-space ``σ_y``
(floored at 0.001 as the reference does); ``ρ_t`` is dimensionless, so the data step can run in
model space unchanged. The data step is, in order of preference:

1. the operator's closed form ``solve_regularized(y, z, ρ)`` when it offers one (e.g. inpainting);
2. for other linear operators, ``cg_iters`` conjugate-gradient iterations on
   ``(AᴴA + ρ I) x = Aᴴ y + ρ z`` (exact in the limit; the reference's FFT closed form assumes
   circular blur boundaries, which the DPS/DAPS reflect-padded operators do not have);
3. for nonlinear operators, ``grad_steps`` gradient steps with per-sample backtracking.

Each step records which one it used under ``"data_step"`` in the trace. The reference evaluates the
network once more at ``t = 0`` and discards it; we skip that call, so NFE = N − 1, and return the
state ``x`` at ``t = 0`` as the reference does.
"""
from __future__ import annotations

import math

import torch

from .base import Solver, check_int, check_positive, per_sample_norm, randn, rdot, real_part

__all__ = ["DiffPIR", "quad_timesteps"]


def quad_timesteps(n: int, T: int = 1000) -> list[int]:
    """DiffPIR's ``skip_type='quad'`` sequence: ``t_k = T−1 − int(√(linspace(0, T², n))_k)``,
    the last offset reduced by one so it ends at 0 (N = 20: 999, 770, 675, …, 26, 0)."""
    check_int("DiffPIR steps", n, 2)
    s = [int(v) for v in torch.sqrt(torch.linspace(0, float(T) ** 2, n, dtype=torch.float64)).tolist()]
    s[-1] -= 1
    return [T - 1 - v for v in s]




class DiffPIR(Solver):
    """DiffPIR with ``lambda_`` (λ), ``zeta`` (ζ) and ``steps`` (N, the quad sequence length)."""

    TASKS = {
        "gaussian_blur": dict(steps=100, lambda_=7.0, zeta=0.3),
        "motion_blur": dict(steps=100, lambda_=7.0, zeta=0.3),
        # the reference sweeps λ = 2…12 for ×4 SR and has no single default; 7 is our midpoint
        "super_resolution": dict(steps=100, lambda_=7.0, zeta=0.25),
        "inpainting_random": dict(steps=20, lambda_=1.0, zeta=1.0),
        "inpainting_box": dict(steps=20, lambda_=1.0, zeta=1.0),
    }

    def __init__(self, prior, steps: int = 100, lambda_: float = 7.0, zeta: float = 0.3,
                 cg_iters: int = 10, grad_steps: int = 5):
        super().__init__(prior)
        self.timesteps = quad_timesteps(steps, prior.schedule.T)
        self.steps = steps
        self.lambda_ = check_positive("lambda_", lambda_)
        self.zeta = float(zeta)
        if not 0 <= self.zeta <= 1:
            raise ValueError(f"zeta must lie in [0, 1], got {zeta}")
        self.cg_iters, self.grad_steps = int(cg_iters), int(grad_steps)

    @classmethod
    def reference(cls, task: str) -> dict:
        """The reference's effective per-task settings (``baselines_spec.md`` §4.6)."""
        if task not in cls.TASKS:
            raise ValueError(f"no DiffPIR reference setting for {task!r}; known: {', '.join(cls.TASKS)}")
        return dict(cls.TASKS[task])

    def data_step(self, operator, y, z, rho):
        """``argmin_x ‖y − A x‖² + ρ ‖x − z‖²`` per sample; returns ``(x, method)``."""
        if hasattr(operator, "solve_regularized"):
            return operator.solve_regularized(y, z, rho), "closed_form"
        if getattr(operator, "linear", False):
            return self._cg(operator, y, z, rho), f"cg{self.cg_iters}"
        return self._gradient_steps(operator, y, z, rho), f"grad{self.grad_steps}"

    def _cg(self, operator, y, z, rho):
        def normal(v):  # (AᴴA + ρI) v
            return real_part(operator.adjoint(operator(v))) + rho * v

        x = z.clone()
        r = real_part(operator.adjoint(y)) + rho * z - normal(x)
        p, rs = r.clone(), rdot(r, r)
        for _ in range(self.cg_iters):
            Ap = normal(p)
            alpha = rs / rdot(p, Ap).clamp_min(1e-30)
            x, r = x + alpha * p, r - alpha * Ap
            rs_new = rdot(r, r)
            p, rs = r + (rs_new / rs.clamp_min(1e-30)) * p, rs_new
        return x

    def _gradient_steps(self, operator, y, z, rho):
        def objective(v):
            d = y - operator(v)
            d2 = (d.real**2 + d.imag**2) if d.is_complex() else d**2
            return d2.reshape(d.shape[0], -1).sum(1) + rho * ((v - z) ** 2).reshape(v.shape[0], -1).sum(1)

        x = z.clone()
        eta = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(self.grad_steps):
            with torch.enable_grad():
                xv = x.detach().requires_grad_(True)
                f = objective(xv)
                (g,) = torch.autograd.grad(f.sum(), xv)
            f = f.detach()
            for _ in range(30):  # backtracking (Armijo), per sample
                cand = x - eta.view(-1, 1, 1, 1) * g
                ok = objective(cand) <= f - 0.5 * eta * (g**2).reshape(g.shape[0], -1).sum(1)
                if ok.all():
                    break
                eta = torch.where(ok, eta, eta / 2)
            x = cand
            eta = eta * 2
        return x

    def _run(self, net, y, operator, noise, x_shape, generator, emit):
        if not getattr(noise, "quadratic", False):
            raise ValueError(f"DiffPIR's data step is a least-squares proximal step (Gaussian noise); it cannot use "
                             f"{type(noise).__name__}'s likelihood — use DDiff, whose data step takes any noise model")
        sched, dt = net.schedule, y.real.dtype if y.is_complex() else y.dtype
        sigma_n = max(0.001, noise.effective_sigma(y) / 2)  # DiffPIR's [0,1]-unit noise level
        ts = self.timesteps
        # x_T = √ᾱ_T x_init + √(1−ᾱ_T) ε with x_init = Aᴴy for linear operators (weight ≈ 0.006)
        x_init = real_part(operator.adjoint(y)).clamp(-1, 1) if getattr(operator, "linear", False) else 0.0
        x = math.sqrt(sched.abar(ts[0])) * x_init + math.sqrt(1 - sched.abar(ts[0])) * randn(x_shape, generator, dt, y.device)
        for k, t in enumerate(ts[:-1]):  # the reference's last NFE (at t = 0) is unused: skipped
            t_next = ts[k + 1]
            ab, ab_next = sched.abar(t), sched.abar(t_next)
            x0 = net.x0(x, t)  # denoise
            rho = self.lambda_ * sigma_n**2 / sched.sigma_bar(t) ** 2
            x0, method = self.data_step(operator, y, x0, rho)  # data step
            eps_hat = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
            fresh = randn(x_shape, generator, dt, y.device) if self.zeta > 0 else 0.0
            x = math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next) * (
                math.sqrt(1 - self.zeta) * eps_hat + math.sqrt(self.zeta) * fresh
            )
            emit({"i": k, "t": t, "rho": rho, "data_step": method, "x0": x0, "x_t": x,
                  "step_norm": per_sample_norm(x0).flatten()})
        return x
