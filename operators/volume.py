"""Forward models of volumes ``x`` of shape ``(B, C, Z, H, W)``: 3-D blur (widefield microscopy) and
any 2-D operator applied slice by slice (parallel-beam CT of a stack of slices).

Room: ``operators`` — torch and numpy.

The protocol is the 2-D one (``operators.base``) with one more axis: ``forward``, ``adjoint``
(linear), ``linear``, and two halos — ``halo`` (pixels of lateral context, or ``None`` when the
operator is global in-plane) and ``halo_z`` (planes of axial context a brick of the volume needs
for ``A`` to be exact in its core; 0 when slices are independent).

* :class:`VolumeBlur` — ``y = k ⋆ ext(x)``, the 3-D cross-correlation with a fixed kernel
  ``(kz, ky, kx)`` (odd sides) after boundary extension in z, y and x (``"reflect"`` as the 2-D
  blurs, or ``"symmetric"``). Computed by FFT on the extended grid (no wrap-around reaches the
  output: the extended grid is exactly as large as the "valid" correlation needs); the adjoint is
  the exact transpose (correlation's transpose by FFT, then the scatter-add adjoint of the
  extension, ``operators._extend``). ``halo_z`` = the kernel's axial radius.
* :class:`Widefield3D` — :class:`VolumeBlur` with the widefield PSF of ``operators.psf3d`` built
  from NA, emission wavelength, immersion index and voxel size (µm).
* :class:`SliceWise` — a 2-D operator on every plane (batched), e.g. :class:`CTStack`, the
  parallel-beam CT of each slice: ``(B, C, Z, N, N) → (B, C, Z, angles, detectors)``.
"""
from __future__ import annotations

import torch
from torch import nn

from ._extend import extension_index
from .blur import KernelBlur, _AdjointFn, _LinearFn
from .ct import CTParallelBeam
from .psf3d import DEFOCUS_MODELS, widefield_psf_3d

__all__ = ["check_volume", "VolumeBlur", "Widefield3D", "SliceWise", "CTStack", "to_slices", "from_slices",
           "VOLUME_OPERATORS", "volume_operators", "get_volume_operator"]


def check_volume(x: torch.Tensor, who: str = "volume operator") -> None:
    """Raise ``ValueError`` unless ``x`` is a finite real ``(B, C, Z, H, W)`` floating tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(f"{who}: expected a volume batch of shape (B, C, Z, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{who}: expected a real floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{who}: input contains NaN or Inf values; clean or mask them first")


def to_slices(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, Z, …) → (B·Z, C, …)``: every plane becomes one image of a 2-D batch."""
    b, c, z = x.shape[:3]
    return x.transpose(1, 2).reshape(b * z, c, *x.shape[3:])


