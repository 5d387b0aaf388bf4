"""Audit statistics: per-entry normalised residuals, their exact null cumulants, p-values of
sums, and multiplicity control.

Room: ``ddiff`` — torch and numpy only (see :mod:`ddiff.audit`).

Formulas: the package docstring (:mod:`ddiff.audit`) and ``docs/audit.md``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["CONTROLS", "scaled_chi2_sf", "scaled_chi2_cdf", "scaled_chi2_pdf", "poisson_deviance_moments",
           "entry_sd", "elementwise_stats", "fwer_threshold", "noise_kind"]

CONTROLS = ("sidak", "bonferroni", "bh")


# ----------------------------------------------------------------------------------------------
# Distributions
# ----------------------------------------------------------------------------------------------
def _pearson3(E: torch.Tensor, V: torch.Tensor, K3: torch.Tensor | None):
    """Shift ``a``, scale ``c`` and dof ``k`` of ``a + c·χ²_k`` matching the cumulants ``E, V, K3``
    (two moments, ``a = 0``, when ``K3`` is None or not positive). float64; invalid rows → (0, 1, 1)."""
    E, V = E.double(), V.double()
    ok = (E > 0) & (V > 0)
    Es = torch.where(ok, E, torch.ones_like(E))
    Vs = torch.where(ok, V, 2 * torch.ones_like(V))
    c2 = Vs / (2 * Es)
    k2 = 2 * Es**2 / Vs
    if K3 is None:
        return torch.zeros_like(Es), c2, k2, ok
    K3 = K3.double()
    use3 = ok & (K3 > 0)
    K3s = torch.where(use3, K3, torch.ones_like(K3))
    c3 = K3s / (4 * Vs)  # κ3 = 8c³k, κ2 = 2c²k
    k3 = 8 * Vs**3 / K3s**2
    a3 = Es - c3 * k3
    return (torch.where(use3, a3, 0.0), torch.where(use3, c3, c2), torch.where(use3, k3, k2), ok)


def scaled_chi2_sf(S: torch.Tensor, E: torch.Tensor, V: torch.Tensor, K3: torch.Tensor | None = None) -> torch.Tensor:
    """Upper-tail p-value of a sum ``S`` of independent terms with cumulants ``E, V, K3``.

    Referred to ``a + c·χ²_k`` with the same three cumulants (``c = K3/(4V)``, ``k = 8V³/K3²``,
    ``a = E − ck``; a Pearson type III approximation), or to ``c·χ²_k`` with the same mean and
    variance when ``K3`` is None (``c = V/(2E)``, ``k = 2E²/V``; Satterthwaite). For Gaussian
    entries (``E = m``, ``V = 2m``, ``K3 = 8m``) both are exactly the χ²_m survival function
    ``Q(m/2, S/2)``. Broadcasting float64; where ``E == 0`` (nothing observed) the p-value is 1.
    """
    a, c, k, ok = _pearson3(E, V, K3)
    p = torch.special.gammaincc(k / 2, ((S.double() - a) / (2 * c)).clamp_min(0))
    return torch.where(ok, p, torch.ones_like(p))


def scaled_chi2_cdf(S: torch.Tensor, E: torch.Tensor, V: torch.Tensor, K3: torch.Tensor | None = None) -> torch.Tensor:
    """Lower-tail ``P(sum ≤ S)`` under the same approximation (small: the noise is being fitted)."""
    a, c, k, ok = _pearson3(E, V, K3)
    p = torch.special.gammainc(k / 2, ((S.double() - a) / (2 * c)).clamp_min(0))
    return torch.where(ok, p, torch.ones_like(p))


def scaled_chi2_pdf(S: torch.Tensor, E: torch.Tensor, V: torch.Tensor, K3: torch.Tensor | None = None) -> torch.Tensor:
    """Density of the same approximation at ``S`` (exact χ²_m density for Gaussian cumulants)."""
    a, c, k, ok = _pearson3(E, V, K3)
    u = (S.double() - a) / c
    logpdf = (k / 2 - 1) * torch.log(u.clamp_min(1e-300)) - u / 2 - (k / 2) * math.log(2) - torch.lgamma(k / 2)
    pdf = torch.exp(logpdf) / c
    return torch.where(ok & (u > 0), pdf, torch.zeros_like(pdf))


_POISSON_TABLE: tuple[torch.Tensor, ...] | None = None
_MU_MIN, _MU_MAX, _MU_POINTS = 1e-6, 1e5, 1101


def _build_poisson_table() -> tuple[torch.Tensor, ...]:
    """Exact mean, variance and third cumulant of the Poisson unit deviance on a log grid of ``μ``."""
    log_mu = torch.linspace(math.log(_MU_MIN), math.log(_MU_MAX), _MU_POINTS, dtype=torch.float64)
    rows = []
    for lm in log_mu.tolist():
        mu = math.exp(lm)
        kmax = int(math.ceil(mu + 15 * math.sqrt(mu) + 40))
        k = torch.arange(kmax + 1, dtype=torch.float64)
        p = torch.exp(k * lm - mu - torch.lgamma(k + 1))
        p = p / p.sum()
        klogk = torch.where(k > 0, k * (torch.log(k.clamp_min(1)) - lm), torch.zeros_like(k))
        d = 2 * (klogk - (k - mu))
        m1 = (p * d).sum()
        rows.append((float(m1), float((p * (d - m1) ** 2).sum()), float((p * (d - m1) ** 3).sum())))
    t = torch.tensor(rows, dtype=torch.float64)
    return log_mu, t[:, 0].contiguous(), t[:, 1].contiguous(), t[:, 2].contiguous()


def poisson_deviance_moments(mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact ``(E[d], Var[d], κ₃[d])`` of the unit deviance ``d = 2[k log(k/μ) − (k − μ)]``, ``k ~ P(μ)``.

    Interpolated (linear in ``log μ``, 1101 points over ``[1e-6, 1e5]``) from sums over the Poisson
    pmf; ``μ = 0`` gives zeros; ``μ`` beyond the grid is clamped to its ends (above 1e5 the
    moments are those of χ²₁, 1, 2 and 8, to within 1e-5 relative).
    """
    global _POISSON_TABLE
    if _POISSON_TABLE is None:
        _POISSON_TABLE = _build_poisson_table()
    grid, tm, tv, t3 = _POISSON_TABLE
    mu64 = mu.double()
    lm = torch.log(mu64.clamp(_MU_MIN, _MU_MAX))
    pos = (lm - grid[0]) / (grid[1] - grid[0])
    i0 = pos.floor().long().clamp(0, len(grid) - 2)
    w = (pos - i0).clamp(0, 1)
    zero = mu64 <= 0
    out = []
    for t in (tm, tv, t3):
        out.append(torch.where(zero, 0.0, t[i0] * (1 - w) + t[i0 + 1] * w))
    return out[0], out[1], out[2]


