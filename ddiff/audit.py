"""Hallucination audit: calibrated data-fit statistics per tile, per region, and seed spread.

Room: ``ddiff`` — torch and numpy only (plus ``operators`` for the noise models and
``ddiff.metrics`` for the paper's numbers). No scipy, xarray, zarr or prefect: the results are plain
tensors/numbers in :class:`AuditResult`; ``storage``/``flows`` turn them into xarray and reports.

What is tested (``docs/audit.md`` explains how to read it)
----------------------------------------------------------
Under the noise model, with the *true* image ``x`` in place of the reconstruction ``x̂``, every
measurement entry ``i`` gives a normalised squared residual ``dᵢ`` with a known mean ``eᵢ``,
variance ``vᵢ`` and third cumulant ``κᵢ``:

* Gaussian ``N(0, σ²)``:          ``dᵢ = (yᵢ − A(x̂)ᵢ)² / σ²``  (χ²₁: ``e = 1``, ``v = 2``; a complex
  entry counts twice, χ²₂);
* Poisson (``operators.noise`` units: counts ``kᵢ = gain·yᵢ ~ P(λᵢ)``, ``λᵢ = gain·A(x̂)ᵢ``): the
  deviance ``dᵢ = 2 [kᵢ log(kᵢ/λᵢ) − (kᵢ − λᵢ)]``, whose exact cumulants under ``P(λᵢ)`` are
  tabulated once (they differ from 1 and 2 at low counts, which is why the plain χ²_m
  approximation is mis-calibrated there);
* Poisson–Gaussian (``y = k/gain + σ n``): Pearson's ``dᵢ = (yᵢ − A(x̂)ᵢ)² / (A(x̂)ᵢ/gain + σ²)``,
  exact mean 1, variance and third cumulant from the Poisson and normal central moments.

The terms of a sum ``S = Σ dᵢ`` over a set of entries (a tile, or a window) are independent, so
``E = Σ eᵢ``, ``V = Σ vᵢ``, ``K₃ = Σ κᵢ``. ``S`` is referred to ``a + c·χ²_k`` with the same three
cumulants (Pearson type III; :func:`scaled_chi2_sf`). For Gaussian noise ``a = 0, c = 1, k = m``
and the p-value is *exact*: ``P(χ²_m ≥ S) = Q(m/2, S/2)`` (regularised upper incomplete gamma).
The tile statistic printed as ``chi2_nu = S/m`` is the paper's ``χ²_ν = ‖y − A(x̂)‖²/(m σ²)``
(ideal ``1 ± √(2/m)``); the z-score is ``(S − E)/√V``.

Regions: for a local operator (``operator.halo`` is an ``int``) the map ``dᵢ`` lives on a grid tied
to the image (same grid for blur/inpainting/microscopy; ``1/scale`` for super-resolution; shrunk by
``2·halo`` for a 'valid' blur). It is summed in windows of ``window`` image pixels (converted to
measurement pixels), giving per-window ``S, E, V`` and p-values, mapped back on the image grid by
nearest upsampling. Sliding windows (stride 1) give the display map ``window_p``; the *flags* use the
disjoint windows of one grid, whose statistics are independent under the null, so the family-wise
error over the tile's windows is controlled exactly by Šidák (``control="sidak"``, default;
``"bonferroni"`` ≤ α; ``"bh"`` controls the false-discovery rate instead). Unobserved entries (an
inpainting mask: ``operator.mask`` when present, else rows of a linear ``A`` that are identically
zero; optionally a border of ``exclude_border`` pixels, e.g. a tile's halo) count neither in ``d``
nor in ``m``.

Uncertainty (:func:`uncertainty`): from K reconstructions with different seeds, the per-pixel spread,
the spread of their re-measurements ``A(x̂ₖ)`` in noise units (what the data can tell apart), the
data constraint ``diag(AᵀA)`` (exact from a mask, Hutchinson probes otherwise), and the
*prior-filled* map: pixels where the seeds disagree but their re-measurements do not — the part of
the image the prior chose inside the operator's null space. Reported, never flagged: residuals
cannot see such content (see ``docs/audit.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ddiff.metrics import chi2_reduced, residual_gap

__all__ = [
    "AuditResult",
    "UncertaintyResult",
    "audit",
    "uncertainty",
    "elementwise_stats",
    "entry_sd",
    "scaled_chi2_sf",
    "scaled_chi2_cdf",
    "scaled_chi2_pdf",
    "poisson_deviance_moments",
    "observed_mask",
    "image_grid_factor",
    "window_sums",
    "fwer_threshold",
    "smooth_field",
    "plant_disk",
    "detection_rates",
]

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


def _noise_kind(noise) -> str:
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
    sigma = float(getattr(noise, "sigma", 0.0)) if _noise_kind(noise) == "poisson_gaussian" else 0.0
    return gain, sigma


def entry_sd(noise, Ax: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Null standard deviation of each measurement entry at mean ``Ax`` (units of ``y``), float64."""
    kind = _noise_kind(noise)
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
    kind = _noise_kind(noise)
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
# Geometry: observed entries, measurement grid ↔ image grid, windows
# ----------------------------------------------------------------------------------------------
def observed_mask(operator, x_like: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boolean mask of ``y``'s shape: entries that carry information about the image.

    Uses ``operator.mask`` when it broadcasts to ``y``; otherwise, for a linear operator, the rows
    of ``A`` that are identically zero (``A z = 0`` for a Gaussian probe ``z``, which happens with
    probability 0 for a non-zero row) are unobserved;
    a nonlinear operator counts every entry.
    """
    mask = getattr(operator, "mask", None)
    if isinstance(mask, torch.Tensor):
        try:
            return torch.broadcast_to(mask.to(y.device) != 0, y.shape).clone()
        except RuntimeError:
            pass
    if getattr(operator, "linear", False):
        g = torch.Generator(device="cpu").manual_seed(12345)
        with torch.no_grad():
            z = torch.randn(x_like.shape, generator=g, dtype=x_like.dtype).to(x_like.device)
            obs = operator(z) != 0
        if obs.shape != y.shape:
            raise ValueError(f"audit: operator output {tuple(obs.shape)} does not match y {tuple(y.shape)}")
        return obs
    return torch.ones(y.shape, dtype=torch.bool, device=y.device)


def image_grid_factor(image_hw: tuple[int, int], meas_hw: tuple[int, int]) -> tuple[str, int] | None:
    """How a measurement grid maps onto the image grid.

    Returns ``("same", 0)``, ``("down", s)`` (measurement pixel = ``s×s`` image block, e.g.
    super-resolution), ``("valid", h)`` (measurement = image cropped by ``h`` on each side), or
    ``None`` when the grids are unrelated.
    """
    (H, W), (h, w) = image_hw, meas_hw
    if (H, W) == (h, w):
        return ("same", 0)
    if h > 0 and w > 0 and H % h == 0 and W % w == 0 and H // h == W // w and H // h > 1:
        return ("down", H // h)
    if (H - h) == (W - w) and (H - h) > 0 and (H - h) % 2 == 0:
        return ("valid", (H - h) // 2)
    return None


def to_image_grid(t: torch.Tensor, mapping: tuple[str, int], fill: float = float("nan")) -> torch.Tensor:
    """Map a ``(B, h, w)`` map on the measurement grid to ``(B, H, W)`` on the image grid."""
    kind, s = mapping
    if kind == "same":
        return t
    if kind == "down":
        return t.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)
    return F.pad(t.unsqueeze(1), (s, s, s, s), value=fill).squeeze(1)


def window_sums(t: torch.Tensor, window: int, sliding: bool) -> torch.Tensor:
    """Sum a ``(B, h, w)`` map in ``window×window`` boxes.

    ``sliding=True``: stride 1, centred, zero padded → ``(B, h, w)``.
    ``sliding=False``: disjoint boxes of one grid (the last row/column of boxes may be partial)
    → ``(B, ceil(h/window), ceil(w/window))``.
    """
    if sliding:
        # integral image: O(1) per window whatever its size
        lo = (window - 1) // 2
        hi = window - 1 - lo
        x = F.pad(t.double(), (lo + 1, hi, lo + 1, hi))
        c = x.cumsum(-1).cumsum(-2)
        return c[..., window:, window:] - c[..., :-window, window:] - c[..., window:, :-window] + c[..., :-window, :-window]
    h, w = t.shape[-2:]
    ph, pw = (-h) % window, (-w) % window
    x = F.pad(t.unsqueeze(1), (0, pw, 0, ph))
    return F.avg_pool2d(x, window, stride=window).squeeze(1) * window**2


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


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
# dimension names for storage (``B`` = tile/frame; ``*`` = measurement dims, free shape)
_DIMS = {
    "chi2_nu": ("sample",),
    "chi2_paper": ("sample",),
    "dof": ("sample",),
    "stat": ("sample",),
    "stat_mean": ("sample",),
    "stat_std": ("sample",),
    "stat_k3": ("sample",),
    "z": ("sample",),
    "p_value": ("sample",),
    "p_value_low": ("sample",),
    "nll": ("sample",),
    "residual_gap": ("sample",),
    "tile_flag": ("sample",),
    "region_p": ("sample", "cell_y", "cell_x"),
    "region_flag": ("sample", "cell_y", "cell_x"),
    "window_p": ("sample", "y", "x"),
    "window_chi2": ("sample", "y", "x"),
    "flag_map": ("sample", "y", "x"),
}


@dataclass
class AuditResult:
    """Audit of reconstructions ``x̂`` (B tiles/frames) against their measurements.

    Per sample, shape ``(B,)`` (torch float64 / bool):
      ``chi2_nu`` = ``S/m`` (Gaussian: ``‖y − A(x̂)‖²/(mσ²)`` over observed entries; Poisson: the
      deviance per entry), ``chi2_paper`` (``ddiff.metrics.chi2_reduced`` over *all* entries with
      ``noise.effective_sigma``, the paper's number), ``dof`` (= m observed real entries),
      ``stat`` (= S), ``stat_mean``/``stat_std``/``stat_k3`` (its null mean, sd and third
      cumulant; Gaussian: m, √(2m), 8m),
      ``z`` = (S − E)/sd, ``p_value`` (upper tail: too large a misfit), ``p_value_low`` (lower tail:
      the noise is being fitted), ``nll`` (``noise.nll``), ``residual_gap`` (paper), ``tile_flag``
      (``p_value < alpha``).
    Maps: ``residual`` ``y − A(x̂)`` and ``deviance`` (``d``, 0 where unobserved) on the measurement
    grid (shape of ``y``); when the operator is local and the grids match (``mapping`` not None):
    ``window_p``/``window_chi2`` (B, H, W) sliding-window p-value and reduced statistic ``S/E`` on the
    image grid (display, not multiplicity-corrected), ``region_p``/``region_flag`` (B, ny, nx) on the
    disjoint cells used for the flags, ``flag_map`` (B, H, W) the flagged cells on the image grid.
    ``None`` for maps that do not apply (global operator).
    """

    alpha: float
    control: str
    window: int
    window_meas: int | None
    exclude_border: int
    noise: str
    mapping: tuple[str, int] | None
    chi2_nu: torch.Tensor
    chi2_paper: torch.Tensor
    dof: torch.Tensor
    stat: torch.Tensor
    stat_mean: torch.Tensor
    stat_std: torch.Tensor
    stat_k3: torch.Tensor
    z: torch.Tensor
    p_value: torch.Tensor
    p_value_low: torch.Tensor
    nll: torch.Tensor
    residual_gap: torch.Tensor
    tile_flag: torch.Tensor
    residual: torch.Tensor
    deviance: torch.Tensor
    observed: torch.Tensor
    window_p: torch.Tensor | None = None
    window_chi2: torch.Tensor | None = None
    region_p: torch.Tensor | None = None
    region_flag: torch.Tensor | None = None
    flag_map: torch.Tensor | None = None

    @property
    def region_any(self) -> torch.Tensor:
        """(B,) bool: some region of the sample is flagged (False when no regional test)."""
        if self.region_flag is None:
            return torch.zeros_like(self.tile_flag)
        return self.region_flag.flatten(1).any(dim=1)

    @property
    def flagged(self) -> torch.Tensor:
        """(B,) bool: tile flag or any region flag (false-alarm rate ≤ 2α by the union bound)."""
        return self.tile_flag | self.region_any

    def arrays(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        """``{name: (dims, numpy array)}`` of every per-sample number, image-grid map and (for
        image-like measurements) measurement-grid map, ready for ``xarray.Dataset(...)``;
        scalar settings are in :meth:`attrs`. Dims: ``sample``; ``y``/``x`` image grid;
        ``cell_y``/``cell_x`` disjoint windows; ``m_channel``/``m_y``/``m_x`` measurement grid."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _DIMS and isinstance(v, torch.Tensor):
                out[f.name] = (_DIMS[f.name], v.detach().cpu().numpy())
        if self.residual.ndim == 4:  # measurement-grid maps (B, C', h, w)
            mdims = ("sample", "m_channel", "m_y", "m_x")
            for name in ("residual", "deviance", "observed"):
                out[name] = (mdims, getattr(self, name).detach().cpu().numpy())
        return out

    def attrs(self) -> dict[str, Any]:
        """Scalar settings (alpha, control, window, noise, grid mapping) for dataset attributes."""
        return {
            "alpha": self.alpha,
            "exclude_border": self.exclude_border,
            "control": self.control,
            "window": self.window,
            "window_meas": -1 if self.window_meas is None else self.window_meas,
            "noise": self.noise,
            "mapping": "none" if self.mapping is None else f"{self.mapping[0]}:{self.mapping[1]}",
        }


def _core_mask(y: torch.Tensor, image_hw: tuple[int, int], border: int) -> torch.Tensor:
    """Bool mask of ``y``'s shape, False on measurements within ``border`` image pixels of the edge."""
    if y.ndim != 4:
        raise ValueError("audit: exclude_border needs image-like measurements (B, C, h, w)")
    mapping = image_grid_factor(image_hw, tuple(y.shape[-2:]))
    if mapping is None:
        raise ValueError(f"audit: exclude_border: cannot relate the measurement grid {tuple(y.shape[-2:])} "
                         f"to the image grid {image_hw}")
    kind, s = mapping
    b = border if kind == "same" else (-(-border // s) if kind == "down" else max(0, border - s))
    h, w = y.shape[-2:]
    core = torch.zeros((h, w), dtype=torch.bool, device=y.device)
    if 2 * b < h and 2 * b < w:
        core[b : h - b, b : w - b] = True
    return torch.broadcast_to(core, y.shape)


def _nll_or_nan(noise, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
    """``noise.nll`` per sample, NaN for a user noise model that does not implement it."""
    try:
        return noise.nll(y, Ax).double()
    except NotImplementedError:
        return torch.full((y.shape[0],), float("nan"), dtype=torch.float64, device=y.device)


def _spatial(y: torch.Tensor) -> bool:
    return y.ndim == 4


@torch.no_grad()
def audit(
    x_hat: torch.Tensor,
    y: torch.Tensor,
    operator,
    noise,
    *,
    alpha: float = 0.05,
    window: int = 16,
    control: str = "sidak",
    exclude_border: int = 0,
    Ax: torch.Tensor | None = None,
) -> AuditResult:
    """Audit reconstructions ``x̂`` against their measurements ``y = A(x) + n``.

    Args:
        x_hat: ``(B, C, H, W)`` reconstructions in model space.
        y: measurements, leading dim ``B`` (the shape ``operator`` produces).
        operator: the forward model used to produce ``y`` (``forward``, ``halo``, ``linear``).
        noise: ``GaussianNoise``, ``PoissonNoise``, ``PoissonGaussianNoise`` (another model is
            treated as Gaussian with ``noise.effective_sigma(y)``).
        alpha: false-alarm rate of the tile test, and the family-wise error (or FDR for ``"bh"``)
            over the regions of one tile.
        window: region size in *image* pixels (converted to measurement pixels by the grid scale).
        control: ``"sidak"`` (default), ``"bonferroni"`` or ``"bh"``; see :func:`fwer_threshold`.
        exclude_border: image pixels at each edge whose measurements are left out (treated as
            unobserved). Auditing a tile cut with its halo from a larger frame, pass
            ``operator.halo``: near the tile's edge ``A(x̂_tile)`` sees the boundary extension, not
            the neighbouring content the real measurement saw, and would be flagged for it.
        Ax: optional precomputed ``operator(x_hat)``.
    """
    if not isinstance(x_hat, torch.Tensor) or x_hat.ndim != 4:
        raise ValueError(f"audit: x_hat must be a (B, C, H, W) tensor, got {getattr(x_hat, 'shape', type(x_hat))}")
    if not isinstance(y, torch.Tensor) or y.shape[0] != x_hat.shape[0]:
        raise ValueError("audit: y must be a tensor with the same batch size as x_hat")
    if not (0 < alpha < 1):
        raise ValueError(f"audit: alpha must be in (0, 1), got {alpha}")
    if control not in CONTROLS:
        raise ValueError(f"audit: control must be one of {CONTROLS}, got {control!r}")
    if int(window) < 1:
        raise ValueError(f"audit: window must be a positive number of image pixels, got {window}")
    if int(exclude_border) < 0:
        raise ValueError(f"audit: exclude_border must be >= 0 image pixels, got {exclude_border}")
    noise.validate(y)
    if Ax is None:
        Ax = operator(x_hat)
    B = y.shape[0]
    obs = observed_mask(operator, x_hat, y)
    if exclude_border:
        obs = obs & _core_mask(y, tuple(x_hat.shape[-2:]), int(exclude_border))
    d, e, v, k3 = (torch.where(obs, t, 0.0) for t in elementwise_stats(y, Ax, noise))
    S, E, V, K3 = (t.reshape(B, -1).sum(1) for t in (d, e, v, k3))
    per_entry = 2 if y.is_complex() else 1
    m = obs.reshape(B, -1).sum(1).double() * per_entry
    sigma_eff = float(noise.effective_sigma(y))
    kind = _noise_kind(noise)
    if kind in ("gaussian", "other"):
        # the paper's χ²_ν, restricted to observed entries (identical when all are observed)
        m_all = y[0].numel() * per_entry
        S = chi2_reduced(torch.where(obs, y, 0), torch.where(obs, Ax, 0), sigma_eff).double() * m_all
    p = scaled_chi2_sf(S, E, V, K3)
    p_low = scaled_chi2_cdf(S, E, V, K3)
    sd = V.sqrt()
    res = AuditResult(
        alpha=float(alpha),
        control=control,
        window=int(window),
        window_meas=None,
        exclude_border=int(exclude_border),
        noise=repr(noise),
        mapping=None,
        chi2_nu=S / m.clamp_min(1),
        chi2_paper=chi2_reduced(y, Ax, sigma_eff).double(),
        dof=m,
        stat=S,
        stat_mean=E,
        stat_std=sd,
        stat_k3=K3,
        z=(S - E) / sd.clamp_min(1e-300),
        p_value=p,
        p_value_low=p_low,
        nll=_nll_or_nan(noise, y, Ax),
        residual_gap=residual_gap(y, Ax, sigma_eff).double(),
        tile_flag=p < alpha,
        residual=(y - Ax),
        deviance=d,
        observed=obs,
    )
    if getattr(operator, "halo", None) is None or not _spatial(y):
        return res  # global operator: only whole-frame statistics are meaningful
    mapping = image_grid_factor(tuple(x_hat.shape[-2:]), tuple(y.shape[-2:]))
    if mapping is None:
        return res
    scale = mapping[1] if mapping[0] == "down" else 1
    wm = max(1, int(round(window / scale)))
    res.mapping, res.window_meas = mapping, wm
    maps = [t.sum(1) for t in (d, e, v, k3)]  # sum channels: (B, h, w)

    Sw, Ew, Vw, K3w = (window_sums(t, wm, sliding=True) for t in maps)
    pw = scaled_chi2_sf(Sw, Ew, Vw, K3w)
    chi_w = torch.where(Ew > 0, Sw / Ew.clamp_min(1e-300), torch.full_like(Sw, float("nan")))
    res.window_p = to_image_grid(torch.where(Ew > 0, pw, torch.full_like(pw, float("nan"))), mapping)
    res.window_chi2 = to_image_grid(chi_w, mapping)

    Sc, Ec, Vc, K3c = (window_sums(t, wm, sliding=False) for t in maps)
    pc = torch.where(Ec > 0, scaled_chi2_sf(Sc, Ec, Vc, K3c), torch.full_like(Sc, float("nan")))
    flags = fwer_threshold(pc.flatten(1), alpha, control).reshape(pc.shape)
    res.region_p, res.region_flag = pc, flags
    h, w = y.shape[-2:]
    fm = flags.repeat_interleave(wm, dim=-2).repeat_interleave(wm, dim=-1)[..., :h, :w]
    res.flag_map = to_image_grid(fm.double(), mapping, fill=0.0) > 0.5
    return res


# ----------------------------------------------------------------------------------------------
# Uncertainty from K seeds
# ----------------------------------------------------------------------------------------------
@dataclass
class UncertaintyResult:
    """Seed spread of K reconstructions (all ``(B, H, W)`` on the image grid, channels pooled).

    ``mean`` (B, C, H, W) the seed mean; ``spread`` per-pixel sd over seeds (RMS over channels,
    model units); ``measured_spread`` the sd over seeds of ``A(x̂ₖ)`` in noise units (RMS over
    channels, mapped to the image grid; ``None`` when the grids are unrelated): below ~1 the data
    cannot tell the seeds apart; ``data_weight`` ``diag(AᵀA)`` per pixel, summed over channels
    (the squared norm of the operator's column: how strongly the data sees that pixel; mask →
    exact, linear → Hutchinson's unbiased ``mean z ⊙ AᵀA z`` over Rademacher probes — noisy when the
    operator spreads a pixel over many measurements, so read it smoothed — ``None`` for nonlinear
    operators); ``prior_filled`` bool:
    ``spread > spread_tol`` while ``measured_spread < 1`` (the seeds differ only where the data
    is blind).
    """

    mean: torch.Tensor
    spread: torch.Tensor
    measured_spread: torch.Tensor | None
    data_weight: torch.Tensor | None
    prior_filled: torch.Tensor
    spread_tol: float
    K: int

    def arrays(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        out = {"spread": (("sample", "y", "x"), self.spread.cpu().numpy()),
               "prior_filled": (("sample", "y", "x"), self.prior_filled.cpu().numpy())}
        if self.measured_spread is not None:
            out["measured_spread"] = (("sample", "y", "x"), self.measured_spread.cpu().numpy())
        if self.data_weight is not None:
            out["data_weight"] = (("sample", "y", "x"), self.data_weight.cpu().numpy())
        return out


def _diag_ata(operator, x_like: torch.Tensor, probes: int, generator: torch.Generator) -> torch.Tensor | None:
    """``diag(AᵀA)`` summed over channels, (B, H, W): exact from a mask, else Hutchinson
    ``E[z ⊙ AᵀA z]`` with Rademacher ``z`` (``probes`` draws), ``None`` when ``A`` is nonlinear."""
    mask = getattr(operator, "mask", None)
    if isinstance(mask, torch.Tensor):
        try:
            mk = torch.broadcast_to((mask != 0).double(), x_like.shape)
            return mk.sum(1)
        except RuntimeError:
            pass
    if not getattr(operator, "linear", False):
        return None
    acc = torch.zeros(x_like.shape, dtype=torch.float64, device=x_like.device)
    for _ in range(probes):
        z = (torch.randint(0, 2, x_like.shape, generator=generator).to(x_like) * 2 - 1)
        ata = operator.adjoint(operator(z))
        acc += (z * ata.real if ata.is_complex() else z * ata).double()
    return (acc / probes).sum(1)


@torch.no_grad()
def uncertainty(
    samples: torch.Tensor,
    operator,
    noise,
    y: torch.Tensor | None = None,
    *,
    spread_tol: float = 0.1,
    probes: int = 16,
    seed: int = 0,
) -> UncertaintyResult:
    """Per-pixel seed spread and the prior-filled map from ``samples`` ``(K, B, C, H, W)``, K ≥ 2.

    ``spread_tol``: spread (model units, images in ``[−1, 1]``) above which a pixel counts as
    uncertain. ``y`` (optional) sets the noise level via ``noise.effective_sigma(y)``.
    """
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5 or samples.shape[0] < 2:
        raise ValueError("uncertainty: samples must be a (K, B, C, H, W) tensor with K >= 2 seeds")
    K = samples.shape[0]
    s64 = samples.double()
    mean = s64.mean(0)
    spread = s64.var(0, unbiased=True).mean(1).sqrt()  # RMS over channels: (B, H, W)
    meas = torch.stack([operator(samples[k]) for k in range(K)])
    measured = None
    if meas.ndim == 5 and getattr(operator, "halo", None) is not None:
        mapping = image_grid_factor(tuple(samples.shape[-2:]), tuple(meas.shape[-2:]))
        if mapping is not None:
            mm = (meas.abs() if meas.is_complex() else meas).double()
            sd = entry_sd(noise, mm.mean(0), y)  # null noise sd at the seed-mean re-measurement
            ms = (mm.var(0, unbiased=True) / sd**2).mean(1).sqrt()
            measured = to_image_grid(ms, mapping, fill=0.0)
    g = torch.Generator(device="cpu").manual_seed(seed)
    dw = _diag_ata(operator, samples[0], probes, g)
    if measured is not None:
        blind = measured < 1.0
    elif dw is not None:
        blind = dw < 1e-3 * dw.flatten(1).amax(1).clamp_min(1e-300).view(-1, 1, 1)
    else:
        blind = torch.ones_like(spread, dtype=torch.bool)
    return UncertaintyResult(
        mean=mean,
        spread=spread,
        measured_spread=measured,
        data_weight=dw,
        prior_filled=(spread > spread_tol) & blind,
        spread_tol=float(spread_tol),
        K=K,
    )


# ----------------------------------------------------------------------------------------------
# Validation helpers: synthetic truths and planted hallucinations (positive controls)
# ----------------------------------------------------------------------------------------------
def smooth_field(
    shape: tuple[int, int, int, int],
    length: float = 6.0,
    amplitude: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random smooth images ``(B, C, H, W)`` in ``[−amplitude, amplitude]``: white noise low-passed
    by a Gaussian of ``length`` pixels (periodic), each image rescaled to span the full range."""
    B, C, H, W = shape
    n = torch.randn(shape, generator=generator, dtype=torch.float64)
    fy = torch.fft.fftfreq(H, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.fftfreq(W, dtype=torch.float64).view(1, -1)
    filt = torch.exp(-2 * (math.pi * length) ** 2 * (fy**2 + fx**2))
    f = torch.fft.ifft2(torch.fft.fft2(n) * filt).real
    lo = f.flatten(2).amin(2)[..., None, None]
    hi = f.flatten(2).amax(2)[..., None, None]
    return ((f - lo) / (hi - lo) * 2 - 1).mul(amplitude).float()


def plant_disk(
    x: torch.Tensor,
    contrast: float,
    radius: float,
    generator: torch.Generator | None = None,
    margin: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a disk of ``contrast`` (model units, random sign) and ``radius`` (pixels) at a random
    position of each image, at least ``margin`` pixels from the edges; edge anti-aliased over one
    pixel. Returns ``(x + disk, footprint)`` with ``footprint`` ``(B, H, W)`` bool (disk pixels).
    The structure is added to every channel (a bright/dark object, not a colour shift).
    """
    B, C, H, W = x.shape
    lo = int(math.ceil(margin + radius))
    if H - 2 * lo < 1 or W - 2 * lo < 1:
        raise ValueError(f"plant_disk: radius {radius} with margin {margin} does not fit a {H}x{W} image")
    cy = torch.randint(lo, H - lo, (B,), generator=generator).double()
    cx = torch.randint(lo, W - lo, (B,), generator=generator).double()
    sign = torch.randint(0, 2, (B,), generator=generator).double() * 2 - 1
    yy = torch.arange(H, dtype=torch.float64).view(1, -1, 1)
    xx = torch.arange(W, dtype=torch.float64).view(1, 1, -1)
    dist = ((yy - cy.view(-1, 1, 1)) ** 2 + (xx - cx.view(-1, 1, 1)) ** 2).sqrt()
    profile = (radius + 0.5 - dist).clamp(0, 1)  # (B, H, W)
    disk = (contrast * sign.view(-1, 1, 1) * profile).unsqueeze(1).to(x.dtype)
    return x + disk, profile > 0.5


@torch.no_grad()
def detection_rates(
    operator,
    noise,
    truth: torch.Tensor,
    *,
    contrast: float,
    radius: float,
    alpha: float = 0.05,
    window: int = 16,
    control: str = "sidak",
    margin: int = 2,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Positive/negative control of the audit on ``truth`` ``(B, C, H, W)`` (the ideal solver).

    Measures ``y = noise(A(truth))`` once; audits ``x̂ = truth`` (false flags) and ``x̂ = truth +``
    a planted disk (:func:`plant_disk`; recall). A planted tile counts as *detected by region* when
    a flagged region overlaps the disk's footprint, *by tile* when its tile test rejects.
    Returns rates in ``[0, 1]``: ``false_tile``, ``false_region``, ``false_any``, ``recall_tile``,
    ``recall_region``, ``recall_any``, and ``tiles`` (B).
    """
    y = noise.sample(operator(truth), generator)
    clean = audit(truth, y, operator, noise, alpha=alpha, window=window, control=control)
    planted, footprint = plant_disk(truth, contrast, radius, generator, margin=margin)
    hal = audit(planted, y, operator, noise, alpha=alpha, window=window, control=control)
    if hal.flag_map is not None:
        hit = (hal.flag_map & footprint.to(hal.flag_map.device)).flatten(1).any(1)
    else:
        hit = torch.zeros_like(hal.tile_flag)
    mean = lambda t: float(t.double().mean())  # noqa: E731
    return {
        "tiles": int(truth.shape[0]),
        "false_tile": mean(clean.tile_flag),
        "false_region": mean(clean.region_any),
        "false_any": mean(clean.flagged),
        "recall_tile": mean(hal.tile_flag),
        "recall_region": mean(hit),
        "recall_any": mean(hal.tile_flag | hit),
    }
