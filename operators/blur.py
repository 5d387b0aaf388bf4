"""Shift-invariant blurs: depthwise cross-correlation with a fixed kernel after boundary extension.

Room: ``operators`` — torch and numpy (Pillow only inside ``motion_kernel`` for the reference
motion kernels).

``KernelBlur`` is the common engine (``baselines_spec.md`` §2.2–2.3):

    y[b, c, i, j] = Σ_{a, d} k[a, d] · x_ext[b, c, i + a − p_h, j + d − p_w],

``k`` of odd size ``(2p_h+1) × (2p_w+1)``, ``x_ext`` the boundary extension (``"reflect"``:
``nn.ReflectionPad2d``, no edge repeat). This is DPS/DAPS's ``ReflectionPad2d(p)`` followed by a
depthwise ``Conv2d(C, C, k, groups=C, bias=False)`` with the same kernel on every channel — a
cross-correlation, not a convolution. Output shape = input shape. Rows/columns of the kernel that
are exactly zero are skipped (the sum is unchanged), and separable kernels run as two 1-D passes.

The adjoint is the exact transpose: ``conv_transpose2d`` with the same kernel, then scatter-add of
the extension (``operators._extend``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ._extend import extend, extend_adjoint, extension_index
from .base import ForwardModel, check_image, register
from .motion_kernel import motion_kernel

__all__ = ["KernelBlur", "GaussianBlur", "MotionBlur", "gaussian_kernel"]


def _as_kernel(k) -> torch.Tensor:
    k = torch.as_tensor(np.asarray(k) if not isinstance(k, torch.Tensor) else k).to(torch.float64)
    if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"blur kernel must be a 2-D array with odd sides, got shape {tuple(k.shape)}")
    if not torch.isfinite(k).all():
        raise ValueError("blur kernel contains NaN or Inf values")
    return k


class KernelBlur(ForwardModel):
    """``A x = k ⋆ ext(x)`` per channel (see module docstring); linear, ``halo`` = kernel radius.

    Parameters
    ----------
    kernel : 2-D array ``(kh, kw)``, odd sides, stored in float64 and cast to the input dtype.
    boundary : ``"reflect"`` (DPS/DAPS, default) or ``"symmetric"`` (edge repeated).
    separable : optional pair ``(k_rows, k_cols)`` of 1-D kernels with ``outer = kernel``; used
        for speed only.

    Input ``x``: ``(B, C, H, W)`` real or complex, ``H, W > kernel radius``. Output: same shape.
    """

    linear = True

    def __init__(self, kernel, boundary: str = "reflect", separable=None, name: str = "kernel_blur"):
        super().__init__()
        k = _as_kernel(kernel)
        if boundary not in ("reflect", "symmetric"):
            raise ValueError(f"boundary must be 'reflect' or 'symmetric', got {boundary!r}")
        self.boundary = boundary
        self.name = name
        self.register_buffer("kernel", k)
        self.pad_h, self.pad_w = (k.shape[0] - 1) // 2, (k.shape[1] - 1) // 2
        self.halo = max(self.pad_h, self.pad_w)
        # Support of the nonzero entries: zero rows/columns add exact zeros, so skip them.
        nz_r = torch.nonzero(k.abs().sum(1)).flatten()
        nz_c = torch.nonzero(k.abs().sum(0)).flatten()
        if nz_r.numel() == 0:
            raise ValueError("blur kernel is identically zero")
        self.r0, self.r1 = int(nz_r[0]), int(nz_r[-1])
        self.c0, self.c1 = int(nz_c[0]), int(nz_c[-1])
        self.register_buffer("kernel_trim", k[self.r0 : self.r1 + 1, self.c0 : self.c1 + 1].clone())
        if separable is not None:
            kr, kc = (torch.as_tensor(np.asarray(v), dtype=torch.float64).flatten() for v in separable)
            if not torch.allclose(torch.outer(kr, kc), k, atol=1e-12, rtol=0):
                raise ValueError("separable factors do not multiply to the kernel")
            self.register_buffer("k_rows", kr[self.r0 : self.r1 + 1].clone())
            self.register_buffer("k_cols", kc[self.c0 : self.c1 + 1].clone())
        else:
            self.k_rows = self.k_cols = None

    # -- helpers --------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, who: str) -> None:
        check_image(x, who)
        h, w = x.shape[-2:]
        if self.pad_h >= h or self.pad_w >= w:
            kh, kw = self.kernel.shape
            raise ValueError(
                f"{self.name}: kernel {kh}x{kw} is too large for a {h}x{w} image (reflect padding "
                f"of {self.pad_h}x{self.pad_w} needs at least {self.pad_h + 1}x{self.pad_w + 1} pixels); "
                "use a smaller kernel or a larger image"
            )

    def _indices(self, h: int, w: int, device):
        rows = extension_index(h, self.r0 - self.pad_h, h + self.r1 - self.pad_h, self.boundary, device)
        cols = extension_index(w, self.c0 - self.pad_w, w + self.c1 - self.pad_w, self.boundary, device)
        return rows, cols

    def _weights(self, dtype, device):
        if self.k_rows is not None:
            kr = self.k_rows.to(device=device, dtype=dtype)
            kc = self.k_cols.to(device=device, dtype=dtype)
            return kr.view(1, 1, -1, 1), kc.view(1, 1, 1, -1)
        return (self.kernel_trim.to(device=device, dtype=dtype)[None, None],)

    # -- operator -------------------------------------------------------------------------------
    def _correlate(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for a real ``(B, C, H, W)`` tensor (no checks, no autograd wrapper)."""
        b, c, h, w = x.shape
        rows, cols = self._indices(h, w, x.device)
        z = extend(x, rows, cols).reshape(b * c, 1, rows.numel(), cols.numel())
        for wt in self._weights(x.dtype, x.device):
            z = F.conv2d(z, wt)
        return z.reshape(b, c, h, w)

    def _correlate_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y``: full correlation with the flipped kernel (= ``conv_transpose2d``, whose CPU path is
        several times slower), then the scatter-add adjoint of the extension."""
        b, c, h, w = y.shape
        rows, cols = self._indices(h, w, y.device)
        z = y.reshape(b * c, 1, h, w)
        for wt in reversed(self._weights(y.dtype, y.device)):
            kh, kw = wt.shape[-2:]
            z = F.conv2d(F.pad(z, (kw - 1, kw - 1, kh - 1, kh - 1)), wt.flip(-2, -1))
        z = z.reshape(b, c, rows.numel(), cols.numel())
        return extend_adjoint(z, rows, cols, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.name)
        if x.is_complex():
            return torch.complex(self.forward(x.real), self.forward(x.imag))
        return _LinearFn.apply(x, self)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, f"{self.name}.adjoint")
        if y.is_complex():
            return torch.complex(self.adjoint(y.real), self.adjoint(y.imag))
        return _AdjointFn.apply(y, self)

    def extra_repr(self) -> str:
        kh, kw = self.kernel.shape
        return f"kernel={kh}x{kw}, boundary={self.boundary!r}, halo={self.halo}"


class _LinearFn(torch.autograd.Function):
    """``A x`` whose backward is the explicit adjoint (faster than autograd through conv2d on CPU)."""

    @staticmethod
    def forward(ctx, x, op):
        ctx.op = op
        return op._correlate(x)

    @staticmethod
    def backward(ctx, g):
        return _AdjointFn.apply(g, ctx.op), None


class _AdjointFn(torch.autograd.Function):
    """``Aᵀ y`` whose backward is ``A`` (so gradients of gradients work)."""

    @staticmethod
    def forward(ctx, y, op):
        ctx.op = op
        return op._correlate_adjoint(y)

    @staticmethod
    def backward(ctx, g):
        return _LinearFn.apply(g, ctx.op), None


def gaussian_kernel_1d(size: int, std: float, truncate: float = 4.0) -> np.ndarray:
    """1-D factor of ``scipy.ndimage.gaussian_filter`` applied to a centred delta of length ``size``.

    Taps ``w_i ∝ exp(−i²/(2 std²))`` for ``|i| ≤ int(truncate·std + 0.5)``, normalised, placed at the
    centre; taps falling outside the array fold back by scipy's ``mode="reflect"`` (edge repeated),
    so small ``size`` also matches scipy exactly. float64, sums to 1.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {size}")
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"std must be a positive finite number, got {std}")
    radius = int(truncate * float(std) + 0.5)
    taps = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * taps.astype(np.float64) ** 2 / float(std) ** 2)
    w /= w.sum()
    centre = size // 2
    pos = extension_index(size, centre - radius, centre + radius + 1, "symmetric").numpy()
    out = np.zeros(size, dtype=np.float64)
    np.add.at(out, pos, w)
    return out


