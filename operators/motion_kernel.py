"""Random motion-blur kernels, the trajectory generator of ``baselines_spec.md`` §6.

Room: ``operators`` — numpy, plus Pillow (imported lazily) for the rasterisation: the reference
kernels are drawn with Pillow's line / Gaussian blur / Lanczos resize, and a different rasteriser
would not reproduce them bit for bit.

Written from the spec's prose description of ``motionblur.Kernel(size, intensity).kernelMatrix``
(LeviBorodenko/motionblur, also vendored by DAPS), not from its code. All randomness comes from the
``numpy.random.RandomState`` passed in, in the order listed in the spec.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["motion_kernel"]

_EPS = 0.1


def _trajectory(rng: np.random.RandomState, canvas: int, intensity: float) -> list[tuple[float, float]]:
    """Steps 1–4 of §6: the blur path as ``(column x, row y)`` vertices on a ``canvas²`` image."""
    diag = math.sqrt(2.0 * canvas * canvas)
    # 1. path length (the two uniforms are drawn in this order)
    u1 = rng.uniform()
    u2 = rng.uniform(0, intensity**2)
    max_len = 0.75 * diag * (u1 + u2)
    # 2. step lengths: redraw any single step that is already longer than the whole path
    steps: list[float] = []
    while sum(steps) < max_len:
        s = rng.beta(1, 30) * (1 - intensity + _EPS) * diag
        if s < max_len:
            steps.append(s)
    n = len(steps)
    # 3. angles, with a sign flip of probability `jitter` relative to the previous angle
    max_angle = rng.uniform(0, intensity * math.pi)
    jitter = rng.beta(2, 20)
    angles = [rng.uniform(-max_angle, max_angle)]
    while len(angles) < n:
        a = rng.triangular(0, intensity * max_angle, max_angle + _EPS)
        if rng.uniform() < jitter:
            a *= -np.sign(angles[-1])
        else:
            a *= np.sign(angles[-1])
        angles.append(a)
    # 4. cumulative complex path, centred on its vertex centroid, rotated, moved to the canvas centre
    path = np.cumsum(np.exp(1j * np.asarray(angles)) * np.asarray(steps))
    path = path - sum(path.tolist()) / n  # sequential sum, as Python's sum() in the reference
    path = path * np.exp(1j * rng.uniform(0, math.pi))
    path = path + complex(canvas / 2, canvas / 2)
    return [(float(z.real), float(z.imag)) for z in path]


def motion_kernel(size: int = 61, intensity: float = 0.5, rng: np.random.RandomState | int | None = None) -> np.ndarray:
    """One random motion kernel, ``(size, size)`` float32, ≥ 0, sum 1, row index = y.

    ``rng``: a ``RandomState`` (consumed in the reference order), an int seed, or ``None``
    (a fresh unseeded state). Drawn at 2× on a black canvas with a 1-px white polyline, Pillow
    ``GaussianBlur(radius=int(0.01·D))``, Lanczos downscale to ``size``, 8-bit luma, normalised.
    """
    from PIL import Image, ImageDraw, ImageFilter

    if int(size) < 3:
        raise ValueError(f"motion kernel size must be at least 3, got {size}")
    if not (0.0 <= float(intensity) <= 1.0):
        raise ValueError(f"motion blur intensity must be in [0, 1], got {intensity}")
    if not isinstance(rng, np.random.RandomState):
        rng = np.random.RandomState(rng)
    size, canvas = int(size), 2 * int(size)
    diag = math.sqrt(2.0 * canvas * canvas)
    path = _trajectory(rng, canvas, float(intensity))
    img = Image.new("RGB", (canvas, canvas))
    ImageDraw.Draw(img).line(xy=path, fill=(255, 255, 255), width=int(diag / 150))
    img = img.filter(ImageFilter.GaussianBlur(radius=int(diag * 0.01)))
    img = img.resize((size, size), resample=Image.LANCZOS).convert("L")
    k = np.asarray(img, dtype=np.float32)
    total = k.sum()
    if total <= 0:  # cannot happen for a path inside the canvas; guard against silent NaNs
        raise RuntimeError("motion kernel rasterised to an empty image")
    return k / total
