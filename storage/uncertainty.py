"""The seed spread of a multi-seed run (``--seeds K``, K ≥ 2) as maps over the reconstruction.

Room: ``storage`` — zarr, xarray, dask, numpy; never torch/prefect/``ddiff``/``flows``.

With ``config["seeds"] ≥ 2`` every tile (or whole frame) is solved K times; the task runs
:func:`ddiff.audit.uncertainty` on the K results. Tiled outputs stage three maps per tile and
assembly blends them with the image's weights, core by core; whole-frame outputs (measurement
stores of a global operator) write the frame's maps directly. Either way they land in the group
``uncertainty/`` of the output store, which is at once an xarray Dataset and a one-level OME-NGFF image::

    dims     the reconstruction's axes less c (t, z as present, y, x), output grid, chunks = cores
    coords   t, z (physical time / depth), y, x (physical pixel positions), each with ``units``
    spread            float32: sd over the K seeds (RMS over channels) in the input's physical
                      intensity units (model-space spread / the intensity map's scale)
    measured_spread   float32: sd over seeds of A(x̂ₖ) in units of the noise sd (below ~1 the data
                      cannot tell the seeds apart); NaN where the grids are unrelated (always for
                      global operators: a pixel has no measurement of its own)
    prior_filled      float32 in [0, 1]: ddiff.audit's prior-filled map (seeds differ where the data
                      is blind) of the tiles covering a pixel, blended; > 0.5 = prior-filled. The
                      audit writes it as the label image ``labels/prior_filled``.
    spread_local      float32, intensity units: the seed spread pooled over 5×5 (RMS) — a feature of the bounds
    posterior_sd      float32, intensity units: how weakly the measurements see the pixel (the sd of a
                      Gaussian posterior with the data's information on that pixel alone; the prior's sd
                      where the operator is blind) — a feature of the calibrated bounds
    structure         float32, intensity units: local sd (5×5) of the seed mean — a feature of the bounds
    halfwidth         float32, intensity units: ``λ·s`` of the calibrated bounds (``--calibration``);
                      NaN without a calibration record
    lower, upper      (calibrated runs only) OME-NGFF images with the reconstruction's axes, channels
                      and pyramid: the bounds ``x̄ ∓ λ·s`` in the image's units (groups
                      ``uncertainty/lower/0..L-1``, ``uncertainty/upper/0..L-1``; docs/audit.md §6)
    ome      multiscales with one dataset, path ``spread``: ``napari recon.zarr/uncertainty`` or
             ome-zarr-py show the spread on the reconstruction's physical scale.

Staging (pass 1, tiled outputs only): ``staging/uncertainty`` ``(frame, tile, 7, sy·f, sx·f)`` float32,
the maps of each tile's blend window (model units), NaN-padded, one chunk per (frame, tile). The
half-width is affine in the features, so blending it equals blending the features and applying the rule.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from .axes import Layout, Planes
from .ome import ome_image_attrs
from .pyramid import label_layout

__all__ = ["UNC_MAPS", "GROUP", "BOUNDS", "keeps_seeds", "is_bounded", "create_uncertainty", "has_uncertainty",
           "write_uncertainty_core", "read_uncertainty", "read_bounds", "bounds_pyramid"]

UNC_MAPS = ("spread", "measured_spread", "prior_filled", "spread_local", "posterior_sd", "structure", "halfwidth")
MODEL_UNITS = ("spread", "spread_local", "posterior_sd", "structure", "halfwidth")  # stored ÷ |intensity scale|
BOUNDS = ("lower", "upper")
GROUP = "uncertainty"
_UNITS = {"spread": "intensity units of the input (sd over seeds)",
          "measured_spread": "noise sd (sd over seeds of A(x_k); < 1: the data cannot tell the seeds apart)",
          "prior_filled": "fraction of the covering tiles that call the pixel prior-filled (> 0.5: prior-filled)",
          "spread_local": "intensity units of the input (seed sd pooled over 5x5, RMS)",
          "posterior_sd": "intensity units of the input (posterior sd proxy 1/sqrt(diag(A^H W A) + 1/s0^2))",
          "structure": "intensity units of the input (local 5x5 sd of the seed mean)",
          "halfwidth": "intensity units of the input (lambda * s of the calibrated bounds; NaN without calibration)"}


def keeps_seeds(manifest: dict) -> bool:
    """Whether an output's run keeps the uncertainty maps: ``seeds ≥ 2``, calibrated bounds, or the bound
    features of a one-seed calibration run (``config["features"]``)."""
    cfg = manifest.get("config", {})
    return int(cfg.get("seeds", 1) or 1) > 1 or is_bounded(manifest) or bool(cfg.get("features"))


def is_bounded(manifest: dict) -> bool:
    """Whether an output's run writes calibrated bounds (``--calibration``: ``config["bounds"]``)."""
    return "bounds" in manifest.get("config", {})


