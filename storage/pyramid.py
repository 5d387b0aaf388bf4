"""Viewer-ready outputs: multiscale pyramids, OME-NGFF label images, consolidated metadata.

Room: ``storage`` — zarr, numpy; never torch/prefect/``ddiff``/``flows``.

* :func:`pyramid_levels` — how many levels a ``(H, W)`` image with ``(cy, cx)`` chunks gets:
  halve until a level fits in one chunk (a 16k² frame with 256² chunks: 7 levels).
* :func:`build_pyramid` — levels ``1..L-1`` of one frame from level 0, chunk by chunk: each
  output chunk reads a ``2cy × 2cx`` window of the level below (mean for images, max for labels
  so a flagged pixel stays visible), so memory stays at a few chunks whatever the frame size.
* :func:`write_label` — one frame of a label image ``labels/<name>`` (uint8, the image's axes
  less ``c``, the image's levels) plus its pyramid; the label image and the ``labels``
  group listing are created on first use.
* :func:`consolidate` — Zarr v3 consolidated metadata at the root and in the xarray groups, so
  ``xarray.open_zarr(store, group=...)`` and ``xarray.open_zarr(store/group)`` open without the
  "consolidated metadata" warning. Called after every change of metadata (never of chunks).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from .axes import Layout, Planes
from .safety import writes
from .ome import ome_label_attrs, ome_labels_attrs

__all__ = ["pyramid_levels", "level_layout", "label_layout", "build_pyramid", "write_label", "consolidate",
           "XARRAY_GROUPS"]

#: groups written by xarray (consolidated on their own as well as through the root)
XARRAY_GROUPS = ("diagnostics", "audit", "uncertainty")


def pyramid_levels(H: int, W: int, cy: int, cx: int, max_levels: int = 12) -> int:
    levels = 1
    while levels < max_levels and (math.ceil(H / 2 ** (levels - 1)) > cy or math.ceil(W / 2 ** (levels - 1)) > cx):
        levels += 1
    return levels


def level_layout(layout: Layout, level: int) -> Layout:
    """The layout of pyramid level ``level`` (y and x divided by ``2^level``, rounded up)."""
    s = layout.sizes
    return layout.with_sizes(y=math.ceil(s["y"] / 2 ** level), x=math.ceil(s["x"] / 2 ** level))


def _down2(a: np.ndarray, reduce: str) -> np.ndarray:
    """2×2 reduction of the last two axes of ``a``; odd edges reduce over the pixels present."""
    h, w = a.shape[-2:]
    ph, pw = h % 2, w % 2
    if reduce == "mean":
        if ph or pw:
            a = np.pad(a.astype(np.float64), [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)], constant_values=np.nan)
        b = a.reshape(a.shape[:-2] + (a.shape[-2] // 2, 2, a.shape[-1] // 2, 2)).astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN block (not yet assembled) stays NaN
            return np.nanmean(b, axis=(-3, -1))
    a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)])
    return a.reshape(a.shape[:-2] + (a.shape[-2] // 2, 2, a.shape[-1] // 2, 2)).max(axis=(-3, -1))


def build_pyramid(group: zarr.Group, layout: Layout, levels: int, frame: int, reduce: str = "mean") -> None:
    """Levels ``1..levels-1`` of ``frame`` in ``group`` (arrays ``"1"``, ``"2"``, …) from level 0."""
    for level in range(1, levels):
        src = Planes(group[str(level - 1)], level_layout(layout, level - 1))
        dst_arr = group[str(level)]
        dst = Planes(dst_arr, level_layout(layout, level))
        _, _, H, W = dst.shape
        _, _, cy, cx = dst.chunks
        for y0 in range(0, H, cy):
            for x0 in range(0, W, cx):
                y1, x1 = min(H, y0 + cy), min(W, x0 + cx)
                block = src[frame, :, 2 * y0:2 * y1, 2 * x0:2 * x1]
                dst[frame, :, y0:y1, x0:x1] = _down2(block, reduce).astype(dst.dtype)


def label_layout(layout: Layout) -> Layout:
    """The image's layout less its ``c`` axis (label images and per-pixel maps over all channels)."""
    return Layout(layout.axes.replace("c", ""), tuple(n for a, n in zip(layout.axes, layout.shape) if a != "c"))


def write_label(root_path, name: str, frame: int, data: np.ndarray, *, layout: Layout, levels: int, chunks,
                scale: dict, units: dict, colors: dict[int, tuple], properties: dict[int, dict] | None = None,
                origin: tuple[int, int] | None = None, pyramid: bool = True) -> None:
    """Write frame ``frame`` of label image ``labels/<name>`` (values 0–255, ``data`` ``(H, W)`` on
    the image's level-0 grid) and its max-pyramid. ``layout``: the image's level-0 layout (the label
    has the same axes less ``c``, so viewers overlay it on every channel); ``chunks``: spatial ``(cy, cx)``.
    Region by region: ``origin=(y0, x0)`` places an ``(h, w)`` block there and ``pyramid=False``
    leaves the coarser levels to one :func:`build_pyramid` (``reduce="max"``) after the last block."""
    data = np.asarray(data)
    lay = label_layout(layout)
    H, W = lay.sizes["y"], lay.sizes["x"]
    y0, x0 = (0, 0) if origin is None else (int(origin[0]), int(origin[1]))
    h, w = data.shape if data.ndim == 2 else (-1, -1)
    if (origin is None and (h, w) != (H, W)) or h < 0 or y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
        raise ValueError(f"label {name!r}: frame data has shape {data.shape} at {(y0, x0)}; expected the image "
                         f"grid {(H, W)}" + (" or a block inside it" if origin is not None else ""))
    if data.min(initial=0) < 0 or data.max(initial=0) > 255:
        raise ValueError(f"label {name!r}: values must lie in 0..255 (uint8)")
    store = LocalStore(Path(root_path))
    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    labels = root.require_group("labels")
    names = list(labels.attrs.get("ome", {}).get("labels", []))
    if name not in names:
        g = labels.create_group(name, overwrite=True, attributes={
            "ome": ome_label_attrs(name, lay.axes, scale, units, levels, colors, properties)})
        for level in range(levels):
            ll = level_layout(lay, level)
            g.create_array(str(level), shape=ll.shape, dtype=np.uint8, chunks=ll.chunks(*chunks),
                           dimension_names=tuple(ll.axes), fill_value=0)
        labels.attrs.update({"ome": ome_labels_attrs(names + [name])})
        consolidate(root_path)
    g = labels[name]
    Planes(g["0"], lay)[frame, :, y0:y0 + h, x0:x0 + w] = data.astype(np.uint8)[np.newaxis]
    if pyramid:
        build_pyramid(g, lay, levels, frame, reduce="max")


@writes("the store's consolidated metadata")
def consolidate(root_path) -> None:
    """Consolidate the xarray groups, then the root (Zarr v3 ``consolidated_metadata``)."""
    store = LocalStore(Path(root_path))
    root = zarr.open_group(store, mode="r", use_consolidated=False)
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not (yet) in the v3 spec; xarray relies on it
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        # the ledger folder and the lock file live beside the Zarr nodes on purpose
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component")
        for name in XARRAY_GROUPS:
            if name in root:
                zarr.consolidate_metadata(store, path=name)
        zarr.consolidate_metadata(store)
