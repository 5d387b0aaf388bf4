"""Fourier-domain forward models: phase retrieval (paper) and Cartesian MRI (domain model).

Room: ``operators`` — torch and numpy.

Both use the centred orthonormal 2-D DFT of fastMRI / DPS (``fft2c``):
``F_c(v) = fftshift(fft2(ifftshift(v), norm="ortho"))`` over the last two axes — unitary, so
``F_cᴴ = F_c⁻¹ = fftshift(ifft2(ifftshift(·), norm="ortho"))``. Both are global (``halo = None``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import ForwardModel, check_image, register

__all__ = ["fft2c", "ifft2c", "PhaseRetrieval", "MRICartesian", "variable_density_lines"]

_DIMS = (-2, -1)


def fft2c(v: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D DFT over the last two axes (complex output)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(v, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(v: torch.Tensor) -> torch.Tensor:
    """Inverse (= adjoint) of :func:`fft2c`."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(v, dim=_DIMS), norm="ortho"), dim=_DIMS)


@register("phase_retrieval")
class PhaseRetrieval(ForwardModel):
    """Fourier phase retrieval (DPS, ``baselines_spec.md`` §2.5): ``A(x) = |F_c(pad(x))|``.

    ``pad = int(oversample/8 · H)`` zeros on each side of each axis (``W`` likewise), so
    ``oversample = 2.0`` at 256² gives 384² (1.5× per side, as the reference code does).
    ``x``: ``(B, C, H, W)`` real; output ``(B, C, H + 2 pad_h, W + 2 pad_w)``, real, ≥ 0.

    ``unit_range=False`` (default, DPS) measures ``x`` ∈ [−1, 1] as is; ``unit_range=True`` measures
    ``(x + 1)/2`` as DAPS does — the two measurements are not interchangeable. Nonlinear; global.
    The gradient of ``|z|`` at ``z = 0`` is taken as 0 (torch's convention).
    """

    linear = False
    halo = None

    def __init__(self, oversample: float = 2.0, unit_range: bool = False):
        super().__init__()
        if not float(oversample) >= 0:
            raise ValueError(f"phase_retrieval: oversample must be >= 0, got {oversample}")
        self.oversample, self.unit_range = float(oversample), bool(unit_range)

    def padding(self, h: int, w: int) -> tuple[int, int]:
        """Zero padding ``(pad_h, pad_w)`` on each side for an ``h × w`` image."""
        return int(self.oversample / 8 * h), int(self.oversample / 8 * w)

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        ph, pw = self.padding(h, w)
        return h + 2 * ph, w + 2 * pw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, "phase_retrieval")
        if x.is_complex():
            raise ValueError("phase_retrieval: expected a real image, got a complex tensor")
        if self.unit_range:
            x = (x + 1) / 2
        ph, pw = self.padding(*x.shape[-2:])
        return fft2c(F.pad(x, (pw, pw, ph, ph))).abs()

    def extra_repr(self) -> str:
        return f"oversample={self.oversample}, unit_range={self.unit_range}, halo=None"


def variable_density_lines(n: int, acceleration: float, center_fraction: float = 0.08, decay: float = 2.0,
                           rng=None) -> np.ndarray:
    """Sorted indices (in centred k-space, ``0 … n−1``, DC at ``n // 2``) of the sampled lines.

    ``round(n / acceleration)`` lines in all: the ``round(center_fraction · n)`` lines closest to DC
    are always sampled (auto-calibration region); the rest are drawn without replacement with
    probability ``∝ (1 − |k|/(n/2))^decay + 10⁻³`` (``k`` = offset from DC), i.e. denser near DC.
    """
    if not acceleration >= 1:
        raise ValueError(f"mri_cartesian: acceleration must be >= 1, got {acceleration}")
    if not 0 <= center_fraction <= 1:
        raise ValueError(f"mri_cartesian: center_fraction must be in [0, 1], got {center_fraction}")
    rng = rng if isinstance(rng, np.random.RandomState) else np.random.RandomState(rng)
    total = max(1, int(round(n / acceleration)))
    offsets = np.arange(n) - n // 2
    order = np.argsort(np.abs(offsets), kind="stable")
    n_center = min(total, max(1, int(round(center_fraction * n))))
    center = order[:n_center]
    rest = order[n_center:]
    density = (1 - np.abs(offsets[rest]) / (n / 2)).clip(0, 1) ** decay + 1e-3
    picked = rng.choice(rest, total - n_center, replace=False, p=density / density.sum())
    return np.sort(np.concatenate([center, picked]))


