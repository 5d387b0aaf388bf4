"""Noise models stated in the data's own units (ADU, electrons), evaluated on model-space values.

Room: ``operators`` — torch only.

The solvers work in model space ``[-1, 1]``; an ingested stack maps its data values ``u`` (ADU, the
units of the stored pixels) there by the affine intensity map ``v = a·u + b``
(``storage.intensity.IntensityMap``: ``a = scale``, ``b = offset``). A physical noise model is
written in the data's units. :class:`DataUnits` composes the two: it holds the physical model
``inner`` and the affine map ``w = s·v + c`` from model space to ``inner``'s units, and evaluates

* ``nll(y, A x) = inner.nll(w(y), w(A x))`` — the exact negative log-likelihood of the
  measurement *in its own units* (a density in ``w``: no Jacobian of the intensity map enters), its
  gradient by autograd through the (affine) map;
* ``discrepancy`` — ``inner.discrepancy`` (Pearson χ² / ``‖r‖²/σ²`` is invariant under the map);
* ``effective_sigma(y) = inner.effective_sigma(w(y)) / |s|`` — in model units, what solvers that
  need a noise level (CGLS, DiffPIR, TV) compare with model-space quantities;
* ``quadratic`` — ``inner.quadratic`` (CGLS stays available for Gaussian noise).

Two physical models are built here:

* :func:`gaussian_in_data_units` — ``u = u₀ + σ n``, ``σ`` in ADU (``w = u``);
* :class:`CameraNoise` — a camera with conversion gain ``g`` (e⁻/ADU), black level ``o`` (ADU) and
  read noise ``r`` (e⁻): ``u = o + (k + r n)/g``, ``k ~ Poisson(λ)``; ``inner`` is written in
  photo-electrons above the black level, ``w = g·(u − o)`` = ``k + r n``
  (``PoissonGaussianNoise(gain=1, sigma=r)``; ``PoissonNoise(gain=1)`` when ``r = 0``, which
  needs ``g·(u − o)`` to be whole counts: a photon-counting detector).

The audit (``ddiff.audit.stats``) unwraps :class:`DataUnits` (``inner``, ``to_inner``), so its
deviances and their null cumulants are exact in counts.
"""
from __future__ import annotations

import math

import torch

from .noise import GaussianNoise, NoiseModel, PoissonGaussianNoise, PoissonNoise

__all__ = ["DataUnits", "CameraNoise", "gaussian_in_data_units"]


def _finite(name: str, v: float) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    return v