def _unwrap(noise, *values):
    """A noise model stated in the data's units (``operators.DataUnits``: ``inner`` + ``to_inner``)
    → its physical model and the values mapped to its units; any other model is returned as is."""
    if hasattr(noise, "inner") and hasattr(noise, "to_inner"):
        return (noise.inner, *(noise.to_inner(v if v.is_complex() else v.double()) for v in values))
    return (noise, *values)


def noise_kind(noise) -> str:
    """``"gaussian"``, ``"poisson"``, ``"poisson_gaussian"`` or ``"other"`` for an ``operators`` noise model
    (of a model in data units: of its physical model)."""
    (noise,) = _unwrap(noise)
    name = type(noise).__name__
    if name == "PoissonGaussianNoise":
        return "poisson_gaussian"
    if name == "PoissonNoise":
        return "poisson"
    if name == "GaussianNoise":
        return "gaussian"
    return "other"


def _photon_params(noise) -> tuple[float, float]:
    """``(gain, read-noise σ)`` of a photon-counting model: ``y = k/gain + σ n``, ``k ~ P(gain·Ax)``
    (``operators.noise`` units; σ = 0 for pure Poisson)."""
    gain = float(getattr(noise, "gain", 1.0))
    sigma = float(getattr(noise, "sigma", 0.0)) if noise_kind(noise) == "poisson_gaussian" else 0.0
    return gain, sigma