def from_slices(s: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`to_slices`: ``(B·Z, C, …) → (B, C, Z, …)``."""
    return s.reshape(batch, s.shape[0] // batch, *s.shape[1:]).transpose(1, 2)


class VolumeBlur(nn.Module):
    """``A x = k ⋆ ext(x)`` per channel of a volume (see module docstring). Linear.

    ``kernel``: ``(kz, ky, kx)`` array, odd sides (float64 inside, cast to the input's dtype).
    ``boundary``: ``"reflect"`` (default) or ``"symmetric"``, on all three axes.
    Input ``(B, C, Z, H, W)``, output the same shape. ``halo`` = lateral radius, ``halo_z`` = axial.
    """

    linear = True

    def __init__(self, kernel, boundary: str = "reflect", name: str = "volume_blur"):
        super().__init__()
        k = torch.as_tensor(kernel, dtype=torch.float64)
        if k.ndim != 3 or any(s % 2 == 0 for s in k.shape):
            raise ValueError(f"{name}: kernel must be 3-D (kz, ky, kx) with odd sides, got {tuple(k.shape)}")
        if not torch.isfinite(k).all() or not k.abs().sum() > 0:
            raise ValueError(f"{name}: kernel must be finite and not identically zero")
        if boundary not in ("reflect", "symmetric"):
            raise ValueError(f"{name}: boundary must be 'reflect' or 'symmetric', got {boundary!r}")
        self.name, self.boundary = name, boundary
        self.register_buffer("kernel", k)
        self.pads = tuple((s - 1) // 2 for s in k.shape)  # (pz, py, px)
        self.halo_z = self.pads[0]
        self.halo = max(self.pads[1:])
        self._cache: dict = {}

    def _plan(self, shape, dtype, device):
        """Extension index maps of the three axes and the kernel's FFT on the extended grid."""
        key = (tuple(shape), dtype, device)
        if key not in self._cache:
            idx = [extension_index(n, -p, n + p, self.boundary, device) for n, p in zip(shape, self.pads)]
            grid = tuple(i.numel() for i in idx)
            k_hat = torch.fft.rfftn(self.kernel.to(device=device), s=grid)
            real = torch.float64 if dtype == torch.float64 else torch.float32
            self._cache = {key: (idx, grid, k_hat.to(torch.complex128 if real == torch.float64 else torch.complex64))}
        return self._cache[key]

    def _check(self, x: torch.Tensor, who: str) -> None:
        check_volume(x, who)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.name)
        return _LinearFn.apply(x, self)  # backward = the explicit adjoint (blur.py)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, f"{self.name}.adjoint")
        return _AdjointFn.apply(y, self)

    def _correlate(self, x: torch.Tensor) -> torch.Tensor:
        z, h, w = x.shape[-3:]
        (iz, iy, ix), grid, k_hat = self._plan((z, h, w), x.dtype, x.device)
        ext = x.index_select(-3, iz).index_select(-2, iy).index_select(-1, ix)
        # circular correlation = IFFT(FFT(ext) · conj(FFT(k))); outputs 0..n−1 never wrap (grid = n + 2p)
        out = torch.fft.irfftn(torch.fft.rfftn(ext, s=grid) * k_hat.conj(), s=grid)
        return out[..., :z, :h, :w].to(x.dtype)

    def _correlate_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        z, h, w = y.shape[-3:]
        (iz, iy, ix), grid, k_hat = self._plan((z, h, w), y.dtype, y.device)
        # transpose of the valid correlation: zero-padded y convolved with k (indices n − i ∈ [0, 2p] only)
        ext = torch.fft.irfftn(torch.fft.rfftn(y, s=grid) * k_hat, s=grid).to(y.dtype)
        # transpose of the extension: scatter-add the padded grid back onto the volume
        out = ext.new_zeros(ext.shape[:-1] + (w,)).index_add(-1, ix, ext)
        out = out.new_zeros(out.shape[:-2] + (h, w)).index_add(-2, iy, out)
        return out.new_zeros(out.shape[:-3] + (z, h, w)).index_add(-3, iz, out)

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, boundary={self.boundary!r}, halo={self.halo}, halo_z={self.halo_z}"


class Widefield3D(VolumeBlur):
    """Widefield fluorescence z-stack: ``y = h ⋆ x`` with the 3-D PSF of :func:`~operators.psf3d.widefield_psf_3d`.

    ``na``, ``wavelength`` (emission), ``n_immersion``, ``pixel_size`` (lateral) and ``z_step``
    (plane spacing) in µm (any common unit); ``size = (planes, pixels)`` odd kernel sides (default:
    ±3 axial zeros, laterally the cone of light there); ``defocus`` ``"nonparaxial"`` (default) or
    ``"paraxial"`` (Born & Wolf). Input/output ``(B, C, Z, H, W)``; light from planes outside the stack is
    modelled by mirroring the stack (``boundary="reflect"``). ``halo_z`` = kernel's axial radius.
    """

    def __init__(self, na: float = 1.4, wavelength: float = 0.52, n_immersion: float = 1.518,
                 pixel_size: float = 0.1, z_step: float = 0.2, size: tuple[int, int] | None = None,
                 defocus: str = "nonparaxial", oversample: int = 3, boundary: str = "reflect"):
        if defocus not in DEFOCUS_MODELS:
            raise ValueError(f"widefield_3d: defocus must be one of {', '.join(DEFOCUS_MODELS)}, got {defocus!r}")
        k = widefield_psf_3d(na, wavelength, n_immersion, pixel_size, z_step, size, defocus, oversample)
        super().__init__(k, boundary=boundary, name="widefield_3d")
        self.na, self.wavelength, self.n_immersion = float(na), float(wavelength), float(n_immersion)
        self.pixel_size, self.z_step, self.defocus = float(pixel_size), float(z_step), defocus

    def focal_plane(self):
        """The in-focus plane of the PSF as a 2-D blur (normalised to sum 1): the operator a
        slice-by-slice deconvolution uses when it ignores the light from other planes."""
        k = self.kernel[self.halo_z]
        return KernelBlur(k / k.sum(), boundary=self.boundary, name="widefield_focal_plane")

    def extra_repr(self) -> str:
        return (f"na={self.na}, wavelength={self.wavelength}, n_immersion={self.n_immersion}, pixel_size="
                f"{self.pixel_size}, z_step={self.z_step}, defocus={self.defocus!r}, " + super().extra_repr())


class SliceWise(nn.Module):
    """A 2-D forward model applied to every plane of a volume, all planes in one batch.

    ``op``: any 2-D operator (``(B, C, H, W) → measurement``). ``(B, C, Z, H, W) → (B, C, Z, …)``.
    ``linear`` and ``halo`` are the 2-D operator's; ``halo_z = 0`` (slices are independent).
    ``adjoint_kwargs`` are passed to the 2-D adjoint (e.g. CT's ``image_size``).
    """

    halo_z = 0

    def __init__(self, op: nn.Module, **adjoint_kwargs):
        super().__init__()
        self.op = op
        self.linear = bool(getattr(op, "linear", False))
        self.halo = getattr(op, "halo", None)
        self._adjoint_kwargs = adjoint_kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_volume(x, f"slice-wise {type(self.op).__name__}")
        return from_slices(self.op(to_slices(x)), x.shape[0])

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if not self.linear:
            raise NotImplementedError(f"{type(self.op).__name__} is not linear: it has no adjoint")
        if not isinstance(y, torch.Tensor) or y.ndim < 4:
            raise ValueError(f"slice-wise adjoint: expected (B, C, Z, …) measurements, got {tuple(getattr(y, 'shape', ()))}")
        return from_slices(self.op.adjoint(to_slices(y), **self._adjoint_kwargs), y.shape[0])

    def extra_repr(self) -> str:
        return f"halo={self.halo}, halo_z=0"


class CTStack(SliceWise):
    """Parallel-beam CT of every slice of a volume (``operators.ct.CTParallelBeam`` per plane).

    ``angles`` (count over [0°, 180°) or degrees), ``n_detectors`` as the 2-D operator.
    ``(B, C, Z, N, N) → (B, C, Z, n_angles, n_detectors)``; linear, ``adjoint`` = back-projection
    of every slice. Global in-plane (``halo = None``), independent in z (``halo_z = 0``).
    """

    def __init__(self, angles=60, n_detectors: int | None = None, image_size: int | None = None):
        kw = {} if image_size is None else {"image_size": int(image_size)}
        super().__init__(CTParallelBeam(angles, n_detectors), **kw)


#: volume operators by the name a run selects (``--operator widefield3d``); kept apart from the 2-D
#: registry (``operators.available()``), whose operators take ``(B, C, H, W)`` frames
VOLUME_OPERATORS = {"widefield3d": Widefield3D}


def volume_operators() -> list[str]:
    """Sorted names of the volume operators a run can select."""
    return sorted(VOLUME_OPERATORS)


def get_volume_operator(name: str, **params) -> nn.Module:
    """Build the volume operator registered as ``name`` (:data:`VOLUME_OPERATORS`) with ``params``."""
    if name not in VOLUME_OPERATORS:
        raise ValueError(f"unknown volume operator {name!r}; available: {', '.join(volume_operators())}")
    return VOLUME_OPERATORS[name](**params)
