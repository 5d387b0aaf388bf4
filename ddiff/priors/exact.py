"""Exact priors: Gaussian and Gaussian-mixture densities with closed-form scores and posteriors.

Room: ``ddiff`` — pure torch.

For a prior ``x_0 ~ N(μ, Σ)`` and the VP forward process ``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε``, the
noised marginal is ``p_t = N(√ᾱ_t μ, S_t)`` with ``S_t = ᾱ_t Σ + (1−ᾱ_t) I``, so the ideal noise
predictor is exact:

    ε*(x_t, t) = −√(1−ᾱ_t) ∇ log p_t(x_t) = √(1−ᾱ_t) S_t⁻¹ (x_t − √ᾱ_t μ).

A mixture ``Σ_k w_k N(μ_k, Σ_k)`` noises component-wise; its score is the responsibility-weighted
sum of the component scores. With one eigendecomposition ``Σ_k = V diag(λ) Vᵀ`` per component,
``S_t⁻¹ = V diag(1/(ᾱ λ + 1 − ᾱ)) Vᵀ`` at every step for the price of two matrix products.

For a *linear* operator (as a matrix ``A``, ``m × n``) and Gaussian noise ``σ``, the posterior of a
Gaussian prior is Gaussian with

    mean = μ + Σ Aᵀ (A Σ Aᵀ + σ² I)⁻¹ (y − A μ),   cov = Σ − Σ Aᵀ (A Σ Aᵀ + σ² I)⁻¹ A Σ,

and that of a mixture is the mixture of the component posteriors with weights
``∝ w_k N(y; A μ_k, A Σ_k Aᵀ + σ² I)`` (the per-component responsibilities).

Images have shape ``(C, H, W)``; ``n = C·H·W``. All linear algebra runs in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schedule import VPSchedule
from .base import Prior, timestep_tensor

__all__ = [
    "GaussianPrior",
    "GMMPrior",
    "GaussianPosterior",
    "GMMPosterior",
    "operator_matrix",
    "se_covariance",
]


def _check_cov(cov: torch.Tensor, n: int, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    if cov.shape != (n, n):
        raise ValueError(f"{who}: covariance must have shape ({n}, {n}) for n = C·H·W, got {tuple(cov.shape)}")
    cov = cov.to(torch.float64)
    if not torch.isfinite(cov).all():
        raise ValueError(f"{who}: covariance contains NaN or Inf")
    if not torch.allclose(cov, cov.T, atol=1e-10 * float(cov.abs().max()) + 1e-12):
        raise ValueError(f"{who}: covariance must be symmetric")
    lam, V = torch.linalg.eigh(cov)
    if lam.min() < -1e-8 * max(float(lam.max()), 1e-12):
        raise ValueError(f"{who}: covariance must be positive semi-definite (min eigenvalue {float(lam.min()):.3g})")
    return lam.clamp_min(0), V


def se_covariance(shape: tuple[int, int, int], std: float, length: float) -> torch.Tensor:
    """Squared-exponential covariance over a ``(C, H, W)`` grid, channels independent.

    ``k(p, q) = std² exp(−‖p − q‖² / (2 length²))`` between pixels ``p, q`` of the same channel.
    Returns ``(n, n)`` float64.
    """
    C, H, W = shape
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    pts = torch.stack([yy.flatten(), xx.flatten()], 1)
    d2 = torch.cdist(pts, pts) ** 2
    k = std**2 * torch.exp(-d2 / (2 * length**2))
    return torch.block_diag(*([k] * C))


class _Component:
    """One Gaussian ``N(μ, V diag(λ) Vᵀ)`` in flattened coordinates (float64)."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, who: str):
        self.mean = mean.reshape(-1).to(torch.float64)
        self.cov = cov.to(torch.float64)
        self.lam, self.V = _check_cov(cov, self.mean.numel(), who)

    def noised_terms(self, x: torch.Tensor, abar: torch.Tensor):
        """For flattened ``x`` ``(B, n)`` and ``ᾱ`` ``(B, 1)``: ``S_t⁻¹ d`` and ``log N(x; √ᾱ μ, S_t)``."""
        d = x - abar.sqrt() * self.mean
        c = d @ self.V  # coordinates in the eigenbasis
        s = abar * self.lam + (1 - abar)  # eigenvalues of S_t, (B, n)
        sinv_d = (c / s) @ self.V.T
        n = x.shape[1]
        logp = -0.5 * ((c**2 / s).sum(1) + torch.log(s).sum(1) + n * math.log(2 * math.pi))
        return sinv_d, logp


