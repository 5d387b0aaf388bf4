"""Which measured entries carry information about the image, and what ``y`` holds elsewhere.

Room: ``ddiff`` — pure torch. Shared by every solver (``Solver.solve`` replaces ``y`` at unobserved
entries before any solver sees it), the discrepancy x-update (``m`` counts observed entries) and
the audit (``ddiff.audit.observed_mask``), so the three count the same ``m``.
"""
from __future__ import annotations

import torch

__all__ = ["observed_mask", "observed_measurement"]


def observed_mask(operator, x_like: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boolean mask of ``y``'s shape: the entries that carry information about the image.

    ``operator.mask`` when it broadcasts to ``y`` (inpainting masks, ``operators.Validity``);
    otherwise, for a linear operator, the rows of ``A`` that are not identically zero (``A z ≠ 0``
    for a Gaussian probe ``z`` — a non-zero row gives 0 with probability 0); a nonlinear operator
    observes every entry.
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
            z = torch.randn(x_like.shape, generator=g, dtype=x_like.real.dtype).to(x_like.device)
            obs = operator(z) != 0
        if obs.shape != y.shape:
            raise ValueError(f"operator output {tuple(obs.shape)} does not match y {tuple(y.shape)}")
        return obs
    return torch.ones(y.shape, dtype=torch.bool, device=y.device)


def observed_measurement(operator, x_like: torch.Tensor, y: torch.Tensor,
                         observed: torch.Tensor | None = None) -> torch.Tensor:
    """``y`` with every unobserved entry set to what ``A`` predicts there for any image (0 for a
    linear operator's zero rows, ``Validity``'s ``fill``), so it drops out of every likelihood,
    gradient and discrepancy — whatever the file held there (noise, 0, NaN, a dead pixel's value)."""
    obs = observed_mask(operator, x_like, y) if observed is None else observed
    if bool(obs.all()):
        return y
    with torch.no_grad():
        there = operator(torch.zeros_like(x_like))
    return torch.where(obs, y, there.to(y.dtype))
