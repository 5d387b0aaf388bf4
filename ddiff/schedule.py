"""The variance-preserving (DDPM) diffusion schedule and its respacing.

Room: ``ddiff`` — pure torch; imports nothing from storage, flows, prefect, zarr or xarray.

Conventions (``ddiff_algorithm.md`` § Conventions): ``T = 1000`` steps, ``β_t`` linear from
``1e-4`` to ``0.02`` built in float64, ``ᾱ_t = ∏_{s≤t} (1 − β_s)`` and
``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε``. Step indices are the *original* integers ``0 … T−1``
(0 = least noisy); a respaced run visits a decreasing subsequence of them and every formula uses
``ᾱ`` of the original steps it visits. ``ᾱ_{−1} := 1`` (the clean end).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["VPSchedule"]


@dataclass(frozen=True)
class VPSchedule:
    """Linear-β VP schedule. ``alpha_bar`` is float64, shape ``(T,)``.

    >>> s = VPSchedule()
    >>> round(float(s.alpha_bar[-1]), 9)  # ᾱ_999 ≈ 4.036e-5 (baselines_spec §1.4)
    4.0358e-05
    """

    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ValueError(f"VPSchedule: T must be >= 1, got {self.T}")
        if not (0 < self.beta_start <= self.beta_end < 1):
            raise ValueError(
                f"VPSchedule: need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )

    @property
    def betas(self) -> torch.Tensor:
        return torch.linspace(self.beta_start, self.beta_end, self.T, dtype=torch.float64)

    @property
    def alpha_bar(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    def abar(self, t: int) -> float:
        """``ᾱ_t`` as a Python float; ``t = −1`` gives 1 (the clean end)."""
        if t < 0:
            return 1.0
        if t >= self.T:
            raise ValueError(f"timestep {t} outside 0..{self.T - 1}")
        return float(self.alpha_bar[t])

    def abar_at(self, t: torch.Tensor) -> torch.Tensor:
        """``ᾱ`` at (possibly fractional) original indices ``t`` (float64 tensor, any shape).

        Integer ``t`` reads the table; fractional ``t`` interpolates ``log ᾱ`` linearly between
        neighbouring steps (VE-style samplers such as DAPS query fractional steps).
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        if (t < 0).any() or (t > self.T - 1).any():
            raise ValueError(f"timesteps must lie in [0, {self.T - 1}]")
        log_ab = torch.log(self.alpha_bar).to(t.device)
        lo = t.floor().long().clamp(max=self.T - 1)
        hi = (lo + 1).clamp(max=self.T - 1)
        w = t - lo.to(t.dtype)
        return torch.exp((1 - w) * log_ab[lo] + w * log_ab[hi])

    def sigma_bar(self, t: int) -> float:
        """Equivalent VE noise level ``σ̄_t = √((1 − ᾱ_t)/ᾱ_t)``."""
        a = self.abar(t)
        return math.sqrt((1.0 - a) / a)

    def respace(self, steps: int) -> list[int]:
        """The decreasing original indices ``t_N > … > t_1`` visited by an ``steps``-step run.

        Evenly spaced over ``[T−1, 0]`` and always containing both ends, so ``steps = T`` is the
        identity ``999, 998, …, 0``. Raises ``ValueError`` for ``steps < 1`` or ``> T``.
        """
        if not isinstance(steps, int) or isinstance(steps, bool):
            raise ValueError(f"steps must be an integer, got {steps!r}")
        if steps < 1 or steps > self.T:
            raise ValueError(f"steps must be in 1..{self.T}, got {steps}")
        if steps == 1:
            return [self.T - 1]
        ts = torch.linspace(self.T - 1, 0, steps, dtype=torch.float64).round().long().tolist()
        return ts

    def timestep_for_sigma(self, sigma: float) -> float:
        """Fractional VP index whose ``σ̄`` equals ``sigma`` (for VE-parameterised samplers).

        Uses the continuous VP relation of DAPS' preconditioning (β_min 0.1, β_d 19.9, M = 1000),
        ``t(σ) = (√(β_min² + 2 β_d ln(1+σ²)) − β_min)/β_d`` and returns ``(T−1)·t(σ)``
        (``baselines_spec.md`` §1.5).
        """
        bmin, bd = 0.1, 19.9
        t = (math.sqrt(bmin**2 + 2 * bd * math.log1p(sigma**2)) - bmin) / bd
        return (self.T - 1) * t
