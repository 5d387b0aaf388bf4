"""Measurement noise models: sampling and the exact negative log-likelihood.

Room: ``operators`` — torch only.

Every noise model has

* ``sample(clean, generator=None)`` — a noisy measurement of ``clean = A(x)``;
* ``nll(y, Ax)`` — the exact negative log-likelihood ``−log p(y | Ax)``, **summed per sample**,
  shape ``(B,)``, differentiable in ``Ax`` (solvers take ``∇_x nll(y, A(x))`` by autograd through
  the forward model only);
* ``validate(y)`` — raises ``ValueError`` for measurements the model cannot have produced;
* ``effective_sigma(y)`` — a Gaussian-equivalent standard deviation (solvers that need a noise
  level, e.g. DiffPIR's ρ_t, use it).
* ``discrepancy(y, Ax)`` — a goodness-of-fit statistic per sample whose expectation at the truth is
  ``m``, the number of real measurement values (``‖y − Ax‖²/σ²``; Pearson χ² for photon counts).
  DDiff's self-calibrated x-update stops there (the discrepancy principle).

Complex measurements (e.g. MRI k-space) are circular complex Gaussian: real and imaginary parts
each have variance σ².

Photon-counting models (``PoissonNoise``, ``PoissonGaussianNoise``) use these units: ``y`` is in
the units of ``A(x)`` and ``gain`` is the number of counts per unit, ``y = k/gain`` with
``k ~ Poisson(λ)``, ``λ = gain·A(x)``. Intensities must be ≥ 0: ``sample`` uses ``max(A(x), 0)``;
``nll`` is exact for ``λ ≥ rate_floor`` counts and, below it, continues as the quadratic that
matches value and slope at the floor with curvature ``max(E[k|y] − Var[k|y], 1)/rate_floor²`` — a
penalty (not a likelihood) whose gradient pushes ``A(x)`` back into the feasible region, so a
solver that strays to ``A(x) ≤ 0`` gets finite values and useful gradients. Map model-space images
to intensities in the forward model (e.g. ``(x + 1)/2 · scale``) so that ``A(x) ≥ 0`` normally.
"""
from __future__ import annotations

import math

import torch

__all__ = ["NoiseModel", "GaussianNoise", "PoissonNoise", "PoissonGaussianNoise"]


def _per_sample_sum(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).sum(dim=1)


def _real_count(y: torch.Tensor) -> int:
    """Number of real degrees of freedom per sample (complex entries count twice)."""
    m = y[0].numel()
    return 2 * m if y.is_complex() else m


