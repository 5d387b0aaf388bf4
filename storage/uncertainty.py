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
    ome      multiscales with one dataset, path ``spread``: ``napari recon.zarr/uncertainty`` or
             ome-zarr-py show the spread on the reconstruction's physical scale.

Staging (pass 1, tiled outputs only): ``staging/uncertainty`` ``(frame, tile, 3, sy·f, sx·f)`` float32,
the three maps of each tile's blend window (spread in model units), NaN-padded, one chunk per (frame, tile).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from .axes import Layout, Planes
from .ome import ome_image_attrs
from .pyramid import label_layout

__all__ = ["UNC_MAPS", "GROUP", "keeps_seeds", "create_uncertainty", "has_uncertainty", "write_uncertainty_core",
           "read_uncertainty"]

UNC_MAPS = ("spread", "measured_spread", "prior_filled")
GROUP = "uncertainty"
_UNITS = {"spread": "intensity units of the input (sd over seeds)",
          "measured_spread": "noise sd (sd over seeds of A(x_k); < 1: the data cannot tell the seeds apart)",
          "prior_filled": "fraction of the covering tiles that call the pixel prior-filled (> 0.5: prior-filled)"}


def keeps_seeds(manifest: dict) -> bool:
    """Whether an output's run keeps the seed spread: ``seeds ≥ 2``."""
    return int(manifest.get("config", {}).get("seeds", 1) or 1) > 1


def create_uncertainty(root: Path, layout: Layout, chunks: tuple[int, int], scale: dict, units: dict,
                       n_tiles: int | None, slot: tuple[int, int] | None, compressors) -> None:
    """Create the (empty, NaN) ``uncertainty/`` group in a new store at ``root`` and, for a tiled output
    (``n_tiles`` tiles with blend windows ``slot``), ``staging/uncertainty``; ``n_tiles=None``: whole frames."""
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


def has_uncertainty(out) -> bool:
    """Whether the output store ``out`` (an :class:`~storage.output.OutputStore`) holds ``uncertainty/``."""
    return (Path(out.path) / GROUP / "zarr.json").is_file()


def write_uncertainty_core(group: zarr.Group, layout: Layout, frame: int, ys: slice, xs: slice, maps: np.ndarray,
                           intensity_scale: float) -> None:
    """Write the blended ``maps`` ``(3, h, w)`` (spread in model units) of one core of ``frame``."""
    lay = label_layout(layout)
    for i, m in enumerate(UNC_MAPS):
        v = maps[i] / abs(intensity_scale) if m == "spread" else maps[i]
        Planes(group[f"{GROUP}/{m}"], lay)[int(frame), :, ys, xs] = v[np.newaxis].astype(np.float32)


def read_uncertainty(out, frame: int, ys: slice = slice(None), xs: slice = slice(None)) -> dict[str, np.ndarray]:
    """``{map: (h, w) float32}`` of a region of ``frame`` from ``uncertainty/`` (physical spread)."""
    g = zarr.open_group(LocalStore(out.path, read_only=True), mode="r", path=GROUP)
    lay = label_layout(out.layout)
    return {m: Planes(g[m], lay)[int(frame), 0, ys, xs] for m in UNC_MAPS}
