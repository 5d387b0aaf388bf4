"""Uncertainty from K seeds: per-pixel spread, its re-measurement in noise units, the data
constraint ``diag(AᵀA)`` and the prior-filled map (reported, never flagged).

Room: ``ddiff`` — torch and numpy only (see :mod:`ddiff.audit`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .regions import image_grid_factor, to_image_grid
from .stats import entry_sd

__all__ = ["UncertaintyResult", "uncertainty"]


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


def _diag_ata(operator, x_like: torch.Tensor, probes: int, generator: torch.Generator,
              weight: torch.Tensor | None = None) -> torch.Tensor | None:
    """``diag(Aᴴ W A)`` summed over channels, (B, H, W) float64 (``W`` = ``weight`` per measurement entry,
    default 1): exact from a mask, else Hutchinson ``E[z ⊙ Aᴴ W A z]`` with Rademacher ``z``
    (``probes`` draws), ``None`` when ``A`` is nonlinear."""
    mask = getattr(operator, "mask", None)
    if isinstance(mask, torch.Tensor):
        try:
            mk = torch.broadcast_to((mask != 0).double(), x_like.shape)
            return (mk if weight is None else mk * torch.broadcast_to(weight.double(), x_like.shape)).sum(1)
        except RuntimeError:
            pass
    if not getattr(operator, "linear", False):
        return None
    acc = torch.zeros(x_like.shape, dtype=torch.float64, device=x_like.device)
    for _ in range(probes):
        z = (torch.randint(0, 2, x_like.shape, generator=generator).to(x_like) * 2 - 1)
        az = operator(z)
        ata = operator.adjoint(az if weight is None else az * weight.to(az.real.dtype))
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
