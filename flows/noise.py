"""The run's noise model: parameters the user left out are estimated from the input stack.

Room: ``flows`` — ``storage`` (reading a bounded sample of the stack), ``operators.noise_estimate``
(the statistics), :class:`flows.params.NoiseSpec`.

:func:`resolve_noise` returns the complete spec (every parameter in the data's units) that the run
records in its manifest and hashes, plus the estimate with its standard errors (None when the user
gave everything). The sample is deterministic — at most :data:`MAX_FRAMES` frames evenly spaced
through the stack, each cropped to its central :data:`MAX_SIDE`² — so a resumed run estimates the
very same numbers and keeps its configuration hash.
"""
from __future__ import annotations

import numpy as np

import storage

from .params import NoiseSpec

__all__ = ["resolve_noise", "resolve_measurement_noise", "noise_model", "sample_frames", "sample_indices", "MAX_FRAMES",
           "MAX_SIDE"]

MAX_FRAMES = 8
MAX_SIDE = 1024


def sample_indices(n_frames: int) -> list[int]:
    """At most :data:`MAX_FRAMES` frame indices, evenly spaced through the stack (deterministic)."""
    return sorted({int(round(v)) for v in np.linspace(0, n_frames - 1, min(n_frames, MAX_FRAMES))})


def sample_frames(stack: storage.Stack) -> tuple[np.ndarray, np.ndarray]:
    """``(frames, valid)``: ``(N·C, h, w)`` float64 data values (the store's own units) and validity."""
    T, C, H, W = stack.shape
    ts = sample_indices(T)
    h, w = min(H, MAX_SIDE), min(W, MAX_SIDE)
    y0, x0 = (H - h) // 2, (W - w) // 2
    frames, valid = [], []
    for t in ts:
        u = np.asarray(stack.array[t, :, y0:y0 + h, x0:x0 + w], dtype=np.float64)
        v = np.isfinite(u)
        if stack.valid is not None:
            v &= np.asarray(stack.valid[t, :, y0:y0 + h, x0:x0 + w])
        frames.append(u)
        valid.append(v)
    return np.concatenate(frames), np.concatenate(valid)


def resolve_noise(spec: NoiseSpec, stack: storage.Stack) -> tuple[NoiseSpec, dict | None]:
    """``(complete spec, estimate dict or None)`` — see the module docstring."""
    if spec.complete():
        return spec, None
    from operators.noise_estimate import estimate_noise

    frames, valid = sample_frames(stack)
    est = estimate_noise(frames, valid, kind=spec.kind, sigma=spec.sigma, gain=spec.gain, offset=spec.offset,
                         read_noise=spec.read_noise)
    if est.kind == "gaussian" and spec.sigma is None and not (est.sigma > 0 and np.isfinite(est.sigma)):
        raise ValueError(f"noise kind {spec.kind!r}: σ cannot be estimated from {stack.path} — its sampled frames have "
                         f"no pixel-to-pixel variation (estimate {est.sigma:g}; a constant or synthetic stack?); give the "
                         "noise level in the data's units: noise.sigma S")
    if est.kind == "gaussian":
        done = NoiseSpec(kind="gaussian", sigma=spec.sigma if spec.sigma is not None else est.sigma)
    else:
        done = NoiseSpec(kind=est.kind, gain=est.gain, offset=est.offset,
                         read_noise=est.read_noise if est.kind == "poisson_gaussian" else None)
    d = est.as_dict()
    d["requested"] = spec.model_dump(exclude_none=True)
    d["summary"] = est.describe()
    return done, d


def resolve_measurement_noise(spec: NoiseSpec, stack: storage.Stack, meas: dict) -> tuple[NoiseSpec, dict | None]:
    """:func:`resolve_noise` for a measurement store: Gaussian σ in the measurement's units, estimated
    when not given from measurements the scene cancels from (at most :data:`MAX_FRAMES` frames, evenly
    spaced, whole) — k-space: its Hermitian-antisymmetric part; sinograms: views 180° apart (a scan over
    [0°, 180°) has none: one line asks for σ); Fourier magnitudes need σ given."""
    if spec.kind not in ("auto", "gaussian"):
        raise ValueError(f"{meas['domain']} measurements take Gaussian noise with σ in the measurement's units, not "
                         f"noise kind {spec.kind!r}: give --sigma S (or leave --noise at auto)")
    if spec.sigma is not None:
        return NoiseSpec(kind="gaussian", sigma=spec.sigma), None
    from operators.noise_estimate import estimate_kspace_gaussian, estimate_sinogram_gaussian

    domain = meas["domain"]
    if domain not in ("kspace", "sinogram"):
        raise ValueError(f"{domain} measurements: σ is not estimated from them; give it in the measurement's "
                         "units (--sigma S)")
    y = np.concatenate([np.asarray(stack.array[t]) for t in sample_indices(stack.shape[0])])  # (n·C, h, w), store units
    try:
        if domain == "kspace":
            est = estimate_kspace_gaussian(y, storage.read_extra(stack, "sampling_mask"))
        else:
            est = estimate_sinogram_gaussian(y, meas["operator"]["params"]["angles"])
    except ValueError as exc:  # one line: what is missing and the fix
        raise ValueError(f"{stack.path}: --noise auto: {exc}") from None
    d = est.as_dict()
    d["requested"] = spec.model_dump(exclude_none=True)
    d["summary"] = est.describe(f"({domain} units{', per real/imaginary part' if domain == 'kspace' else ''})")
    return NoiseSpec(kind="gaussian", sigma=est.sigma), d


def noise_model(config_noise: dict, stack: storage.Stack):
    """The run's noise model in model space (its manifest entry + the input store's intensity map)."""
    return NoiseSpec(**config_noise).build(stack.intensity.to_dict(), integer=stack.dtype.kind in "ui")