def entry_sd(noise, Ax: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Null standard deviation of each measurement entry at mean ``Ax`` (units of ``y``), float64."""
    if hasattr(noise, "to_inner"):
        return entry_sd(noise.inner, noise.to_inner(Ax), None if y is None else noise.to_inner(y)) / abs(noise.scale)
    kind = noise_kind(noise)
    if kind in ("poisson", "poisson_gaussian"):
        gain, sigma = _photon_params(noise)
        return (Ax.double().clamp_min(0) / gain + sigma**2).sqrt()
    return torch.full(Ax.shape, float(noise.effective_sigma(y)), dtype=torch.float64, device=Ax.device)


def elementwise_stats(y: torch.Tensor, Ax: torch.Tensor, noise) -> tuple[torch.Tensor, ...]:
    """Per-entry ``(d, e, v, k3)``: normalised squared residual and its null mean, variance and
    third cumulant.

    ``y``, ``Ax``: measurement and re-measured reconstruction, same shape (real or complex).
    Returns real float64 tensors of ``y``'s shape. See the module docstring for the formulas;
    photon units follow ``operators.noise``: ``y = k/gain (+ σ n)``, ``k ~ Poisson(gain·Ax)``.
    """
    if y.shape != Ax.shape:
        raise ValueError(f"audit: measurement shape {tuple(y.shape)} differs from A(x̂) {tuple(Ax.shape)}")
    noise, y, Ax = _unwrap(noise, y, Ax)  # a model in data units: d is computed in those units (counts)
    kind = noise_kind(noise)
    if kind in ("gaussian", "other"):
        sigma = float(noise.effective_sigma(y))
        r = (y - Ax)
        if r.is_complex():
            d = (r.real.double() ** 2 + r.imag.double() ** 2) / sigma**2
            return d, torch.full_like(d, 2.0), torch.full_like(d, 4.0), torch.full_like(d, 16.0)
        d = r.double() ** 2 / sigma**2
        return d, torch.ones_like(d), torch.full_like(d, 2.0), torch.full_like(d, 8.0)
    if y.is_complex() or Ax.is_complex():
        raise ValueError(f"audit: {type(noise).__name__} needs real measurements, got complex")
    gain, sigma = _photon_params(noise)
    mean_y = Ax.double().clamp_min(0)  # E[y] in the units of y
    lam = mean_y * gain  # expected counts
    if kind == "poisson":
        k = torch.round(y.double() * gain)
        ratio = k.clamp_min(1e-300) / lam.clamp_min(1e-300)
        klog = torch.where(k > 0, k * torch.log(ratio), torch.zeros_like(k))
        d = 2 * (klog - (k - lam))
        # counts where the reconstruction predicts none: impossible under the model
        d = torch.where((lam <= 0) & (k > 0), torch.full_like(d, float("inf")), d)
        e, v, k3 = poisson_deviance_moments(lam)
        return d, e, v, k3
    # Poisson–Gaussian: Pearson statistic with exact null moments
    var = mean_y / gain + sigma**2
    d = (y.double() - mean_y) ** 2 / var
    # central moments of X = k/g + σn (Poisson: μ2 = λ, μ4 = λ + 3λ², μ6 = λ + 25λ² + 15λ³; scaled
    # by g^-j; normal: σ², 3σ⁴, 15σ⁶), combined binomially (odd normal moments vanish)
    p2, p4 = lam / gain**2, (lam + 3 * lam**2) / gain**4
    p6 = (lam + 25 * lam**2 + 15 * lam**3) / gain**6
    s2 = sigma**2
    mu4 = p4 + 6 * p2 * s2 + 3 * s2**2
    mu6 = p6 + 15 * p4 * s2 + 45 * p2 * s2**2 + 15 * s2**3
    # d = X²/var: E = 1, Var = μ4/var² − 1, κ3 = μ6/var³ − 3μ4/var² + 2
    return d, torch.ones_like(d), mu4 / var**2 - 1, mu6 / var**3 - 3 * mu4 / var**2 + 2


# ----------------------------------------------------------------------------------------------
# Multiplicity control over a family of regional tests
# ----------------------------------------------------------------------------------------------
def fwer_threshold(p: torch.Tensor, alpha: float, control: str) -> torch.Tensor:
    """Flags for a ``(B, N)`` family of p-values (NaN = no test) at level ``alpha``.

    ``sidak``: ``p ≤ 1 − (1−α)^{1/N}`` — FWER exactly α for independent tests (disjoint windows);
    ``bonferroni``: ``p ≤ α/N`` (FWER ≤ α); ``bh``: Benjamini–Hochberg step-up (FDR ≤ α).
    ``N`` is the number of tests in each row (non-NaN entries).
    """
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    valid = ~torch.isnan(p)
    n = valid.sum(dim=1, keepdim=True).clamp_min(1).double()
    pv = torch.where(valid, p.double(), torch.full_like(p.double(), 2.0))
    if control == "sidak":
        thr = -torch.expm1(math.log1p(-alpha) / n)
        return valid & (pv <= thr)
    if control == "bonferroni":
        return valid & (pv <= alpha / n)
    # Benjamini–Hochberg: largest i with p_(i) ≤ i α / N; flag all p ≤ p_(i)
    sorted_p, _ = torch.sort(pv, dim=1)
    ranks = torch.arange(1, p.shape[1] + 1, dtype=torch.float64, device=p.device).unsqueeze(0)
    ok = sorted_p <= ranks * alpha / n
    any_ok = ok.any(dim=1, keepdim=True)
    last = torch.where(ok, ranks, torch.zeros_like(ranks)).max(dim=1, keepdim=True).values.long()
    cut = torch.gather(sorted_p, 1, (last - 1).clamp_min(0))
    return valid & any_ok & (pv <= cut)
