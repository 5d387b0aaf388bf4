"""The ``audit/`` dataset of an output store, written frame by frame and region by region.

Room: ``storage`` — xarray, dask, zarr, numpy; never torch/prefect/``ddiff``/``flows``.

Group ``audit/`` (Zarr v3, consolidated; written by ``ddiff audit``)::

    dims      frame, tile, y, x (output grid)
    coords    frame, time/depth (physical t, z of each frame), y, x (physical positions, units)
    per frame           chi2_nu, z, p_value, p_value_low (float64), frame_flag (bool), n_flagged_windows (int64)
    per (frame, tile)   tile_flagged (bool): a flagged window touches the tile's core
    maps (local ops)    flag_map (bool), window_p (float32) — (frame, y, x)
    attrs               the audit's settings (alpha, control, window, noise, …)

Created as a template (``to_zarr(compute=False)``) by :func:`create_audit`, so a frame's numbers
(:func:`write_audit_frame`) and each block of its maps (:func:`write_audit_block`) are written into
their own region without the frame in memory; :func:`finish_audit` records the settings and
consolidates the metadata.
"""
from __future__ import annotations

import numpy as np
import zarr
from zarr.storage import LocalStore

from .diagnostics import frame_coords
from .pyramid import consolidate
from .safety import writes

__all__ = ["AUDIT_FRAME_VARS", "create_audit", "write_audit_frame", "write_audit_block", "finish_audit"]

GROUP = "audit"
#: per-frame variables and their dtypes
AUDIT_FRAME_VARS = {"chi2_nu": "float64", "z": "float64", "p_value": "float64", "p_value_low": "float64",
                    "frame_flag": "bool", "n_flagged_windows": "int64"}
_MAPS = {"flag_map": "bool", "window_p": "float32"}


@writes("the audit dataset (audit/)")
def create_audit(out, *, maps: bool) -> None:
    """(Re)create the empty ``audit/`` dataset of output ``out`` (an ``OutputStore``); ``maps``:
    with the per-pixel ``flag_map`` and ``window_p`` (local operators)."""
    import dask.array as da
    import xarray as xr

    N, n = out.n_frames, out.plan.n_tiles
    scale, units = out.geometry
    (cy, cx) = out.manifest["recon"]["chunks"]
    _, _, H, W = out.recon().shape
    fill = {"bool": False, "int64": 0, "float64": np.nan, "float32": np.nan}
    dv = {k: (("frame",), da.full((N,), fill[d], dtype=d, chunks=(1,))) for k, d in AUDIT_FRAME_VARS.items()}
    dv["tile_flagged"] = (("frame", "tile"), da.zeros((N, n), dtype=bool, chunks=(1, n)))
    coords = {"frame": ("frame", np.arange(N)), **frame_coords(out.layout, scale, units)}
    if maps:
        for k, d in _MAPS.items():
            dv[k] = (("frame", "y", "x"), da.full((N, H, W), fill[d], dtype=d, chunks=(1, cy, cx)))
        for a, size in (("y", H), ("x", W)):
            coords[a] = (a, np.arange(size) * float(scale.get(a, 1.0)), {"units": units.get(a, "")})
    xr.Dataset(dv, coords=coords).to_zarr(LocalStore(out.path), group=GROUP, mode="w", compute=False,
                                          consolidated=False, zarr_format=3)


@writes("the audit of frame {frame} (audit/)")
def write_audit_frame(out, frame: int, values: dict, tile_flagged: np.ndarray) -> None:
    """The per-frame numbers (:data:`AUDIT_FRAME_VARS`) and tile flags ``(n_tiles,)`` of ``frame``."""
    import xarray as xr

    dv = {k: (("frame",), np.asarray([values[k]], dtype=d)) for k, d in AUDIT_FRAME_VARS.items()}
    dv["tile_flagged"] = (("frame", "tile"), np.asarray(tile_flagged, dtype=bool)[None])
    xr.Dataset(dv).to_zarr(LocalStore(out.path), group=GROUP, mode="r+", consolidated=False, zarr_format=3,
                           region={"frame": slice(frame, frame + 1), "tile": slice(None)})


@writes("the audit maps of frame {frame} (audit/)")
def write_audit_block(out, name: str, frame: int, y0: int, x0: int, data: np.ndarray) -> None:
    """One block ``(h, w)`` at ``(y0, x0)`` (output grid) of map ``name`` (``flag_map``/``window_p``) of ``frame``."""
    h, w = data.shape
    arr = zarr.open_group(LocalStore(out.path), mode="r+", path=GROUP, use_consolidated=False)[name]
    arr[frame, y0:y0 + h, x0:x0 + w] = np.asarray(data, dtype=_MAPS[name])


@writes("the audit dataset's settings (audit/)")
def finish_audit(out, attrs: dict) -> None:
    """Record the audit's settings on ``audit/`` and consolidate the store's metadata."""
    g = zarr.open_group(LocalStore(out.path), mode="r+", path=GROUP, use_consolidated=False)
    g.attrs.update({k: str(v) for k, v in attrs.items()})
    consolidate(out.path)
