"""Optical point-spread-function models for real instruments: widefield microscopy and telescopes.

Room: ``operators`` — torch and numpy.

Both blur with a normalised PSF by the same engine as the paper's blurs (``KernelBlur``: reflect
boundary, depthwise cross-correlation; the PSFs here are symmetric so correlation = convolution).
PSFs are integrated over each pixel by ``oversample × oversample`` sub-pixel sampling.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import ForwardModel, check_image, register
from .blur import KernelBlur

__all__ = ["airy_psf", "gaussian_psf", "moffat_psf", "MicroscopyWidefield", "AstroPSF", "Binning"]


def _radial_grid(size: int, oversample: int) -> np.ndarray:
    """Sub-pixel radii (pixels) ``(size, size, o, o)`` around the kernel centre."""
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    c = np.arange(size) - size // 2
    yy = c[:, None, None, None] + sub[None, None, :, None]
    xx = c[None, :, None, None] + sub[None, None, None, :]
    return np.sqrt(yy**2 + xx**2)


def _normalise(k: np.ndarray) -> np.ndarray:
    return k / k.sum()


def airy_psf(size: int, na: float, wavelength: float, pixel_size: float, oversample: int = 5) -> np.ndarray:
    """Born–Wolf in-focus widefield PSF ``I(r) = [2 J₁(v)/v]²``, ``v = 2π NA r / λ`` (sum 1).

    ``wavelength`` (emission) and ``pixel_size`` (in the sample plane) in the same unit.
    """
    r = _radial_grid(size, oversample) * pixel_size
    v = torch.as_tensor(2 * math.pi * na * r / wavelength)
    j1 = torch.special.bessel_j1(v)
    ratio = torch.where(v > 1e-8, 2 * j1 / v.clamp(min=1e-8), torch.ones_like(v))
    return _normalise((ratio**2).numpy().mean(axis=(2, 3)))


def gaussian_psf(size: int, sigma_px: float, oversample: int = 5) -> np.ndarray:
    """Isotropic Gaussian PSF with std ``sigma_px`` pixels, pixel-integrated, sum 1."""
    r = _radial_grid(size, oversample)
    return _normalise(np.exp(-0.5 * (r / sigma_px) ** 2).mean(axis=(2, 3)))


def moffat_psf(size: int, fwhm_px: float, beta: float, oversample: int = 5) -> np.ndarray:
    """Moffat PSF ``∝ (1 + r²/α²)^(−β)``, ``α = FWHM / (2√(2^{1/β} − 1))``, pixel-integrated, sum 1."""
    alpha = fwhm_px / (2 * math.sqrt(2 ** (1 / beta) - 1))
    r = _radial_grid(size, oversample)
    return _normalise(((1 + (r / alpha) ** 2) ** (-beta)).mean(axis=(2, 3)))


def _odd(n: float) -> int:
    n = max(3, int(math.ceil(n)))
    return n if n % 2 else n + 1


class Binning(torch.nn.Module):
    """Average ``b × b`` pixel blocks (``b`` integer): ``(…, H, W) → (…, H/b, W/b)``; adjoint spreads back / b²."""

    def __init__(self, factor: int):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ValueError(f"binning must be a positive integer, got {factor}")
        self.factor = int(factor)

    def forward(self, x):
        b = self.factor
        if x.shape[-1] % b or x.shape[-2] % b:
            raise ValueError(f"binning {b}: image size {tuple(x.shape[-2:])} is not divisible by {b}; crop first")
        return F.avg_pool2d(x, b) if b > 1 else x

    def adjoint(self, y):
        b = self.factor
        if b == 1:
            return y
        return y.repeat_interleave(b, dim=-2).repeat_interleave(b, dim=-1) / (b * b)


@register("microscopy_widefield")
class MicroscopyWidefield(ForwardModel):
    """Widefield fluorescence microscope: PSF blur, then optional integer ``binning`` (block mean).

    ``psf="airy"`` (Born–Wolf, in focus) or ``"gaussian"`` (std ``0.21 λ/NA``, the paraxial
    widefield fit of Zhang et al., Appl. Opt. 2007). ``na``, ``wavelength`` (emission),
    ``pixel_size`` (sample-plane, same unit as ``wavelength``) — defaults: NA 1.4, 520 nm, 100 nm.
    ``kernel_size`` default: covers 4 Airy radii (``4 · 0.61 λ/NA``), odd.
    ``x``: ``(B, C, H, W)``; output ``(B, C, H/b, W/b)`` (``H, W`` divisible by ``b``). Linear.
    ``halo``: PSF radius rounded up to a multiple of ``b`` (tile offsets must be multiples of ``b``).
    Binning averages, so ``A`` keeps intensity units (sum instead by scaling the noise ``gain``).
    """

    linear = True

    def __init__(self, na: float = 1.4, wavelength: float = 0.52, pixel_size: float = 0.1, psf: str = "airy",
                 kernel_size: int | None = None, binning: int = 1, oversample: int = 5):
        super().__init__()
        for name, v in (("na", na), ("wavelength", wavelength), ("pixel_size", pixel_size)):
            if not (float(v) > 0 and math.isfinite(float(v))):
                raise ValueError(f"microscopy_widefield: {name} must be a positive number, got {v}")
        self.na, self.wavelength, self.pixel_size = float(na), float(wavelength), float(pixel_size)
        airy_radius_px = 0.61 * self.wavelength / self.na / self.pixel_size
        size = int(kernel_size) if kernel_size is not None else _odd(2 * 4 * airy_radius_px + 1)
        if psf == "airy":
            k = airy_psf(size, self.na, self.wavelength, self.pixel_size, oversample)
        elif psf == "gaussian":
            k = gaussian_psf(size, 0.21 * self.wavelength / self.na / self.pixel_size, oversample)
        else:
            raise ValueError(f"microscopy_widefield: psf must be 'airy' or 'gaussian', got {psf!r}")
        self.psf_kind = psf
        self.blur = KernelBlur(k, name="microscopy_widefield")
        self.bin = Binning(binning)
        b = self.bin.factor
        self.halo = int(math.ceil(self.blur.halo / b) * b)

    @property
    def kernel(self) -> torch.Tensor:
        return self.blur.kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bin(self.blur(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        check_image(y, "microscopy_widefield.adjoint")
        return self.blur.adjoint(self.bin.adjoint(y))

    def tile_operator(self, top: int, left: int, height: int, width: int):
        if top % self.bin.factor or left % self.bin.factor:
            raise ValueError(f"microscopy_widefield: tile offsets must be multiples of the binning {self.bin.factor}")
        return self

    def extra_repr(self) -> str:
        return (f"psf={self.psf_kind!r}, na={self.na}, wavelength={self.wavelength}, pixel_size={self.pixel_size}, "
                f"kernel={tuple(self.kernel.shape)}, binning={self.bin.factor}, halo={self.halo}")


@register("astro_psf")
class AstroPSF(ForwardModel):
    """Ground-based telescope image: Moffat PSF blur plus a constant sky level, ``A(x) = h ⋆ x + sky``.

    ``fwhm`` (pixels, default 3.0), ``beta`` (default 4.765, Trujillo et al. 2001's seeing value),
    ``sky`` in the units of ``A(x)`` (default 0). With ``sky = 0`` the model is linear with the blur's
    adjoint; with ``sky ≠ 0`` it is affine, so ``linear`` is False and :meth:`adjoint` is the adjoint
    of the linear part ``h ⋆ ·`` (``A(x) − sky`` is linear). ``halo`` = PSF radius.
    ``kernel_size`` default: odd, ``≥ 4·FWHM``.
    """

    def __init__(self, fwhm: float = 3.0, beta: float = 4.765, sky: float = 0.0, kernel_size: int | None = None,
                 oversample: int = 5):
        super().__init__()
        if not float(fwhm) > 0 or not float(beta) > 1:
            raise ValueError(f"astro_psf: need fwhm > 0 and beta > 1, got fwhm={fwhm}, beta={beta}")
        if not math.isfinite(float(sky)):
            raise ValueError(f"astro_psf: sky must be finite, got {sky}")
        self.fwhm, self.beta, self.sky = float(fwhm), float(beta), float(sky)
        size = int(kernel_size) if kernel_size is not None else _odd(4 * self.fwhm + 1)
        self.blur = KernelBlur(moffat_psf(size, self.fwhm, self.beta, oversample), name="astro_psf")
        self.halo = self.blur.halo
        self.linear = self.sky == 0.0

    @property
    def kernel(self) -> torch.Tensor:
        return self.blur.kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(x) + self.sky

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.blur.adjoint(y)

    def extra_repr(self) -> str:
        return f"fwhm={self.fwhm}, beta={self.beta}, sky={self.sky}, kernel={tuple(self.kernel.shape)}, halo={self.halo}"