def create_uncertainty(root: Path, layout: Layout, chunks: tuple[int, int], scale: dict, units: dict,
                       n_tiles: int | None, slot: tuple[int, int] | None, compressors, levels: int = 0) -> None:
    """Create the (empty, NaN) ``uncertainty/`` group in a new store at ``root`` and, for a tiled output
    (``n_tiles`` tiles with blend windows ``slot``), ``staging/uncertainty``; ``n_tiles=None``: whole frames.
    ``levels`` > 0 (a calibrated run): also the images ``lower`` and ``upper`` with the image's pyramid."""
    import dask.array as da
    import xarray as xr

    f32 = np.dtype("float32")
    if n_tiles is not None:
        zarr.open_group(LocalStore(root), mode="r+").require_group("staging").create_array(
            "uncertainty", shape=(layout.n_frames, n_tiles, len(UNC_MAPS)) + tuple(slot), dtype=f32,
            chunks=(1, 1, len(UNC_MAPS)) + tuple(slot), compressors=compressors, fill_value=float("nan"),
            dimension_names=("frame", "tile", "map", "y", "x"))
    lay = label_layout(layout)
    cy, cx = chunks
    ch = tuple(cy if a == "y" else cx if a == "x" else 1 for a in lay.axes)
    coords = {a: (a, np.arange(n) * float(scale.get(a, 1.0)), {"units": units.get(a, "")})
              for a, n in zip(lay.axes, lay.shape)}
    dv = {m: (tuple(lay.axes), da.full(lay.shape, np.nan, dtype=f32, chunks=ch), {"units": _UNITS[m]})
          for m in UNC_MAPS}
    xr.Dataset(dv, coords=coords, attrs={"axes": lay.axes}).to_zarr(
        LocalStore(root), group=GROUP, mode="w-", compute=False, consolidated=False, zarr_format=3,
        encoding={m: {"compressors": compressors} for m in UNC_MAPS})
    ome = ome_image_attrs("uncertainty (seed spread)", lay.axes, scale, units, 1)
    ome["multiscales"][0]["datasets"][0]["path"] = "spread"
    zarr.open_group(LocalStore(root), mode="r+", path=GROUP).attrs["ome"] = ome
    if levels:
        from .pyramid import level_layout

        for name in BOUNDS:
            g = zarr.open_group(LocalStore(root), mode="r+", path=GROUP).create_group(name, attributes={
                "ome": ome_image_attrs(f"{name} bound (calibrated)", layout.axes, scale, units, levels)})
            for level in range(levels):
                ll = level_layout(layout, level)
                g.create_array(str(level), shape=ll.shape, dtype=f32, chunks=ll.chunks(cy, cx), compressors=compressors,
                               dimension_names=tuple(ll.axes), fill_value=float("nan"))


def has_uncertainty(out) -> bool:
    """Whether the output store ``out`` (an :class:`~storage.output.OutputStore`) holds ``uncertainty/``."""
    return (Path(out.path) / GROUP / "zarr.json").is_file()


def write_uncertainty_core(group: zarr.Group, layout: Layout, frame: int, ys: slice, xs: slice, maps: np.ndarray,
                           intensity, mean: np.ndarray | None = None) -> None:
    """Write the blended ``maps`` ``(7, h, w)`` (:data:`UNC_MAPS`, model units) of one core of ``frame``;
    for a calibrated output also ``lower``/``upper`` = ``mean ∓ halfwidth`` (``mean`` ``(C, h, w)`` the
    seed mean in model units) mapped to the image's units by ``intensity`` (an IntensityMap)."""
    lay = label_layout(layout)
    scale = abs(float(intensity.scale))
    for i, m in enumerate(UNC_MAPS[:len(maps)]):
        if f"{GROUP}/{m}" not in group:  # a store made before the map existed keeps what it had
            continue
        v = maps[i] / scale if m in MODEL_UNITS else maps[i]
        Planes(group[f"{GROUP}/{m}"], lay)[int(frame), :, ys, xs] = v[np.newaxis].astype(np.float32)
    if mean is not None and f"{GROUP}/lower" in group:
        h = maps[UNC_MAPS.index("halfwidth")][np.newaxis]
        a, b = intensity.from_model(mean - h), intensity.from_model(mean + h)
        Planes(group[f"{GROUP}/lower/0"], layout)[int(frame), :, ys, xs] = np.minimum(a, b)
        Planes(group[f"{GROUP}/upper/0"], layout)[int(frame), :, ys, xs] = np.maximum(a, b)


def bounds_pyramid(group: zarr.Group, layout: Layout, levels: int, frame: int) -> None:
    """Levels 1.. of ``lower``/``upper`` (block means: the mean of pixel bounds bounds the block's mean)."""
    from .pyramid import build_pyramid

    for name in BOUNDS:
        if f"{GROUP}/{name}" in group:
            build_pyramid(group[f"{GROUP}/{name}"], layout, levels, int(frame))


def read_bounds(out, frame: int, level: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` ``(C, h, w)`` float32 of ``frame`` at pyramid ``level`` (image units)."""
    from .pyramid import level_layout

    g = zarr.open_group(LocalStore(out.path, read_only=True), mode="r", path=GROUP)
    lay = level_layout(out.layout, level)
    return tuple(Planes(g[f"{b}/{level}"], lay)[int(frame)] for b in BOUNDS)


def read_uncertainty(out, frame: int, ys: slice = slice(None), xs: slice = slice(None)) -> dict[str, np.ndarray]:
    """``{map: (h, w) float32}`` of a region of ``frame`` from ``uncertainty/`` (physical spread)."""
    g = zarr.open_group(LocalStore(out.path, read_only=True), mode="r", path=GROUP)
    lay = label_layout(out.layout)
    return {m: Planes(g[m], lay)[int(frame), 0, ys, xs] for m in UNC_MAPS if m in g}
