"""Point-wise nonlinear forward models.

Room: ``operators`` — torch only.
"""
from __future__ import annotations

import torch

from .base import ForwardModel, check_image, register

__all__ = ["HDR"]


@register("hdr")
class HDR(ForwardModel):
    """High dynamic range (DAPS, ``baselines_spec.md`` §2.7): ``A(x) = clip(scale·x, −1, 1)``, scale 2.

    ``x`` ``(B, C, H, W)`` in ``[−1, 1]``; output same shape in ``[−1, 1]``. Nonlinear, point-wise
    (``halo`` 0); the gradient is ``scale`` where ``|scale·x| < 1`` and 0 where clipped.
    """

    linear = False
    halo = 0

    def __init__(self, scale: float = 2.0):
        super().__init__()
        if not float(scale) > 0:
            raise ValueError(f"hdr: scale must be > 0, got {scale}")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, "hdr")
        if x.is_complex():
            raise ValueError("hdr: expected a real image, got a complex tensor")
        return torch.clamp(self.scale * x, -1.0, 1.0)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, halo=0"
