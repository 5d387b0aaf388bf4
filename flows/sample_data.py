"""The sample images bundled with scikit-image, split into training and held-out parts.

Room: ``flows`` — numpy (+ scikit-image's bundled data); no torch, prefect, zarr or xarray. It is
not a store (nothing Zarr/xarray, so not ``storage``) and holds no model code (so not ``ddiff``);
its users are the flows (``ddiff demo`` in :mod:`flows.demo`, the benchmark in :mod:`flows.bench`)
and the scripts in ``benchmarks/`` (training the default prior, its model card), and
scikit-image is a ``flows`` dependency — so it lives here, next to the code that loads it.

The embedded default prior is trained on single-channel crops of these images and everything
that evaluates it (the model card, ``ddiff demo``, the CPU benchmark) uses the held-out part only:
the RIGHTMOST 25 % of every image (columns ``≥ floor(0.75·W)``). Images are converted to
grayscale float in ``[0, 1]`` and mapped to model space ``[−1, 1]`` by ``2x − 1``.
"""
from __future__ import annotations

import sys

import numpy as np

__all__ = ["IMAGES", "HOLDOUT_FRACTION", "sample_images", "crops"]

#: scikit-image sample images used (all ship with the wheel; no download needed).
IMAGES = (
    "camera", "astronaut", "coins", "moon", "brick", "grass", "gravel", "cell",
    "hubble_deep_field", "immunohistochemistry", "retina", "microaneurysms", "clock",
    "chelsea", "coffee", "rocket", "text", "page",
)
HOLDOUT_FRACTION = 0.25


def sample_images(names=IMAGES) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Grayscale images in ``[−1, 1]`` split into (train = left 75 %, held-out = right 25 %).

    Returns ``(train, heldout, names)``; each array is float32 ``(H, W)``. Images that fail to
    load offline are skipped (and named on stderr).
    """
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float

    train_parts, held_parts, used = [], [], []
    for name in names:
        try:
            im = getattr(skimage.data, name)()
        except Exception as exc:  # pooch-only images are not bundled; skip them visibly
            print(f"skipping {name}: {type(exc).__name__}", file=sys.stderr)
            continue
        im = img_as_float(im)
        if im.ndim == 3 and im.shape[-1] == 4:
            im = rgba2rgb(im)
        if im.ndim == 3:
            im = rgb2gray(im)
        im = (2.0 * im - 1.0).astype(np.float32)
        cut = int(np.floor((1.0 - HOLDOUT_FRACTION) * im.shape[1]))
        train_parts.append(np.ascontiguousarray(im[:, :cut]))
        held_parts.append(np.ascontiguousarray(im[:, cut:]))
        used.append(name)
    return train_parts, held_parts, used


def crops(images: list[np.ndarray], n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded ``size``×``size`` crops, cycling through ``images`` (each at least ``size``
    in both dimensions; smaller ones are skipped). Returns float32 ``(n, 1, size, size)``."""
    rng = np.random.RandomState(seed)
    usable = [im for im in images if im.shape[0] >= size and im.shape[1] >= size]
    if not usable:
        raise ValueError(f"no image is at least {size}×{size}")
    out = np.empty((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        im = usable[i % len(usable)]
        top = rng.randint(0, im.shape[0] - size + 1)
        left = rng.randint(0, im.shape[1] - size + 1)
        out[i, 0] = im[top : top + size, left : left + size]
    return out
