"""Super-resolution: the MATLAB-style bicubic "Resizer" downsampler of DPS/DAPS (``baselines_spec.md`` §2.1).

Room: ``operators`` — torch and numpy.

Per axis the Resizer is a fixed linear map ``M`` (``out × L``); the image map is
``A x = M_H · x · M_Wᵀ`` per channel, with adjoint ``Aᴴ y = M_Hᵀ · y · M_W``. ``M`` is built
exactly as the Resizer builds its weights (Keys cubic, a = −0.5, antialiased when downscaling,
half-sample symmetric boundary), so for ×4 each output is the 16-tap closed form
``out[j] = Σ_{m=0}^{15} w_m x̃[4j − 6 + m]``, ``w_m ∝ cubic(0.25·(7.5 − m))``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._extend import extension_index
from .base import ForwardModel, check_image, register

__all__ = ["cubic", "resize_matrix", "SuperResolution"]


def cubic(s: np.ndarray) -> np.ndarray:
    """Keys cubic with ``a = −0.5`` (MATLAB ``imresize``), support ``|s| ≤ 2``."""
    a = np.abs(s)
    a2, a3 = a * a, a * a * a
    return (1.5 * a3 - 2.5 * a2 + 1) * (a <= 1) + (-0.5 * a3 + 2.5 * a2 - 4 * a + 2) * ((a > 1) & (a <= 2))


def _taps(length: int, scale: float):
    """Resizer's (weights, unmirrored 0-based tap indices) for one axis; ``scale`` = out/in."""
    out_len = int(math.ceil(length * scale))
    antialias = scale < 1
    width = 4.0 / scale if antialias else 4.0
    out_coords = np.arange(1, out_len + 1, dtype=np.float64)
    # Resizer centres the output grid when length·scale is not an integer (zero shift otherwise).
    shifted = out_coords - (out_len - length * scale) / 2
    u = shifted / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = left[:, None] + np.arange(math.ceil(width) + 2) - 1
    arg = u[:, None] - taps - 1
    w = scale * cubic(scale * arg) if antialias else cubic(arg)
    sums = w.sum(axis=1, keepdims=True)
    sums[sums == 0] = 1.0
    return w / sums, taps.astype(np.int64)


def resize_matrix(length: int, scale: float) -> np.ndarray:
    """The ``(ceil(length·scale), length)`` float64 matrix of the Resizer along one axis."""
    w, taps = _taps(length, scale)
    idx = extension_index(length, int(taps.min()), int(taps.max()) + 1, "symmetric").numpy()
    src = idx[taps - taps.min()]
    m = np.zeros((w.shape[0], length), dtype=np.float64)
    np.add.at(m, (np.repeat(np.arange(w.shape[0]), w.shape[1]), src.ravel()), w.ravel())
    return m


@register("super_resolution")
class SuperResolution(ForwardModel):
    """×``scale`` bicubic downsampling with antialiasing (DPS ``super_resolution`` / DAPS ``down_sampling``).

    ``x``: ``(B, C, H, W)``; output ``(B, C, ceil(H/scale), ceil(W/scale))`` (64² for 256², ×4).
    Linear; ``adjoint`` is the exact transpose (not the nearest-neighbour upsampling DPS defines
    but never uses). ``halo`` (integer ``scale`` only): input pixels of context, a multiple of
    ``scale``, that a tile whose offset is a multiple of ``scale`` needs (8 for ×4); ``None`` for
    non-integer factors.
    """

    linear = True

    def __init__(self, scale: float = 4):
        super().__init__()
        scale = float(scale)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"super_resolution: scale must be a positive finite factor, got {scale}")
        self.scale = scale
        self._mats: dict = {}
        if scale.is_integer() and scale >= 1:
            f = int(scale)
            length = 64 * f  # any length well above the support; look at an interior output
            w, taps = _taps(length, 1 / scale)
            j = w.shape[0] // 2
            nz = taps[j][w[j] != 0]
            need = max(f * j - nz.min(), nz.max() - (f * j + f - 1), 0)
            self.halo = int(math.ceil(need / f) * f)
        else:
            self.halo = None

    def _matrices(self, h: int, w: int, dtype, device):
        key = (h, w, dtype, device)
        if key not in self._mats:
            mh = torch.as_tensor(resize_matrix(h, 1 / self.scale), dtype=dtype, device=device)
            mw = torch.as_tensor(resize_matrix(w, 1 / self.scale), dtype=dtype, device=device)
            self._mats = {key: (mh, mw)}  # keep only the latest size
        return self._mats[key]

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        return int(math.ceil(h / self.scale)), int(math.ceil(w / self.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, "super_resolution")
        mh, mw = self._matrices(x.shape[-2], x.shape[-1], x.real.dtype, x.device)
        if x.is_complex():
            mh, mw = mh.to(x.dtype), mw.to(x.dtype)
        return mh @ x @ mw.transpose(0, 1)

    def adjoint(self, y: torch.Tensor, image_size=None) -> torch.Tensor:
        """``Aᴴ y``; the high-resolution size is ``image_size`` or ``scale ×`` the size of ``y``."""
        check_image(y, "super_resolution.adjoint")
        if image_size is None:
            h, w = (int(round(n * self.scale)) for n in y.shape[-2:])
        else:
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        mh, mw = self._matrices(h, w, y.real.dtype, y.device)
        if tuple(y.shape[-2:]) != (mh.shape[0], mw.shape[0]):
            raise ValueError(f"super_resolution.adjoint: y of size {tuple(y.shape[-2:])} does not come from {h}x{w} images")
        if y.is_complex():
            mh, mw = mh.to(y.dtype), mw.to(y.dtype)
        return mh.transpose(0, 1) @ y @ mw

    def tile_operator(self, top: int, left: int, height: int, width: int) -> "SuperResolution":
        if self.halo is None or top % int(self.scale) or left % int(self.scale):
            raise ValueError(f"super_resolution: tiles need offsets that are multiples of the integer scale {self.scale}")
        return self

    def extra_repr(self) -> str:
        return f"scale={self.scale}, halo={self.halo}"
