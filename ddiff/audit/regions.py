"""Regional tests: observed entries, measurement grid ↔ image grid, windows, and :func:`audit`
(the tile test plus the disjoint-window tests of a local operator).

Room: ``ddiff`` — torch and numpy only (see :mod:`ddiff.audit`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ddiff.metrics import chi2_reduced, residual_gap
from ddiff.solvers.observed import observed_mask

from .stats import CONTROLS, elementwise_stats, fwer_threshold, noise_kind, scaled_chi2_cdf, scaled_chi2_sf

__all__ = ["AuditResult", "audit", "observed_mask", "image_grid_factor", "to_image_grid", "window_sums"]


# ----------------------------------------------------------------------------------------------
# Geometry: observed entries, measurement grid ↔ image grid, windows
# ----------------------------------------------------------------------------------------------
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
    kind = noise_kind(noise)
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
