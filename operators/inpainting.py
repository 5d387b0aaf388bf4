"""Inpainting: ``A x = m ⊙ x`` with a binary mask shared by all channels (``baselines_spec.md`` §2.4).

Room: ``operators`` — torch and numpy.

``m ∈ {0, 1}^{H×W}`` (1 = observed) broadcasts over batch and channels; the output has the input's
shape, so measurement noise is added to the hidden entries too (DPS/DAPS convention). Masks are
drawn with ``numpy.random.RandomState(seed)`` in the reference order, once per operator: at
construction when ``image_size`` is given, else on the first call (DAPS draws its mask once and
reuses it for the whole dataset). A later call with a different image size is an error.

Both operators are self-adjoint projections and have the closed form
``solve_regularized(y, z, ρ) = (m ⊙ y + ρ z) / (m + ρ)`` of ``argmin ‖y − m⊙x‖² + ρ‖x − z‖²``.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import ForwardModel, check_image, register

__all__ = ["MaskOperator", "InpaintingBox", "InpaintingRandom", "box_mask", "random_mask"]


def _size_pair(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(v) for v in image_size)
    return h, w


def box_mask(h: int, w: int, box_size=128, margin=(16, 16), rng=None) -> np.ndarray:
    """The DPS/DAPS box mask: ``(h, w)`` float32, 0 on a random ``box`` rectangle, 1 elsewhere.

    Draw order (numpy, high exclusive): box height, box width from ``randint(lo, hi)`` where
    ``box_size`` is an int (``lo = box_size, hi = box_size + 1``: no randomness, one draw each) or a
    ``(lo, hi)`` range; then top ``t = randint(m_h, h − m_h − bh)``, left ``l = randint(m_w, w − m_w − bw)``.
    """
    rng = rng if isinstance(rng, np.random.RandomState) else np.random.RandomState(rng)
    lo, hi = (box_size, box_size + 1) if isinstance(box_size, (int, np.integer)) else box_size
    mh, mw = _size_pair(margin)
    bh = rng.randint(int(lo), int(hi))
    bw = rng.randint(int(lo), int(hi))
    if h - mh - bh <= mh or w - mw - bw <= mw:
        raise ValueError(
            f"inpainting_box: a {bh}x{bw} box with margin {mh}x{mw} does not fit a {h}x{w} image "
            f"(need h > {2 * mh + bh} and w > {2 * mw + bw}); reduce box_size or margin"
        )
    t = rng.randint(mh, h - mh - bh)
    left = rng.randint(mw, w - mw - bw)
    m = np.ones((h, w), dtype=np.float32)
    m[t : t + bh, left : left + bw] = 0
    return m


def random_mask(h: int, w: int, prob=0.7, rng=None) -> np.ndarray:
    """The DPS/DAPS random-pixel mask: ``(h, w)`` float32 with ``int(h·w·p)`` pixels set to 0.

    ``p = rng.uniform(lo, hi)`` with ``prob`` a ``(lo, hi)`` range or a float (``lo = hi = prob``;
    the draw is still made so the stream matches); then ``rng.choice(h·w, int(h·w·p),
    replace=False)`` picks the hidden pixels in row-major order.
    """
    rng = rng if isinstance(rng, np.random.RandomState) else np.random.RandomState(rng)
    lo, hi = (prob, prob) if isinstance(prob, (int, float)) else prob
    if not (0.0 <= float(lo) <= float(hi) <= 1.0):
        raise ValueError(f"inpainting_random: prob must lie in [0, 1] (a float or a (lo, hi) range), got {prob}")
    p = rng.uniform(float(lo), float(hi))
    total = h * w
    hidden = rng.choice(total, int(total * p), replace=False)
    m = np.ones(total, dtype=np.float32)
    m[hidden] = 0
    return m.reshape(h, w)


class MaskOperator(ForwardModel):
    """``A x = m ⊙ x`` for a fixed or lazily drawn ``(H, W)`` mask; linear, self-adjoint, ``halo`` 0."""

    linear = True
    halo = 0

    def __init__(self, mask=None, name: str = "mask"):
        super().__init__()
        self.name = name
        self.register_buffer("mask", None if mask is None else torch.as_tensor(np.asarray(mask), dtype=torch.float32))

    def draw_mask(self, h: int, w: int) -> np.ndarray:  # overridden by the random operators
        raise ValueError(f"{self.name}: no mask set; pass one or an image_size")

    def _mask_for(self, x: torch.Tensor, who: str) -> torch.Tensor:
        check_image(x, who)
        h, w = x.shape[-2:]
        if self.mask is None:
            self.mask = torch.as_tensor(self.draw_mask(h, w), dtype=torch.float32, device=x.device)
        if tuple(self.mask.shape) != (h, w):
            raise ValueError(
                f"{self.name}: the mask was drawn for {tuple(self.mask.shape)} images but got {h}x{w}; "
                "build a new operator (or pass image_size) for this size"
            )
        return self.mask.to(device=x.device, dtype=x.real.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._mask_for(x, self.name)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self._mask_for(y, f"{self.name}.adjoint")

    def solve_regularized(self, y: torch.Tensor, z: torch.Tensor, rho: float) -> torch.Tensor:
        """``argmin_x ‖y − m⊙x‖² + ρ‖x − z‖² = (m⊙y + ρ z)/(m + ρ)`` (``m² = m``), ``ρ > 0``."""
        if not float(rho) > 0:
            raise ValueError(f"{self.name}.solve_regularized: rho must be > 0, got {rho}")
        m = self._mask_for(y, f"{self.name}.solve_regularized")
        return (m * y + rho * z) / (m + rho)

    def tile_operator(self, top: int, left: int, height: int, width: int) -> "MaskOperator":
        if self.mask is None:
            raise ValueError(f"{self.name}: draw the mask (pass image_size or call once) before tiling")
        crop = self.mask[top : top + height, left : left + width]
        if tuple(crop.shape) != (height, width):
            raise ValueError(f"{self.name}: tile {top, left, height, width} exceeds the {tuple(self.mask.shape)} mask")
        return MaskOperator(crop.clone(), name=f"{self.name}[tile]")

    def extra_repr(self) -> str:
        shape = None if self.mask is None else tuple(self.mask.shape)
        return f"mask={shape}, halo=0"


@register("inpainting_box")
class InpaintingBox(MaskOperator):
    """Box inpainting: a ``box_size``² hole at a seeded random position at least ``margin`` from the edge.

    Defaults: 128×128 box, margin (16, 16) as DPS (the paper follows DPS [7]); DAPS uses
    ``margin=32`` — with ``seed=42`` and margin 32 the box sits at top 70, left 83 (§2.4).
    """

    def __init__(self, box_size=128, margin=(16, 16), seed: int = 42, image_size=None):
        super().__init__(name="inpainting_box")
        self.box_size, self.margin, self.seed = box_size, _size_pair(margin), int(seed)
        if image_size is not None:
            self.mask = torch.as_tensor(self.draw_mask(*_size_pair(image_size)))

    def draw_mask(self, h: int, w: int) -> np.ndarray:
        return box_mask(h, w, self.box_size, self.margin, np.random.RandomState(self.seed))


@register("inpainting_random")
class InpaintingRandom(MaskOperator):
    """Random-pixel inpainting: a seeded fraction ``prob`` of pixels hidden (70 % by default).

    ``prob`` a float or a ``(lo, hi)`` range (DAPS: ``(0.70, 0.71)``, which with ``seed=42`` draws
    p = 0.70375, 46,120 hidden pixels at 256²). The same mask on every channel and every image.
    """

    def __init__(self, prob=0.7, seed: int = 42, image_size=None):
        super().__init__(name="inpainting_random")
        self.prob, self.seed = prob, int(seed)
        if image_size is not None:
            self.mask = torch.as_tensor(self.draw_mask(*_size_pair(image_size)))

    def draw_mask(self, h: int, w: int) -> np.ndarray:
        return random_mask(h, w, self.prob, np.random.RandomState(self.seed))
