"""Measurement domains: what a sinogram, k-space or Fourier-magnitude store means to the solver.

Room: ``flows`` — torch, numpy, scikit-image (the classical baselines), ``operators``, ``storage``.

A measurement store (:mod:`storage.frames`) holds measurements in the user's units. This module
turns them into the solver's problem and back, exactly:

* the **image intensity map** ``x_phys = s·x + c`` (``s = (high − low)/2``, ``c = (high + low)/2``,
  the store's ``intensity``; ``x`` in model space ``[−1, 1]``) composes with a linear ``A`` into
  ``A(x_phys) = s·A(x) + c·A(𝟙)``, so the model-space measurement is ``y_m = (y − c·A(𝟙))/s`` and
  ``σ_m = σ/s``: ``‖y − A(x_phys)‖²/σ² = ‖y_m − A(x)‖²/σ_m²`` — χ², the likelihood and the audit
  are those of the data in its own units. Phase retrieval (``|F(pad x)|``, not linear) measures
  ``(x + 1)/2`` (``unit_range=True``) and needs ``low = 0``: then ``y_m = y/(2s)``, ``σ_m = σ/(2s)``.
* **domains**: ``sinogram`` (angles × detectors, ``ct_parallel_beam`` with the recorded angles in
  degrees, image ``N × N`` with ``N`` = detector count unless given), ``kspace`` (single-coil
  Cartesian k-space, complex, DC at the centre, orthonormal DFT; ``mri_cartesian`` restricted to
  the sampled phase-encode rows of the stored mask), ``fourier_magnitude`` (``phase_retrieval``,
  oversampled grid; image size from the padding rule).
* **classical baselines** (:func:`classical_reconstruction`, physical units): filtered back-
  projection (``skimage.transform.iradon``, ramp filter) and the zero-filled inverse FFT. At ingest
  they also give the image's intensity range (percentiles of the baseline), unless the user names it;
  Fourier magnitudes have no one-shot baseline: their range comes from Parseval (mean and RMS of
  the image are fixed by the DC term and the total energy; ``high = mean + √3·std``, exact for a
  uniform intensity distribution).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

import operators
import storage

__all__ = ["DOMAINS", "MeasurementMap", "parse_angles", "classical_reconstruction", "ingest_measurements",
           "measurement_operator", "image_range_from_baseline"]

#: measurement domain -> registered operator
DOMAINS = {"sinogram": "ct_parallel_beam", "kspace": "mri_cartesian", "fourier_magnitude": "phase_retrieval"}
#: percentiles of the classical reconstruction sent to -1 / +1 by default
BASELINE_PERCENTILES = (0.1, 99.9)


def parse_angles(spec, n_rows: int) -> list[float]:
    """Projection angles in degrees from ``spec``: a list of numbers; ``"START:STOP:STEP"`` (degrees,
    STOP excluded); a comma list; an integer count ``n`` (``n`` angles evenly over ``[0°, 180°)``);
    or a ``.npy``/text file of degrees. Must give one angle per sinogram row (``n_rows``)."""
    if spec is None:
        raise ValueError("a sinogram needs its projection angles: --angles 0:180:3 (degrees, start:stop:step), "
                         "--angles 60 (evenly over [0, 180)), --angles a,b,c or --angles angles.txt")
    if isinstance(spec, (list, tuple, np.ndarray)):
        theta = np.asarray(spec, dtype=np.float64).ravel()
    elif isinstance(spec, (int, np.integer)) or (isinstance(spec, str) and spec.strip().isdigit()):
        n = int(spec)
        theta = np.arange(n) * 180.0 / max(n, 1)
    elif isinstance(spec, str) and Path(spec).is_file():
        theta = (np.load(spec) if spec.endswith(".npy") else np.loadtxt(spec, delimiter=None, ndmin=1)).astype(
            np.float64).ravel()
    elif isinstance(spec, str) and ":" in spec:
        try:
            parts = [float(v) for v in spec.split(":")]
        except ValueError:
            parts = []
        if len(parts) != 3 or parts[2] == 0:
            raise ValueError(f"--angles {spec!r}: use START:STOP:STEP in degrees, e.g. 0:180:3")
        theta = np.arange(*parts)
    elif isinstance(spec, str):
        try:
            theta = np.array([float(v) for v in spec.split(",") if v.strip()])
        except ValueError:
            raise ValueError(f"--angles {spec!r}: not a file, a count, START:STOP:STEP or a comma list of degrees") from None
    else:
        raise ValueError(f"angles={spec!r}: give degrees as a list, a count, START:STOP:STEP or a file")
    bad = np.flatnonzero(~np.isfinite(theta))
    if bad.size:
        raise ValueError(f"--angles {spec}: {bad.size} of its {theta.size} angles are not numbers (NaN/Inf, first at "
                         f"index {bad[0]}); give one finite angle in degrees per sinogram row")
    if theta.size != n_rows:
        raise ValueError(f"--angles gives {theta.size} angles but the sinogram has {n_rows} rows (one per "
                         "angle, axes: angle × detector); fix the angle list or the sinogram's axes")
    return [float(v) for v in theta]


def measurement_operator(meas: dict, image_shape=None):
    """The forward model of a measurement record (``storage.measurement_of``)."""
    from .tiles import build_operator

    shape = tuple(int(v) for v in (image_shape or meas["image_shape"]))
    return build_operator(meas["operator"]["name"], meas["operator"]["params"], shape)


class MeasurementMap:
    """Stored measurements (user units, stored grid) ↔ the solver's model-space measurements.

    ``to_model(y)``: ``(B, C, h, w)`` stored → what ``A(x)`` produces; ``sigma_to_model(σ)``;
    ``residual_to_stored(r)``: a model-space residual → the stored grid in user units (magnitude for
    complex data, NaN where nothing was measured)."""

    def __init__(self, meas: dict, imap: storage.IntensityMap, op):
        self.domain, self.op = meas["domain"], op
        self.s = (imap.high - imap.low) / 2
        self.c = (imap.high + imap.low) / 2
        N, M = (int(v) for v in meas["image_shape"])
        if self.domain == "fourier_magnitude":
            if abs(imap.low) > 1e-9 * max(1.0, abs(imap.high)):
                raise ValueError(f"Fourier magnitudes need an image intensity range starting at 0 (got {imap.low:g}); "
                                 "ingest with --intensity 0,HIGH")
            self.s, self.offset = 2 * self.s, None
        else:
            with torch.no_grad():
                self.offset = self.c * op(torch.ones(1, 1, N, M))[0]  # c·A(𝟙), one channel's worth
        self.rows = op.lines.clone() if self.domain == "kspace" else None

    def to_model(self, y: torch.Tensor) -> torch.Tensor:
        if self.rows is not None:
            y = y.index_select(-2, self.rows)
        y = y.to(torch.complex64 if y.is_complex() else torch.float32)
        return y / self.s if self.offset is None else (y - self.offset) / self.s

    def sigma_to_model(self, sigma: float) -> float:
        return float(sigma) / self.s

    def residual_to_stored(self, r: torch.Tensor, stored_hw: tuple[int, int]) -> np.ndarray:
        r = r * self.s
        r = r.abs() if r.is_complex() else r
        if self.rows is not None:
            full = torch.full(r.shape[:-2] + tuple(stored_hw), float("nan"), dtype=r.dtype)
            full[..., self.rows, :] = r
            r = full
        return r.float().cpu().numpy()


def classical_reconstruction(domain: str, y: np.ndarray, meas: dict, mask: np.ndarray | None = None) -> np.ndarray:
    """The classical reconstruction of stored measurements ``y`` ``(T, C, h, w)`` in physical units
    ``(T, C, N, M)``: FBP (sinogram) or zero-filled inverse FFT (k-space; ``mask`` (h, w) bool).
    Raises for Fourier magnitudes (no one-shot classical inverse)."""
    N, M = (int(v) for v in meas["image_shape"])
    if domain == "sinogram":
        from skimage.transform import iradon

        theta = np.asarray(meas["operator"]["params"]["angles"], dtype=np.float64)
        circle = y.shape[-1] == N
        out = np.empty(y.shape[:2] + (N, M), np.float32)
        for t in range(y.shape[0]):
            for c in range(y.shape[1]):
                out[t, c] = iradon(np.asarray(y[t, c], np.float64).T, theta=theta, output_size=N, circle=circle,
                                   filter_name="ramp")
        return out
    if domain == "kspace":
        from operators.fourier import ifft2c

        k = torch.from_numpy(np.asarray(y).astype(np.complex64))
        if mask is not None:
            k = k * torch.from_numpy(np.asarray(mask, bool))
        return ifft2c(k).real.numpy().astype(np.float32)
    raise ValueError(f"no one-shot classical reconstruction for {domain!r}")


def image_range_from_baseline(domain: str, y: np.ndarray, meas: dict, mask=None) -> tuple[float, float, str]:
    """``(low, high, method)`` of the image to reconstruct, estimated from measurements ``y``."""
    if domain == "fourier_magnitude":
        op = measurement_operator(meas)
        N, M = (int(v) for v in meas["image_shape"])
        ph, pw = op.padding(N, M)
        P = (N + 2 * ph) * (M + 2 * pw)
        mag = np.asarray(y, np.float64)
        energy = (mag ** 2).reshape(mag.shape[0], mag.shape[1], -1).sum(-1)  # = Σ x² (unitary DFT)
        dc = mag[..., mag.shape[-2] // 2, mag.shape[-1] // 2]  # |Σ x| / √P
        mean = dc * math.sqrt(P) / (N * M)
        std = np.sqrt(np.maximum(energy / (N * M) - mean ** 2, 0))
        return 0.0, float(np.median(mean + math.sqrt(3) * std)), "parseval(mean+sqrt3*std)"
    base = classical_reconstruction(domain, y, meas, mask)
    lo, hi = np.percentile(base, BASELINE_PERCENTILES)
    return float(lo), float(hi), f"baseline-percentile{list(BASELINE_PERCENTILES)}"


def _sampling_mask(mask_path: str | None, sample: np.ndarray) -> np.ndarray:
    """(H, W) bool: from a .npy file ((H,) rows or (H, W)), else rows where the k-space is not all zero."""
    H, W = sample.shape[-2:]
    if mask_path is not None:
        m = np.load(mask_path, allow_pickle=False).astype(bool)
        if m.shape == (H,):
            m = np.repeat(m[:, None], W, axis=1)
        if m.shape != (H, W):
            raise ValueError(f"--sampling-mask {mask_path}: shape {m.shape}; expected ({H},) rows or ({H}, {W}) like the k-space")
    else:  # zero-filled convention: an unsampled row is exactly zero in every frame read
        m = np.repeat((np.abs(sample) > 0).reshape(-1, H, W).any(0).any(-1)[:, None], W, axis=1)
    partial = m.any(1) & ~m.all(1)
    if partial.any():
        raise ValueError(f"the sampling mask samples only part of row(s) {np.flatnonzero(partial)[:5].tolist()}; "
                         "mri_cartesian needs whole phase-encode rows (k_y lines along the store's y axis)")
    if not m.any():
        raise ValueError("the sampling mask is empty: no k-space row was measured")
    return m


def ingest_measurements(p, **geometry) -> storage.Stack:
    """Ingest a measurement-domain source (``IngestParams`` with ``domain != "image"``); ``geometry``:
    the physical-step keywords of :func:`storage.ingest`."""
    meas, extra, sample = measurement_record(p)
    domain = meas["domain"]
    h, w = sample.shape[-2:]
    if isinstance(p.intensity, (list, tuple)):
        intensity = tuple(float(v) for v in p.intensity)
    elif p.intensity == "percentile":
        lo, hi, _ = image_range_from_baseline(domain, sample, meas, extra.get("sampling_mask"))
        intensity = (lo, hi)
    else:
        raise ValueError(f"--intensity {p.intensity!r} does not apply to {domain} measurements: give the image's "
                         "range LOW,HIGH, or leave the default (estimated from the classical reconstruction)")
    meas["intensity_source"] = "user" if isinstance(p.intensity, (list, tuple)) else "estimated"
    return storage.ingest(p.source, p.store, axes=p.axes, chunk=max(h, w), shard=None, intensity=intensity,
                          nonfinite=p.nonfinite, overwrite=p.overwrite, measurement=meas, extra_arrays=extra,
                          max_size=p.max_size, **geometry)


def measurement_record(p) -> tuple[dict, dict, np.ndarray]:
    """``(measurement record, extra arrays, the first ≤ 8 frames)`` of a measurement-domain source, checked
    (complex k-space, real sinograms, one finite angle per row, ...) — reads no more than those frames,
    writes nothing (the pre-flight check of ``ddiff ingest --domain ...`` calls it too)."""
    from storage.readers import open_source

    reader = open_source(p.source, axes=p.axes)
    try:
        T, C, h, w = reader.layout.frames_shape
        if "z" in reader.layout.axes and reader.layout.sizes["z"] > 1:
            raise ValueError(f"{p.domain} measurements are 2-D per frame; the source has a z axis "
                             f"({reader.layout.axes}): give --axes with t for the frames")
        sample = reader.read(0, min(T, 8))
    finally:
        reader.close()
    domain, extra, units = p.domain, {}, {}
    if domain == "sinogram":
        if np.iscomplexobj(sample):
            raise ValueError("a sinogram must be real; complex data is --domain kspace")
        angles = parse_angles(p.angles, h)
        N = int(p.image_size or w)
        params = {"angles": angles, "n_detectors": int(w)}
        image_shape, units = [N, N], {"angles": "degree", "detector_pixel": "image pixel"}
        axes = {"y": {"name": "angle", "unit": "degree", "values": angles}, "x": {"name": "detector", "unit": "bin"}}
    elif domain == "kspace":
        if not np.iscomplexobj(sample):
            raise ValueError(f"{p.source}: k-space must be complex, but it holds real {sample.dtype} values; store the "
                             "complex samples, e.g. np.save('k.npy', (re + 1j * im).astype(np.complex64)) "
                             "(magnitudes alone are --domain fourier_magnitude)")
        if p.image_size is not None and (int(p.image_size), int(p.image_size)) != (h, w):
            raise ValueError(f"--image-size does not apply to k-space: the image grid is the k-space grid ({h} x {w})")
        mask = _sampling_mask(p.sampling_mask, sample)
        extra["sampling_mask"] = mask
        params = {"lines": np.flatnonzero(mask.any(1)).tolist(), "image_size": [int(h), int(w)]}
        image_shape, units = [int(h), int(w)], {"convention": "centred orthonormal DFT, DC at (H//2, W//2)"}
        axes = {"y": {"name": "ky", "unit": "k-space row"}, "x": {"name": "kx", "unit": "k-space column"}}
    elif domain == "fourier_magnitude":
        if np.iscomplexobj(sample) or (sample < 0).any():
            raise ValueError("Fourier magnitudes must be real and >= 0")
        probe = operators.get_operator("phase_retrieval", oversample=p.oversample, unit_range=True)
        N = int(p.image_size) if p.image_size else next((n for n in range(1, h + 1) if probe.output_shape(n, n)[0] == h), None)
        if N is None or probe.output_shape(N, N) != (h, w):
            raise ValueError(f"Fourier magnitudes of shape {(h, w)} do not match oversample={p.oversample} for any "
                             "square image; give --oversample (and --image-size) of the acquisition")
        params = {"oversample": float(p.oversample), "unit_range": True}
        image_shape = [N, N]
        axes = {"y": {"name": "fy", "unit": "frequency row"}, "x": {"name": "fx", "unit": "frequency column"}}
    else:
        raise ValueError(f"domain={domain!r}; use one of image, {', '.join(DOMAINS)}")
    meas = {"domain": domain, "operator": {"name": DOMAINS[domain], "params": params}, "image_shape": image_shape,
            "units": units, "axes": axes}
    return meas, extra, sample
