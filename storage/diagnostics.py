"""The diagnostics dataset of an output store: an xarray Dataset with physical coordinates.

Room: ``storage`` — xarray, dask, zarr, numpy; never torch/prefect/``ddiff``/``flows``.

Group ``diagnostics/`` of the output store (Zarr v3, consolidated metadata)::

    dims      frame (the (t, z) planes, frame = t·Z + z), tile, c, y, x (input grid), box
    coords    time(frame), depth(frame) physical t / z of each frame (when the stack has those axes)
              t_index(frame), z_index(frame)
              y, x                     pixel positions (input grid) in the stack's space unit
              tile_row, tile_col       grid position of each tile
              tile_y, tile_x           physical centre of each tile's core
    per (frame, tile):  chi2_nu, nll, residual_norm, residual_rms, nfe, seconds, dof (valid measurements
                        in the blend window: masked entries do not count) (NaN until written;
                        nfe is int64 on disk with fill -1, decoded to NaN)
    per pixel:          residual (frame, c, y, x) = y − A x̂ in the input's data units (ADU), tile cores only; NaN where
                        the measurement is invalid (masked)
    static:             core_box, blend_box (tile, box) in input pixels

Every coordinate carries ``units`` (OME-NGFF unit names). Created as a template
(``to_zarr(compute=False)``); tasks fill their own region (:func:`write_residual`,
:func:`write_scalars`), which never touches metadata, so the consolidated metadata stays valid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from zarr.storage import LocalStore

from .axes import Layout
from .tiling import TilePlan

__all__ = ["DIAG_SCALARS", "NFE_FILL", "create_diagnostics", "write_residual", "write_scalars", "frame_coords"]

DIAG_SCALARS = {"chi2_nu": "float64", "nll": "float64", "residual_norm": "float64", "residual_rms": "float64",
                "nfe": "int64", "seconds": "float64", "dof": "float64"}
NFE_FILL = -1
GROUP = "diagnostics"


def frame_coords(layout: Layout, scale: dict, units: dict) -> dict:
    """Coordinates of the ``frame`` dimension: ``time`` (t) and ``depth`` (z) in physical units and
    their indices ``t_index``/``z_index`` (for the axes the stack has)."""
    s = layout.sizes
    t_idx, z_idx = np.divmod(np.arange(layout.n_frames), s["z"])
    coords = {}
    for a, name, idx in (("t", "time", t_idx), ("z", "depth", z_idx)):
        if a in layout.axes:
            coords[name] = ("frame", idx * float(scale.get(a, 1.0)), {"units": units.get(a, ""), "axis": a})
            coords[f"{a}_index"] = ("frame", idx.astype(np.int64))
    return coords


def create_diagnostics(root: Path, layout: Layout, plan: TilePlan, scale: dict, units: dict, attrs: dict,
                       measurement: dict | None = None) -> None:
    """Write the template of ``diagnostics/`` (metadata only; dask-backed variables are not computed).
    ``measurement``: a measurement store's record — its rows and columns (angle × detector bin, k-space
    rows × columns) are named on the ``y``/``x`` coordinates and the residual, in their own units."""
    import dask.array as da
    import xarray as xr

    N, C, H, W = layout.frames_shape
    n = plan.n_tiles
    ty, tx = plan.chunks
    dy, dx = float(scale.get("y", 1.0)), float(scale.get("x", 1.0))
    su = units.get("y", "")
    data_vars = {}
    for name, dt in DIAG_SCALARS.items():
        fill = NFE_FILL if dt == "int64" else np.nan
        data_vars[name] = (("frame", "tile"), da.full((N, n), fill, dtype=dt, chunks=(1, 1)))
    axes = (measurement or {}).get("axes") or {}
    named = {"axes": f"y = {axes['y']['name']} ({axes['y']['unit']}), x = {axes['x']['name']} ({axes['x']['unit']})"
             } if axes else {}  # a measurement's rows and columns
    data_vars["residual"] = (("frame", "c", "y", "x"),
                             da.full((N, C, H, W), np.nan, dtype=np.float32, chunks=(1, C, ty, tx)),
                             {"units": "data units of the input (ADU): y - A x", **named})
    data_vars["core_box"] = (("tile", "box"), np.array([t.core for t in plan], dtype=np.int64))
    data_vars["blend_box"] = (("tile", "box"), np.array([t.blend for t in plan], dtype=np.int64))
    cores = np.array([t.core for t in plan], dtype=np.float64).reshape(-1, 4)
    coords = {
        **frame_coords(layout, scale, units),
        "c": ("c", np.arange(C, dtype=np.int64)),
        "y": ("y", np.arange(H) * dy, {"units": su, "long_name": "y (pixel position)"}),
        "x": ("x", np.arange(W) * dx, {"units": su, "long_name": "x (pixel position)"}),
        "tile_row": ("tile", np.array([t.row for t in plan], dtype=np.int64)),
        "tile_col": ("tile", np.array([t.col for t in plan], dtype=np.int64)),
        "tile_y": ("tile", (cores[:, 0] + cores[:, 1] - 1) / 2 * dy, {"units": su, "long_name": "core centre y"}),
        "tile_x": ("tile", (cores[:, 2] + cores[:, 3] - 1) / 2 * dx, {"units": su, "long_name": "core centre x"}),
    }
    for a, n in (("y", H), ("x", W)):  # a measurement's own axes: angle in degrees, detector bins, k-space rows
        if a in axes:
            d = axes[a]
            values = np.asarray(d["values"], np.float64) if len(d.get("values") or []) == n else np.arange(n, dtype=np.float64)
            coords[a] = (a, values, {"units": d["unit"], "long_name": f"{d['name']} ({d['unit']})"})
            coords[d["name"]] = (a, values, {"units": d["unit"]})
    ds = xr.Dataset(data_vars, coords=coords, attrs={**attrs, "axes": layout.axes,
                                                     "box_order": "y0,y1,x0,x1 (half-open, input pixels)"})
    ds.to_zarr(LocalStore(root), group=GROUP, mode="w-", compute=False, consolidated=False, zarr_format=3,
               encoding={"nfe": {"_FillValue": NFE_FILL}})


def write_residual(root: Path, frame: int, core: tuple[int, int, int, int], r: np.ndarray) -> None:
    """Residual ``r`` ``(C, h, w)`` of one tile core ``(y0, y1, x0, x1)`` of ``frame``."""
    import xarray as xr

    y0, y1, x0, x1 = core
    xr.Dataset({"residual": (("frame", "c", "y", "x"), r[np.newaxis])}).to_zarr(
        LocalStore(root), group=GROUP, mode="r+", consolidated=False, zarr_format=3,
        region={"frame": slice(frame, frame + 1), "y": slice(y0, y1), "x": slice(x0, x1)})


def write_scalars(root: Path, frame: int, tile: int, values: dict) -> None:
    """Per-tile scalars (any of :data:`DIAG_SCALARS`) of ``(frame, tile)``."""
    import xarray as xr

    unknown = set(values) - set(DIAG_SCALARS)
    if unknown:
        raise ValueError(f"unknown diagnostics {sorted(unknown)}; allowed: {sorted(DIAG_SCALARS)}")
    dv = {name: (("frame", "tile"), np.array([[values[name]]], dtype=DIAG_SCALARS[name])) for name in values}
    xr.Dataset(dv).to_zarr(LocalStore(root), group=GROUP, mode="r+", consolidated=False, zarr_format=3,
                           region={"frame": slice(frame, frame + 1), "tile": slice(tile, tile + 1)})
