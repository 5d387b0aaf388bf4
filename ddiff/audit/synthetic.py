"""Synthetic-test helpers: smooth random truths, planted hallucinations (positive controls) and
the audit's false-flag / recall rates on them (used by ``benchmarks/audit.py`` and the tests).

Room: ``ddiff`` — torch and numpy only (see :mod:`ddiff.audit`).
"""
from __future__ import annotations

import math

import torch

from .regions import audit

__all__ = ["smooth_field", "plant_disk", "detection_rates"]


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