class _ExactPrior(Prior):
    def __init__(self, shape, components, log_weights, schedule):
        super().__init__(schedule)
        self.shape = tuple(int(v) for v in shape)
        self.channels = self.shape[0]
        self._components = components
        self._log_w = log_weights

    def _flatten(self, x_t: torch.Tensor) -> torch.Tensor:
        self.check_input(x_t)
        if tuple(x_t.shape[1:]) != self.shape:
            raise ValueError(f"prior is defined on images of shape {self.shape}, got {tuple(x_t.shape[1:])}")
        return x_t.reshape(x_t.shape[0], -1).to(torch.float64)

    def score(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """``∇ log p_t(x_t)``, same shape as ``x_t``."""
        x = self._flatten(x_t)
        abar = self.schedule.abar_at(timestep_tensor(t, x.shape[0], "cpu")).to(x.device).view(-1, 1)
        terms = [c.noised_terms(x, abar) for c in self._components]
        logits = torch.stack([lw + lp for lw, (_, lp) in zip(self._log_w, terms)], 1)
        r = torch.softmax(logits, dim=1)  # responsibilities (B, K)
        g = -sum(r[:, k : k + 1] * terms[k][0] for k in range(len(terms)))
        return g.reshape(x_t.shape).to(x_t.dtype)

    def log_density(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """``log p_t(x_t)`` per sample ``(B,)`` (float64)."""
        x = self._flatten(x_t)
        abar = self.schedule.abar_at(timestep_tensor(t, x.shape[0], "cpu")).to(x.device).view(-1, 1)
        logits = torch.stack([lw + c.noised_terms(x, abar)[1] for lw, c in zip(self._log_w, self._components)], 1)
        return torch.logsumexp(logits, 1)

    def eps(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Exact ``ε*(x_t, t) = −√(1−ᾱ_t) ∇ log p_t(x_t)``."""
        abar = self.schedule.abar_at(timestep_tensor(t, x_t.shape[0], "cpu")).view(-1, 1, 1, 1)
        return (-(1 - abar).sqrt().to(x_t) * self.score(x_t, t))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact draws from the prior, ``(n, C, H, W)`` float64."""
        k = torch.multinomial(torch.softmax(torch.stack(list(self._log_w)), 0), n, replacement=True, generator=generator)
        out = torch.empty(n, math.prod(self.shape), dtype=torch.float64)
        for i, c in enumerate(self._components):
            idx = (k == i).nonzero().flatten()
            if idx.numel():
                z = torch.randn(idx.numel(), c.lam.numel(), generator=generator, dtype=torch.float64)
                out[idx] = c.mean + (z * c.lam.sqrt()) @ c.V.T
        return out.reshape(n, *self.shape)


class GaussianPrior(_ExactPrior):
    """``x_0 ~ N(mean, cov)``; ``mean`` ``(C, H, W)``, ``cov`` ``(n, n)`` with ``n = C·H·W``."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, schedule: VPSchedule | None = None):
        if mean.ndim != 3:
            raise ValueError(f"GaussianPrior: mean must have shape (C, H, W), got {tuple(mean.shape)}")
        comp = _Component(mean, cov, "GaussianPrior")
        super().__init__(mean.shape, [comp], [torch.tensor(0.0, dtype=torch.float64)], schedule)
        self.mean, self.cov = comp.mean.reshape(mean.shape), comp.cov

    def posterior(self, y: torch.Tensor, A: torch.Tensor, sigma: float) -> "GaussianPosterior":
        """Exact posterior for ``y = A x + σ n`` with ``A`` an ``(m, n)`` matrix and ``y`` ``(B, m)``."""
        return GaussianPosterior.of(self._components[0], y, A, sigma, self.shape)


class GMMPrior(_ExactPrior):
    """``x_0 ~ Σ_k w_k N(means[k], covs[k])``; shapes ``(K,)``, ``(K, C, H, W)``, ``(K, n, n)``."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, schedule: VPSchedule | None = None):
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.ndim != 1 or means.ndim != 4 or covs.ndim != 3 or not (len(weights) == len(means) == len(covs)):
            raise ValueError(
                "GMMPrior: expected weights (K,), means (K, C, H, W), covs (K, n, n); got "
                f"{tuple(weights.shape)}, {tuple(means.shape)}, {tuple(covs.shape)}"
            )
        if (weights <= 0).any() or not torch.isfinite(weights).all():
            raise ValueError("GMMPrior: weights must be positive and finite")
        comps = [_Component(m, c, f"GMMPrior component {k}") for k, (m, c) in enumerate(zip(means, covs))]
        log_w = list(torch.log(weights / weights.sum()))
        super().__init__(means.shape[1:], comps, log_w, schedule)
        self.weights = weights / weights.sum()

    def posterior(self, y: torch.Tensor, A: torch.Tensor, sigma: float) -> "GMMPosterior":
        """Exact mixture posterior for ``y = A x + σ n`` (``A`` ``(m, n)``, ``y`` ``(B, m)``)."""
        parts = [GaussianPosterior.of(c, y, A, sigma, self.shape) for c in self._components]
        log_r = torch.stack([lw + p.log_evidence for lw, p in zip(self._log_w, parts)], 1)
        return GMMPosterior(parts, torch.softmax(log_r, 1), self.shape)


@dataclass
class GaussianPosterior:
    """Posterior ``N(mean, cov)`` per measurement: ``mean`` ``(B, C, H, W)``, ``cov`` ``(n, n)``
    (shared: it does not depend on ``y``), ``log_evidence`` ``log N(y; Aμ, AΣAᵀ + σ²I)`` ``(B,)``."""

    mean: torch.Tensor
    cov: torch.Tensor
    log_evidence: torch.Tensor

    @classmethod
    def of(cls, comp: _Component, y: torch.Tensor, A: torch.Tensor, sigma: float, shape) -> "GaussianPosterior":
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        A = A.to(torch.float64)
        y = y.reshape(y.shape[0], -1).to(torch.float64)
        if A.shape[1] != comp.mean.numel() or y.shape[1] != A.shape[0]:
            raise ValueError(f"shapes do not match: A {tuple(A.shape)}, y {tuple(y.shape)}, n = {comp.mean.numel()}")
        SAt = comp.cov @ A.T  # (n, m)
        G = A @ SAt + sigma**2 * torch.eye(A.shape[0], dtype=torch.float64)  # (m, m)
        L = torch.linalg.cholesky(G)
        resid = y - comp.mean @ A.T  # (B, m)
        sol = torch.cholesky_solve(resid.T, L)  # G⁻¹ (y − Aμ), (m, B)
        mean = comp.mean + (SAt @ sol).T
        cov = comp.cov - SAt @ torch.cholesky_solve(SAt.T, L)
        cov = 0.5 * (cov + cov.T)
        logdet = 2 * torch.log(torch.diagonal(L)).sum()
        log_ev = -0.5 * ((resid * sol.T).sum(1) + logdet + A.shape[0] * math.log(2 * math.pi))
        return cls(mean.reshape(-1, *shape), cov, log_ev)

    @property
    def map(self) -> torch.Tensor:
        """For a Gaussian posterior the MAP equals the mean."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One exact posterior draw per measurement, ``(B, C, H, W)``."""
        lam, V = torch.linalg.eigh(self.cov)
        z = torch.randn(self.mean.shape[0], lam.numel(), generator=generator, dtype=torch.float64)
        return self.mean + ((z * lam.clamp_min(0).sqrt()) @ V.T).reshape(self.mean.shape)


@dataclass
class GMMPosterior:
    """Mixture posterior: component posteriors and responsibilities ``(B, K)``."""

    components: list[GaussianPosterior]
    responsibilities: torch.Tensor
    shape: tuple

    @property
    def mean(self) -> torch.Tensor:
        r = self.responsibilities
        return sum(r[:, k].view(-1, 1, 1, 1) * p.mean for k, p in enumerate(self.components))

    @property
    def dominant(self) -> torch.Tensor:
        """Index of the most probable component per measurement ``(B,)``."""
        return self.responsibilities.argmax(1)

    def component_of(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the component posterior whose mean is nearest (ℓ2) to each ``x``, ``(B,)``.

        Meant for well-separated modes; a Mahalanobis rule would weigh the near-singular
        directions of the component posteriors by noise-level eigenvalues.
        """
        xs = x.reshape(x.shape[0], -1).to(torch.float64)
        d = torch.stack([(xs - p.mean.reshape(xs.shape[0], -1)).norm(dim=1) for p in self.components], 1)
        return d.argmin(1)


def operator_matrix(operator, shape: tuple[int, int, int], chunk: int = 256) -> torch.Tensor:
    """Dense matrix ``(m, n)`` of a *linear* forward model on ``(C, H, W)`` images (float64).

    Built column by column by applying ``A`` to the standard basis, ``chunk`` columns at a time;
    complex outputs are split into stacked real and imaginary rows. Meant for the small images of
    exact tests (n ≤ a few thousand).
    """
    n = math.prod(shape)
    cols = []
    for s in range(0, n, chunk):
        e = torch.zeros(min(chunk, n - s), n, dtype=torch.float64)
        e[torch.arange(e.shape[0]), torch.arange(s, s + e.shape[0])] = 1.0
        out = operator(e.reshape(-1, *shape))
        out = out.reshape(out.shape[0], -1)
        if out.is_complex():
            out = torch.cat([out.real, out.imag], 1)
        cols.append(out.to(torch.float64))
    return torch.cat(cols, 0).T.contiguous()