def gaussian_kernel(size: int = 61, std: float = 3.0) -> np.ndarray:
    """The DPS/DAPS ``Blurkernel('gaussian')``: ``gaussian_filter(delta_{size×size}, std)``, float64.

    For 61 / 3.0: 25×25 nonzero support, centred, sum 1, peak 0.017685 (``baselines_spec.md`` §2.2).
    """
    w = gaussian_kernel_1d(size, std)
    return np.outer(w, w)


@register("gaussian_blur")
class GaussianBlur(KernelBlur):
    """Gaussian blur of the paper: 61×61 kernel, ``std`` 3.0, reflect padding, ``halo`` 30.

    ``A x = k_σ ⋆ pad_reflect(x)`` per channel; ``x`` ``(B, C, H, W)`` with ``H, W ≥ 31``.
    """

    def __init__(self, kernel_size: int = 61, std: float = 3.0):
        w = gaussian_kernel_1d(int(kernel_size), float(std))
        super().__init__(np.outer(w, w), separable=(w, w), name="gaussian_blur")
        self.kernel_size, self.std = int(kernel_size), float(std)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, std={self.std}, halo={self.halo}"


@register("motion_blur")
class MotionBlur(KernelBlur):
    """Motion blur of the paper: the ``motionblur`` trajectory kernel (§6), 61×61, intensity 0.5.

    The kernel is drawn from ``numpy.random.RandomState(seed)``. With ``discard_first=True``
    (default) the first kernel drawn is thrown away and the second is used, exactly as DPS/DAPS's
    ``MotionBlurOperator`` does (§2.3); with ``seed=42`` this reproduces DAPS's kernel. The same
    reflect padding / cross-correlation as the Gaussian blur; ``halo`` 30.
    """

    def __init__(self, kernel_size: int = 61, intensity: float = 0.5, seed: int = 42, discard_first: bool = True):
        rng = np.random.RandomState(int(seed))
        if discard_first:
            motion_kernel(int(kernel_size), float(intensity), rng)
        k = motion_kernel(int(kernel_size), float(intensity), rng)
        super().__init__(k.astype(np.float64), name="motion_blur")
        self.kernel_size, self.intensity, self.seed = int(kernel_size), float(intensity), int(seed)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, intensity={self.intensity}, seed={self.seed}, halo={self.halo}"