@register("mri_cartesian")
class MRICartesian(ForwardModel):
    """Single-coil Cartesian MRI: ``A x = S F_c x``, ``S`` keeps the sampled k-space rows.

    ``x``: ``(B, C, H, W)`` real (default) or complex; output complex ``(B, C, n_lines, W)`` — only
    the acquired phase-encode rows, so every measured value is a real acquisition (noise models see
    complex entries as two real values, see ``GaussianNoise``). Rows come from
    :func:`variable_density_lines` at ``acceleration`` R, seeded; drawn at construction when
    ``image_size`` is given, else on the first call.

    Adjoint: ``Aᴴ y = F_cᴴ Sᵀ y`` (zero-filled inverse FFT). With ``real_image=True`` (default) the
    model is a map from real images and its adjoint for the real inner product ``Re⟨·,·⟩`` is
    ``Re(F_cᴴ Sᵀ y)``; ``real_image=False`` returns the complex adjoint. ``A Aᴴ = I``. Global.
    """

    linear = True
    halo = None

    def __init__(self, acceleration: float = 4.0, center_fraction: float = 0.08, decay: float = 2.0, seed: int = 0,
                 image_size=None, real_image: bool = True, lines=None):
        super().__init__()
        self.acceleration, self.center_fraction, self.decay = float(acceleration), float(center_fraction), float(decay)
        self.seed, self.real_image = int(seed), bool(real_image)
        self.register_buffer("lines", None)
        self.image_shape: tuple[int, int] | None = None
        if lines is not None:
            if image_size is None:
                raise ValueError("mri_cartesian: lines= (the acquired rows) needs image_size=")
            h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            rows = np.unique(np.asarray(lines, dtype=np.int64).ravel())
            if rows.size == 0 or rows.min() < 0 or rows.max() >= int(h):
                raise ValueError(f"mri_cartesian: lines must be row indices in [0, {int(h)}), got {rows.size} "
                                 f"values in [{rows.min() if rows.size else '-'}, {rows.max() if rows.size else '-'}]")
            self.lines = torch.as_tensor(rows, dtype=torch.long)
            self.image_shape = (int(h), int(w))
        elif image_size is not None:
            h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            self._draw(int(h), int(w))
        else:  # validate parameters now rather than at the first call
            variable_density_lines(8, self.acceleration, self.center_fraction, self.decay, 0)

    def _draw(self, h: int, w: int) -> None:
        rows = variable_density_lines(h, self.acceleration, self.center_fraction, self.decay, self.seed)
        self.lines = torch.as_tensor(rows, dtype=torch.long)
        self.image_shape = (h, w)

    def _rows(self, h: int, w: int, device, who: str) -> torch.Tensor:
        if self.lines is None:
            self._draw(h, w)
        if self.image_shape != (h, w):
            raise ValueError(f"{who}: operator built for {self.image_shape} images, got {h}x{w}; build a new one")
        return self.lines.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, "mri_cartesian")
        if x.is_complex() and self.real_image:
            raise ValueError("mri_cartesian: got a complex image but the operator was built with real_image=True; "
                             "build it with real_image=False for complex images")
        rows = self._rows(*x.shape[-2:], x.device, "mri_cartesian")
        return fft2c(x).index_select(-2, rows)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.ndim != 4:
            raise ValueError(f"mri_cartesian.adjoint: expected (B, C, n_lines, W) k-space, got {getattr(y, 'shape', y)}")
        if self.image_shape is None:
            raise ValueError("mri_cartesian.adjoint: the line mask is not drawn yet; pass image_size or call A(x) first")
        h, w = self.image_shape
        rows = self._rows(h, w, y.device, "mri_cartesian.adjoint")
        if y.shape[-2:] != (rows.numel(), w):
            raise ValueError(f"mri_cartesian.adjoint: expected k-space (..., {rows.numel()}, {w}), got {tuple(y.shape)}")
        if not y.is_complex():
            y = y.to(torch.complex128 if y.dtype == torch.float64 else torch.complex64)
        full = y.new_zeros(y.shape[:-2] + (h, w)).index_copy(-2, rows, y)
        x = ifft2c(full)
        return x.real if self.real_image else x

    def mask(self) -> torch.Tensor:
        """The ``(H, W)`` 0/1 sampling mask in centred k-space (for display)."""
        if self.image_shape is None:
            raise ValueError("mri_cartesian: the line mask is not drawn yet")
        m = torch.zeros(self.image_shape)
        m[self.lines] = 1
        return m

    def extra_repr(self) -> str:
        return f"acceleration={self.acceleration}, center_fraction={self.center_fraction}, seed={self.seed}, halo=None"