class NoiseModel:
    """Base class; see module docstring."""

    def validate(self, y: torch.Tensor) -> None:
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"measurement must be a torch.Tensor, got {type(y).__name__}")
        if y.ndim < 1 or y.shape[0] < 1:
            raise ValueError(f"measurement must have a leading batch dimension, got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("measurement y contains NaN or Inf values; clean or mask them first")

    def sample(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def nll(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def effective_sigma(self, y: torch.Tensor) -> float:
        raise NotImplementedError

    def neutral(self) -> float:
        """The value given to unobserved entries (``operators.Validity``): a zero-signal measurement."""
        return 0.0


class GaussianNoise(NoiseModel):
    """Additive white Gaussian noise ``y = Ax + σ n``, ``σ`` in the units of ``A(x)``.

    ``nll(y, Ax) = ‖y − Ax‖² / (2σ²) + (m/2) log(2πσ²)`` per sample, ``m`` the number of real
    measurement values (the paper's ``ℓ`` plus a constant).
    """

    #: ``nll`` is quadratic in ``A(x)``: solvers may use least-squares methods (CG, CGLS) on it
    quadratic = True

    def __init__(self, sigma: float):
        sigma = float(sigma)
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"GaussianNoise: sigma must be a positive finite number, got {sigma}")
        self.sigma = sigma

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma})"

    def sample(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if clean.is_complex():
            n = torch.complex(
                torch.randn(clean.shape, generator=generator, dtype=clean.real.dtype, device=clean.device),
                torch.randn(clean.shape, generator=generator, dtype=clean.real.dtype, device=clean.device),
            )
        else:
            n = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device)
        return clean + self.sigma * n

    def nll(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        r = y - Ax
        sq = r.real**2 + r.imag**2 if r.is_complex() else r**2
        m = _real_count(y)
        return _per_sample_sum(sq) / (2 * self.sigma**2) + 0.5 * m * math.log(2 * math.pi * self.sigma**2)

    def effective_sigma(self, y: torch.Tensor | None = None) -> float:
        return self.sigma

    def discrepancy(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        """``‖y − A x‖² / σ²`` per sample — expectation ``m`` (real values) at the truth."""
        r = y - Ax
        return _per_sample_sum(r.real**2 + r.imag**2 if r.is_complex() else r**2) / self.sigma**2


# ----------------------------------------------------------------------------------------------
# Photon counting
# ----------------------------------------------------------------------------------------------
def _check_positive(name: str, value: float, who: str) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{who}: {name} must be a positive finite number, got {value}")
    return value


def _continued(f_c: torch.Tensor, g_c: torch.Tensor, curv: torch.Tensor, lam: torch.Tensor, lam_c: torch.Tensor,
               floor: float) -> torch.Tensor:
    """Per-entry nll from its value ``f_c`` and slope ``g_c`` at ``λ_c = max(λ, floor)`` (detached).

    ``f_c + g_c (λ − λ_c) + ½ curv · min(λ − floor, 0)²``: where ``λ ≥ floor`` the value is ``f(λ)``
    and autograd gives the slope ``g(λ)`` (``λ − λ_c`` is 0 with derivative 1); below the floor it is
    the quadratic continuation described in the module docstring.
    """
    below = torch.clamp(lam - floor, max=0.0)
    return f_c + g_c * (lam - lam_c) + 0.5 * curv * below * below


class PoissonNoise(NoiseModel):
    """Shot noise: ``y = k/gain``, ``k ~ Poisson(gain·A(x))`` (see module docstring for units).

    ``nll(y, Ax) = Σ [λ − k log λ + log k!]`` per sample with ``k = gain·y`` (rounded),
    ``λ = gain·Ax`` — the exact ``−log P(k)``, constants included — for ``λ ≥ rate_floor``.
    ``y`` must be real, ``≥ 0`` and a multiple of ``1/gain`` (``validate``; ``nll`` rejects negative
    counts too). ``effective_sigma(y) = sqrt(mean(y)/gain)``, the Gaussian-equivalent std.
    """

    def __init__(self, gain: float = 1.0, rate_floor: float = 1e-3):
        self.gain = _check_positive("gain", gain, "PoissonNoise")
        self.rate_floor = _check_positive("rate_floor", rate_floor, "PoissonNoise")

    def __repr__(self) -> str:
        return f"PoissonNoise(gain={self.gain})"

    def counts(self, y: torch.Tensor) -> torch.Tensor:
        """``k = round(gain·y)``; ``ValueError`` for negative counts."""
        k = torch.round(y * self.gain)
        if (k < 0).any():
            raise ValueError(
                f"{type(self).__name__}: measurement has negative counts (min y = {float(y.min()):.4g}); "
                "Poisson data are >= 0 — subtract no background, or use PoissonGaussianNoise for data with read noise"
            )
        return k

    def validate(self, y: torch.Tensor) -> None:
        super().validate(y)
        if y.is_complex():
            raise ValueError("PoissonNoise: photon counts are real; got a complex measurement")
        k = self.counts(y)
        # y = k/gain is stored in floating point: allow its rounding error (relative to k) on top
        slack = 1e-3 + 4 * torch.finfo(y.dtype).eps * k.abs()
        off = (y * self.gain - k).abs() - slack
        if float(off.max()) > 0:
            raise ValueError(
                f"PoissonNoise: y·gain is not an integer count (off by up to {float((y * self.gain - k).abs().max()):.3g}); "
                f"check gain={self.gain} "
                "(y must be counts/gain) or use PoissonGaussianNoise"
            )

    def sample(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if clean.is_complex():
            raise ValueError("PoissonNoise: cannot draw counts from a complex A(x)")
        rate = (clean.detach().clamp(min=0) * self.gain).to(torch.float64)
        return (torch.poisson(rate, generator=generator) / self.gain).to(clean.dtype)

    def nll(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        if Ax.is_complex() or y.is_complex():
            raise ValueError("PoissonNoise: y and A(x) must be real intensities")
        k = self.counts(y.detach())
        lam = Ax * self.gain
        floor = self.rate_floor
        lam_c = lam.detach().clamp(min=floor)
        f_c = lam_c - k * torch.log(lam_c) + torch.lgamma(k + 1)
        g_c = 1 - k / lam_c
        curv = k.clamp(min=1) / floor**2
        return _per_sample_sum(_continued(f_c, g_c, curv, lam, lam_c, floor))

    def variance(self, Ax: torch.Tensor) -> torch.Tensor:
        """Per-entry variance of ``y`` given ``A(x)`` (units of ``y``²): ``max(A x, floor)/gain``."""
        return Ax.clamp(min=self.rate_floor / self.gain) / self.gain

    def discrepancy(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        """Pearson χ² ``Σ (y − A x)² / Var(y | A x)`` per sample — expectation ``m`` at the truth,
        the photon-counting analogue of ``‖y − A x‖²/σ²`` (used by the discrepancy x-update)."""
        return _per_sample_sum((y - Ax) ** 2 / self.variance(Ax))

    def effective_sigma(self, y: torch.Tensor | None = None) -> float:
        if y is None:
            raise ValueError("PoissonNoise.effective_sigma needs the measurement y (the noise level depends on it)")
        return math.sqrt(max(float(y.detach().clamp(min=0).mean()), 0.0) / self.gain)


class PoissonGaussianNoise(NoiseModel):
    """Shot noise plus Gaussian read noise: ``y = k/gain + σ n``, ``k ~ Poisson(gain·A(x))``, ``n ~ N(0, 1)``.

    ``σ`` is in the units of ``y`` (= units of ``A(x)``). The exact likelihood is the series
    ``p(y) = Σ_{k≥0} Pois(k; λ) N(y; k/gain, σ²)``; ``nll`` evaluates ``−log p`` per entry by a
    log-sum-exp over a window of counts around the posterior mode and sums per sample.

    Truncation and its error bound: the summand ``t_k`` is log-concave in ``k`` (Poisson pmf and a
    Gaussian in ``k`` both are), so its successive ratios are monotone and each omitted tail is at
    most a geometric series, ``Σ_{k>K} t_k ≤ t_K r/(1 − r)`` with ``r = t_{K+1}/t_K < 1`` at the
    upper end (likewise at the lower end). The per-entry error of ``nll`` is therefore at most the
    relative tail mass ``ε = (tails)/Σ_window`` (``log(1+ε) ≤ ε``). The window starts at
    ``±(7.5 s + 6)`` counts around the Gaussian-approximate mode (``s² = λ g²σ²/(λ + g²σ²)``) and
    is doubled, for the entries that need it, until ``ε ≤ tol`` (1e-12) everywhere;
    ``last_truncation_bound`` holds the bound of the latest call, summed per sample. First derivatives in ``A(x)`` are exact
    (``∂nll/∂λ = 1 − E[k | y]/λ``); second derivatives are not provided.
    """

    max_window_elements = 1 << 21  # entries × window counts evaluated at once (memory bound)

    def __init__(self, gain: float = 1.0, sigma: float = 0.05, rate_floor: float = 1e-3, tol: float = 1e-12):
        self.gain = _check_positive("gain", gain, "PoissonGaussianNoise")
        self.sigma = _check_positive("sigma", sigma, "PoissonGaussianNoise")
        self.rate_floor = _check_positive("rate_floor", rate_floor, "PoissonGaussianNoise")
        self.tol = _check_positive("tol", tol, "PoissonGaussianNoise")
        self.last_truncation_bound: torch.Tensor | None = None
        self._log_fact: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"PoissonGaussianNoise(gain={self.gain}, sigma={self.sigma})"

    def validate(self, y: torch.Tensor) -> None:
        super().validate(y)
        if y.is_complex():
            raise ValueError("PoissonGaussianNoise: measurements are real intensities; got a complex tensor")

    def sample(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if clean.is_complex():
            raise ValueError("PoissonGaussianNoise: cannot draw counts from a complex A(x)")
        rate = (clean.detach().clamp(min=0) * self.gain).to(torch.float64)
        k = torch.poisson(rate, generator=generator)
        n = torch.randn(clean.shape, generator=generator, dtype=torch.float64, device=clean.device)
        return (k / self.gain + self.sigma * n).to(clean.dtype)

    def variance(self, Ax: torch.Tensor) -> torch.Tensor:
        """Per-entry variance of ``y`` given ``A(x)``: ``max(A x, 0)/gain + σ²``."""
        return Ax.clamp(min=0) / self.gain + self.sigma**2

    def discrepancy(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        """Pearson χ² ``Σ (y − A x)² / Var(y | A x)`` per sample (expectation ``m`` at the truth)."""
        return _per_sample_sum((y - Ax) ** 2 / self.variance(Ax))

    def _window(self, y, lam, log_lam, mode, half: int):
        """``(−log p, E[k|y], Var[k|y], ε)`` summing counts ``k ∈ [max(0, ⌊mode⌋ − half), … + 2·half]``."""
        g, sig = self.gain, self.sigma
        n_k = 2 * half + 1
        lo = (torch.floor(mode) - half).clamp(min=0)
        ks = lo[:, None] + torch.arange(-1, n_k + 1, dtype=lam.dtype, device=lam.device)  # one extra each side
        k_idx = ks.clamp(min=0).long()
        if self._log_fact is None or int(k_idx.max()) >= self._log_fact.numel():
            # log k! by table lookup: the window's counts are integers
            top = max(int(k_idx.max()) + 1, 2 * (0 if self._log_fact is None else self._log_fact.numel()))
            self._log_fact = torch.lgamma(torch.arange(top, dtype=lam.dtype, device=lam.device) + 1)
        logt = (ks * log_lam[:, None] - lam[:, None] - self._log_fact.to(lam.device)[k_idx]
                - (y[:, None] - ks / g) ** 2 / (2 * sig**2) - 0.5 * math.log(2 * math.pi * sig**2))
        logt_win = logt[:, 1:-1]
        logp = torch.logsumexp(logt_win, dim=1)
        # geometric tail bounds from the log-concavity of t_k (see class docstring)
        r_hi = torch.exp(logt[:, -1] - logt[:, -2])
        r_lo = torch.where(lo > 0, torch.exp(logt[:, 0] - logt[:, 1]), torch.zeros_like(lo))
        inf = torch.full_like(lo, math.inf)
        tail_hi = torch.where(r_hi < 1, torch.exp(logt[:, -2] - logp) * r_hi / (1 - r_hi), inf)
        tail_lo = torch.where(r_lo < 1, torch.exp(logt[:, 1] - logp) * r_lo / (1 - r_lo), inf)
        post = torch.exp(logt_win - logp[:, None])
        kw = ks[:, 1:-1]
        mean = (post * kw).sum(1)
        var = (post * (kw - mean[:, None]) ** 2).sum(1)
        return -logp, mean, var, tail_hi + tail_lo

    @torch.no_grad()
    def _series(self, y: torch.Tensor, lam: torch.Tensor):
        """Per-entry ``(−log p, E[k|y], Var[k|y], ε)`` at rates ``lam > 0`` (flat float64 tensors)."""
        gs2 = (self.gain * self.sigma) ** 2
        mode = (lam * gs2 + lam * self.gain * y) / (lam + gs2)
        spread = torch.sqrt(lam * gs2 / (lam + gs2))
        log_lam = torch.log(lam)
        out = [torch.empty_like(lam) for _ in range(4)]
        self._log_fact = None
        todo = torch.arange(lam.numel(), device=lam.device)
        half = int(math.ceil(7.5 * float(spread.max()) + 6)) if lam.numel() else 6
        while todo.numel():
            chunk = max(1, self.max_window_elements // (2 * half + 3))
            failed = []
            for part in todo.split(chunk):
                res = self._window(y[part], lam[part], log_lam[part], mode[part], half)
                for o, v in zip(out, res):
                    o[part] = v
                failed.append(part[res[3] > self.tol])
            todo = torch.cat(failed)
            half *= 2  # entries whose tail bound exceeds tol are redone with a wider window
        return out

    def nll(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        if Ax.is_complex() or y.is_complex():
            raise ValueError("PoissonGaussianNoise: y and A(x) must be real intensities")
        if y.shape != Ax.shape:
            raise ValueError(f"PoissonGaussianNoise: y {tuple(y.shape)} and A(x) {tuple(Ax.shape)} differ in shape")
        lam = Ax * self.gain
        floor = self.rate_floor
        lam_c = lam.detach().clamp(min=floor)
        f, mean, var, eps = self._series(y.detach().to(torch.float64).flatten(), lam_c.to(torch.float64).flatten())
        shape = lam.shape
        f, mean, var = (v.reshape(shape).to(lam.dtype) for v in (f, mean, var))
        g_c = 1 - mean / lam_c
        curv = (mean - var).clamp(min=1) / floor**2
        self.last_truncation_bound = _per_sample_sum(eps.reshape(shape))
        return _per_sample_sum(_continued(f, g_c, curv, lam, lam_c, floor))

    def effective_sigma(self, y: torch.Tensor | None = None) -> float:
        if y is None:
            raise ValueError("PoissonGaussianNoise.effective_sigma needs the measurement y (the noise level depends on it)")
        return math.sqrt(max(float(y.detach().mean()), 0.0) / self.gain + self.sigma**2)