class DataUnits(NoiseModel):
    """``inner`` (a noise model in physical units) seen from model space through ``w = scale·v + shift``.

    ``scale`` must be non-zero. ``label`` is the ``repr`` (e.g. ``"GaussianNoise(sigma=3 ADU)"``).
    """

    def __init__(self, inner: NoiseModel, scale: float, shift: float, label: str | None = None):
        self.inner = inner
        self.scale = _finite("DataUnits: scale", scale)
        self.shift = _finite("DataUnits: shift", shift)
        if self.scale == 0:
            raise ValueError("DataUnits: scale must be non-zero (the intensity map is invertible)")
        self.label = label or f"DataUnits({inner!r}, scale={self.scale:g}, shift={self.shift:g})"

    def __repr__(self) -> str:
        return self.label

    @property
    def quadratic(self) -> bool:
        return bool(getattr(self.inner, "quadratic", False))

    def to_inner(self, v: torch.Tensor) -> torch.Tensor:
        """Model-space values → the inner model's units."""
        return v * self.scale + self.shift

    def from_inner(self, w: torch.Tensor) -> torch.Tensor:
        """The inner model's units → model space."""
        return (w - self.shift) / self.scale

    def validate(self, y: torch.Tensor) -> None:
        super().validate(y)
        self.inner.validate(self.to_inner(y))

    def sample(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.from_inner(self.inner.sample(self.to_inner(clean), generator=generator))

    def nll(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        return self.inner.nll(self.to_inner(y), self.to_inner(Ax))

    def discrepancy(self, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
        return self.inner.discrepancy(self.to_inner(y), self.to_inner(Ax))

    def variance(self, Ax: torch.Tensor) -> torch.Tensor:
        """Per-entry variance of ``y`` (model units²)."""
        if hasattr(self.inner, "variance"):
            return self.inner.variance(self.to_inner(Ax)) / self.scale**2
        return torch.full_like(Ax, self.effective_sigma() ** 2)

    def effective_sigma(self, y: torch.Tensor | None = None) -> float:
        return float(self.inner.effective_sigma(None if y is None else self.to_inner(y))) / abs(self.scale)


def gaussian_in_data_units(sigma: float, intensity_scale: float, intensity_offset: float,
                           units: str = "ADU") -> DataUnits:
    """Gaussian noise with ``σ`` in the data's units, for model space ``v = a·u + b``."""
    a, b = _finite("intensity scale", intensity_scale), _finite("intensity offset", intensity_offset)
    if a == 0:
        raise ValueError("intensity map scale must be non-zero")
    return DataUnits(GaussianNoise(sigma), 1.0 / a, -b / a, label=f"GaussianNoise(sigma={float(sigma):.4g} {units})")


class CameraNoise(DataUnits):
    """Camera counts: ``u = offset + (k + read_noise·n)/gain``, ``k ~ Poisson(λ)`` (see module docstring).

    Args:
        gain: conversion gain, e⁻ per ADU (> 0).
        offset: black level (bias), ADU.
        read_noise: read noise, e⁻ RMS (≥ 0; 0 = pure Poisson, counts must then be whole).
        intensity_scale, intensity_offset: the store's map to model space ``v = a·u + b``.
        adc_step: the data's quantisation step in ADU (1 for integer data, 0 for none): rounding adds
            the variance ``(g·step)²/12`` e⁻² to the read noise's (left out, the audit of integer data
            over-flags: at 10–40 e⁻ it is 2–3 % of each entry's variance, z ≈ +0.5 on a 32² tile).
    """

    def __init__(self, gain: float, offset: float, read_noise: float, intensity_scale: float,
                 intensity_offset: float, adc_step: float = 0.0):
        g = float(gain)
        if not (g > 0 and math.isfinite(g)):
            raise ValueError(f"noise.gain = {gain} e⁻/ADU: the conversion gain must be a positive number "
                             "(camera datasheet or photon-transfer curve; leave it out to estimate it from the data)")
        r = float(read_noise)
        if not (r >= 0 and math.isfinite(r)):
            raise ValueError(f"noise.read_noise = {read_noise} e⁻ must be >= 0 (0 = pure Poisson counts)")
        o = _finite("noise.offset (ADU)", offset)
        a, b = _finite("intensity scale", intensity_scale), _finite("intensity offset", intensity_offset)
        self.gain, self.offset, self.read_noise, self.adc_step = g, o, r, float(adc_step)
        gauss = math.sqrt(r * r + (g * self.adc_step) ** 2 / 12) if r > 0 else 0.0  # read noise ⊕ ADC rounding
        inner = PoissonGaussianNoise(gain=1.0, sigma=gauss) if r > 0 else PoissonNoise(gain=1.0)
        # w = g·(u − o) = g·((v − b)/a − o)
        q = f", adc_step={self.adc_step:g} ADU" if self.adc_step and r > 0 else ""
        super().__init__(inner, g / a, -g * (b / a + o),
                         label=f"CameraNoise(gain={g:.4g} e⁻/ADU, offset={o:.4g} ADU, read_noise={r:.4g} e⁻{q})")

    def neutral(self) -> float:
        return float(self.from_inner(torch.tensor(0.0, dtype=torch.float64)))

    def validate(self, y: torch.Tensor) -> None:
        NoiseModel.validate(self, y)
        if y.is_complex():
            raise ValueError("CameraNoise: camera counts are real; got a complex measurement")
        w = self.to_inner(y.detach().double())
        # below the black level by more than read noise explains: the offset is wrong (or no camera data)
        lim = -6.0 * max(self.read_noise, 1.0)
        frac = float((w < lim).double().mean())
        if frac > 1e-3:
            u_min = float(w.min()) / self.gain + self.offset  # w = g·(u − o): back to ADU
            raise ValueError(
                f"noise.offset = {self.offset:g} ADU is above the data: {100 * frac:.3g}% of the values lie more than "
                f"{-lim:g} e⁻ (6 read-noise σ) below it (lowest value {u_min:.6g} ADU). The black level must not exceed "
                "the dark pixels — check --offset (or leave it out to estimate it) and that --gain is in e⁻/ADU")
        if self.read_noise == 0:
            try:
                self.inner.validate(w)
            except ValueError as exc:
                raise ValueError(f"noise kind 'poisson' needs whole photo-electron counts gain·(u − offset): {exc}. "
                                 "A camera with read noise is 'poisson_gaussian' (give --read-noise)") from None
