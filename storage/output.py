"""Output stores: reconstruction (OME-Zarr), diagnostics (xarray in Zarr), ledger, manifest, lock.

Room: ``storage`` — zarr, xarray, dask, numpy; never torch/prefect/``ddiff``/``flows``.

Contract for the flows author — tasks pass *descriptors* (paths, ints, a JSON config), never arrays::

    out = storage.create_output(out_path, input_store, plan, config, prior_sha256=...)  # once, in the flow
    with storage.RunLock(out_path) as lock:                                # once per run, in the flow
        for frame, tile in out.ledger.pending("solved"):                   # -> one task each:
            inp = storage.read_tile(input_store, frame, tile, out.plan)    #   model-space read window
            x, diag, resid = solve(inp.data, inp.valid)                    #   x: blend window (or read window)
            storage.write_tile_result(out_path, frame, tile, x, diag, resid, run_id=lock.run_id)
        for frame in range(T):                                              # after a frame's tiles are solved
            storage.assemble_frame(out_path, frame, run_id=lock.run_id)    #   (or assemble_tile per tile)
        storage.finalize(out_path, run_id=lock.run_id)

Layout of ``out_path`` (a Zarr v3 group; ``attributes["ddiff"]`` is the run manifest)::

    recon/        OME-NGFF 0.5 image, array "0" (T, C, H·f, W·f) float32 in the INPUT's physical units
                  (model space mapped back with the input's affine), chunks (1, C, ty·f, tx·f) = one core;
                  NaN until assembled.
    staging/contrib (T, n_tiles, C, sy·f, sx·f) float32 model space: one chunk per (frame, tile) holding
                  that tile's unweighted blend-window solution (NaN-padded). Pass 1 writes here.
    diagnostics/  xarray Dataset: per (t, tile): chi2_nu, nll, residual_norm, residual_rms, nfe, seconds
                  (NaN until written; nfe is int64 on disk with fill -1, which xarray decodes to NaN);
                  per pixel: residual (t, c, y, x) on the input grid, core regions only; static tile boxes.
                  Created as a template (to_zarr(compute=False)), filled with to_zarr(region=...).
    _ledger/      solved/t<frame>/k<tile>.json and assembled/..., COMPLETE.json — plain files written
                  atomically (temp + rename) *after* the data they certify.
    .ddiff.lock   present while a run holds the store.

Guarantees: (1) a ledger entry exists only if all data of that step was written before it (a crash
in between leaves the step pending and a rerun redoes it; every write is a full, deterministic
overwrite of that tile's own chunks, so the rerun's bytes equal an uninterrupted run's); (2) no two
tiles ever write the same chunk; (3) an existing output with a different configuration hash is
refused unless ``overwrite=True`` (and never while another live run holds its lock); a path holding
anything else is refused outright; (4) writes need the run lock (``run_id`` checked when given).
The manifest's ``config_hash`` covers the config dict, the prior checksum, the input's data checksum,
the plan and the scale factor.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import zarr
from zarr.storage import LocalStore

from .ingest import Stack, _compressors, _store_kind, open_stack
from .intensity import IntensityMap
from .ome import AXES, ome_image_attrs, package_version
from .safety import (ConfigMismatchError, RunLock, StorageError, StoreExistsError, atomic_directory, atomic_write_json,
                     canonical_hash, read_json, require_lock, safe_subpath)
from .tiling import Tile, TilePlan

__all__ = ["OUTPUT_KIND", "DIAG_SCALARS", "OutputStore", "Ledger", "TileInput", "create_output", "open_output",
           "read_tile", "write_tile_result", "assemble_tile", "assemble_frame", "finalize"]

OUTPUT_KIND = "ddiff-output"
DIAG_SCALARS = {"chi2_nu": "float64", "nll": "float64", "residual_norm": "float64", "residual_rms": "float64",
                "nfe": "int64", "seconds": "float64"}
_NFE_FILL = -1

# Fault injection for crash tests: called with a step name between the writes of one tile.
_FAULT_HOOK: Callable[[str], None] | None = None


def _fault(step: str) -> None:
    if _FAULT_HOOK is not None:
        _FAULT_HOOK(step)


class Ledger:
    """Completion markers ``_ledger/<stage>/t<frame>/k<tile>.json`` (stages: solved, assembled)."""

    STAGES = ("solved", "assembled")

    def __init__(self, root: str | os.PathLike, n_frames: int, n_tiles: int):
        self.root = Path(root) / "_ledger"
        self.n_frames, self.n_tiles = n_frames, n_tiles

    def _path(self, frame: int, tile: int, stage: str) -> Path:
        if stage not in self.STAGES:
            raise ValueError(f"stage={stage!r}; use one of {self.STAGES}")
        if not (0 <= int(frame) < self.n_frames and 0 <= int(tile) < self.n_tiles):
            raise ValueError(f"(frame {frame}, tile {tile}) out of range ({self.n_frames} frames, {self.n_tiles} tiles)")
        return safe_subpath(self.root, f"{stage}/t{int(frame):06d}/k{int(tile):06d}.json")

    def is_done(self, frame: int, tile: int, stage: str = "solved") -> bool:
        return self._path(frame, tile, stage).exists()

    def record(self, frame: int, tile: int, stage: str = "solved") -> dict | None:
        p = self._path(frame, tile, stage)
        return read_json(p) if p.exists() else None

    def mark_done(self, frame: int, tile: int, stage: str = "solved", **info) -> None:
        atomic_write_json(self._path(frame, tile, stage), {"frame": int(frame), "tile": int(tile), "stage": stage,
                                                           "time": time.time(), **info})

    def pending(self, stage: str = "solved", frames: range | None = None) -> list[tuple[int, int]]:
        frames = range(self.n_frames) if frames is None else frames
        return [(t, k) for t in frames for k in range(self.n_tiles) if not self.is_done(t, k, stage)]

    def count(self, stage: str = "solved") -> int:
        d = self.root / stage
        return sum(1 for _ in d.glob("t*/k*.json")) if d.exists() else 0


@dataclass
class OutputStore:
    """Handle on an output store (cheap to open from its path in every task)."""

    path: Path
    manifest: dict

    @property
    def plan(self) -> TilePlan:
        return TilePlan.from_dict(self.manifest["plan"])

    @property
    def out_plan(self) -> TilePlan:
        return self.plan.scaled(self.manifest["scale"])

    @property
    def n_frames(self) -> int:
        return int(self.manifest["input"]["shape"][0])

    @property
    def channels(self) -> int:
        return int(self.manifest["input"]["shape"][1])

    @property
    def intensity(self) -> IntensityMap:
        return IntensityMap.from_dict(self.manifest["input"]["intensity"])

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.path, self.n_frames, self.plan.n_tiles)

    def group(self, mode: str = "r") -> zarr.Group:
        return zarr.open_group(LocalStore(self.path, read_only=(mode == "r")), mode="r" if mode == "r" else "r+")

    @property
    def complete(self) -> bool:
        return (self.path / "_ledger" / "COMPLETE.json").exists()

    def open_diagnostics(self):
        """The diagnostics ``xarray.Dataset`` (lazy, read-only)."""
        import xarray as xr

        return xr.open_zarr(LocalStore(self.path, read_only=True), group="diagnostics", consolidated=False,
                            zarr_format=3)


def _as_output(out) -> OutputStore:
    return out if isinstance(out, OutputStore) else open_output(out)


def open_output(path) -> OutputStore:
    path = Path(path)
    kind = _store_kind(path) if path.is_dir() else None
    if kind != OUTPUT_KIND:
        raise StorageError(f"{path} is not a ddiff output store (kind={kind!r}); create it with storage.create_output")
    root = zarr.open_group(LocalStore(path, read_only=True), mode="r")
    return OutputStore(path, dict(root.attrs["ddiff"]))


def create_output(path, input_store, plan: TilePlan, config: Mapping, *, prior_sha256: str | None = None,
                  scale: int = 1, overwrite: bool = False) -> OutputStore:
    """Create (or reopen, when the configuration matches) the output store of a run.

    ``config``: JSON-serialisable run configuration (solver/prior names and hyperparameters, ...);
    ``config["solver"]`` and ``config["prior"]`` (if present) are recorded as the diagnostics'
    solver/prior identity. ``scale``: output pixels per input pixel (super-resolution factor).
    Returns the existing store unchanged if its ``config_hash`` matches (resume); raises
    :class:`ConfigMismatchError` if it differs and ``overwrite`` is False.
    """
    path = Path(path)
    stack = input_store if isinstance(input_store, Stack) else open_stack(input_store)
    if stack.frame_shape != plan.frame_shape:
        raise StorageError(f"plan frame shape {plan.frame_shape} != input frames {stack.frame_shape}; "
                           "build the TilePlan from open_stack(...).frame_shape")
    scale = int(scale)
    inp = {"path": str(stack.path.resolve()), "data_sha256": stack.meta["data_sha256"], "shape": list(stack.shape),
           "dtype": stack.meta["dtype"], "intensity": stack.intensity.to_dict()}
    config = dict(config)
    identity = {"config": config, "prior_sha256": prior_sha256, "input_sha256": inp["data_sha256"],
                "plan": plan.to_dict(), "scale": scale}
    config_hash = canonical_hash(identity)
    manifest = {"kind": OUTPUT_KIND, "version": package_version(), "config_hash": config_hash, "config": config,
                "prior_sha256": prior_sha256, "input": inp, "plan": plan.to_dict(), "scale": scale,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    old, replace_old = _reuse_or_replace(path, config_hash, overwrite)
    if old is not None:
        return old
    with atomic_directory(path, replace_old, "create") as tmp:
        _build_output(tmp, stack, plan, scale, manifest)
    return open_output(path)


def _reuse_or_replace(path: Path, config_hash: str, overwrite: bool) -> tuple[OutputStore | None, bool]:
    """``(existing store, False)`` when ``path`` holds an output of ``config_hash`` (resume);
    ``(None, replace_old)`` otherwise, after refusing unrelated data and (without ``overwrite``)
    another configuration."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return None, False
    kind = _store_kind(path) if path.is_dir() else None
    if kind != OUTPUT_KIND:
        raise StoreExistsError(f"{path} already holds unrelated data; nothing was written. Choose a new output "
                               "path (overwrite=True never deletes data this package did not write)")
    old = open_output(path)
    if old.manifest["config_hash"] == config_hash:
        return old, False
    if not overwrite:
        raise ConfigMismatchError(
            f"{path} was written with a different configuration (config_hash {old.manifest['config_hash'][:12]} "
            f"!= {config_hash[:12]}); pass overwrite=True to replace it or choose another output path")
    # hold the old store's lock while replacing it: raises LockError if a live run holds it,
    # breaks a stale one; the lock file leaves with the old folder
    RunLock(path).acquire()
    return None, True


def _build_output(tmp: Path, stack: Stack, plan: TilePlan, scale: int, manifest: dict) -> None:
    import dask.array as da
    import xarray as xr

    T, C, H, W = stack.shape
    op = plan.scaled(scale)
    (Ho, Wo), (cy, cx), (sy, sx) = op.frame_shape, op.chunks, op.slot_shape
    root = zarr.open_group(LocalStore(tmp), mode="w-", zarr_format=3, attributes={"ddiff": manifest})
    f32 = np.dtype("float32")
    # physical pixel size of the output = input pixel size / scale
    ms = stack.ome["multiscales"][0]
    in_scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    units = {a["name"]: a.get("unit") for a in ms["axes"]}
    recon = root.create_group("recon", attributes={"ome": ome_image_attrs(
        "recon", (in_scale[2] / scale, in_scale[3] / scale), units["y"], in_scale[0], units["t"])})
    recon.create_array("0", shape=(T, C, Ho, Wo), dtype=f32, chunks=(1, C, cy, cx),
                       compressors=_compressors("blosc-zstd", f32), dimension_names=AXES, fill_value=float("nan"))
    staging = root.create_group("staging")
    staging.create_array("contrib", shape=(T, plan.n_tiles, C, sy, sx), dtype=f32, chunks=(1, 1, C, sy, sx),
                         compressors=_compressors("blosc-zstd", f32), fill_value=float("nan"),
                         dimension_names=("t", "tile", "c", "y", "x"))
    # diagnostics template: dask-backed variables are NOT computed (compute=False) -> only metadata
    n = plan.n_tiles
    ty, tx = plan.chunks
    cfg = manifest["config"]
    data_vars = {}
    for name, dt in DIAG_SCALARS.items():
        fill = _NFE_FILL if dt == "int64" else np.nan
        data_vars[name] = (("t", "tile"), da.full((T, n), fill, dtype=dt, chunks=(1, 1)))
    data_vars["residual"] = (("t", "c", "y", "x"), da.full((T, C, H, W), np.nan, dtype=f32, chunks=(1, C, ty, tx)))
    data_vars["core_box"] = (("tile", "box"), np.array([t.core for t in plan], dtype=np.int64))
    data_vars["blend_box"] = (("tile", "box"), np.array([t.blend for t in plan], dtype=np.int64))
    ds = xr.Dataset(data_vars, attrs={
        "solver": str(cfg.get("solver", "")), "prior": str(cfg.get("prior", "")),
        "prior_sha256": manifest["prior_sha256"] or "", "config_hash": manifest["config_hash"],
        "residual_units": "model space [-1,1] units of the measurement (y - A x), input grid, tile cores",
        "box_order": "y0,y1,x0,x1 (half-open, input pixels)"})
    encoding = {"nfe": {"_FillValue": _NFE_FILL}}
    ds.to_zarr(LocalStore(tmp), group="diagnostics", mode="w-", compute=False, consolidated=False,
               zarr_format=3, encoding=encoding)


@dataclass
class TileInput:
    """A tile read for solving. ``data``: float32 ``(C, rh, rw)`` model space (read window, reflect
    padded); ``valid``: bool ``(C, rh, rw)`` or None (None = all valid); ``tile``: its geometry
    (``tile.inner`` slices the blend window out of ``data``)."""

    data: np.ndarray
    valid: np.ndarray | None
    tile: Tile
    frame: int


def read_tile(input_store, frame: int, tile: "int | Tile", plan: TilePlan) -> TileInput:
    """Read one tile's window from the (read-only) input store, mapped to model space."""
    stack = input_store if isinstance(input_store, Stack) else open_stack(input_store)
    if stack.frame_shape != plan.frame_shape:
        raise StorageError(f"plan frame shape {plan.frame_shape} != input frames {stack.frame_shape}")
    if not 0 <= int(frame) < stack.n_frames:
        raise ValueError(f"frame {frame} out of range: the stack has {stack.n_frames} frames")
    t = plan.tile_of(tile)
    (ys, xs), pads = plan.read_window(t)
    data = stack.to_model(stack.array[int(frame), :, ys, xs])
    valid = None
    if stack.valid is not None:
        valid = np.asarray(stack.valid[int(frame), :, ys, xs]) & np.isfinite(data)
        if valid.all():
            valid = None
        else:
            data = np.where(valid, data, np.float32(0))
            valid = plan.pad(valid, pads)
    return TileInput(plan.pad(data, pads), valid, t, int(frame))


def _crop_to_blend(arr: np.ndarray, t: Tile, f: int, C: int, what: str) -> np.ndarray:
    """Accept a blend-window or read-window shaped ``(C, h, w)`` array (grid factor ``f``); return the blend part."""
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    bh, bw = t.blend_shape
    rh, rw = t.read_shape
    if arr.shape == (C, bh * f, bw * f):
        return arr
    if arr.shape == (C, rh * f, rw * f):
        iy, ix = t.inner
        return arr[:, iy.start * f:iy.stop * f, ix.start * f:ix.stop * f]
    raise StorageError(f"{what} for tile {t.index} has shape {arr.shape}; expected the blend window "
                       f"{(C, bh * f, bw * f)} or the read window {(C, rh * f, rw * f)}")


def write_tile_result(out, frame: int, tile: int, recon: np.ndarray, diagnostics: Mapping | None = None,
                      residual: np.ndarray | None = None, *, run_id: str | None = None) -> None:
    """Pass 1 for one (frame, tile): stage the solution, write its diagnostics, then mark it solved.

    ``recon``: model space, ``(C, bh·f, bw·f)`` (blend window) or ``(C, rh·f, rw·f)`` (read window,
    cropped here); must be finite. ``diagnostics``: any of :data:`DIAG_SCALARS`. ``residual``:
    ``y − A x`` on the input grid, blend- or read-window shaped; its core is stored.
    """
    import xarray as xr

    out = _as_output(out)
    require_lock(out.path, run_id)
    plan, f, C = out.plan, int(out.manifest["scale"]), out.channels
    t = plan.tile_of(tile)
    frame, k = int(frame), t.index
    if not 0 <= frame < out.n_frames:
        raise ValueError(f"frame {frame} out of range: the output has {out.n_frames} frames")
    x = _crop_to_blend(recon, t, f, C, "recon").astype(np.float32)
    if not np.isfinite(x).all():
        raise StorageError(f"recon of frame {frame} tile {k} contains NaN/Inf; not written (fix the solve)")
    unknown = set(diagnostics or {}) - set(DIAG_SCALARS)
    if unknown:
        raise ValueError(f"unknown diagnostics {sorted(unknown)}; allowed: {sorted(DIAG_SCALARS)}")
    g = out.group("w")
    # (1) staging slot: one whole chunk, NaN-padded, so a rerun rewrites identical bytes
    sy, sx = out.out_plan.slot_shape
    slot = np.full((C, sy, sx), np.nan, np.float32)
    slot[:, : x.shape[1], : x.shape[2]] = x
    g["staging/contrib"][frame, k] = slot
    _fault("after_staging")
    store = LocalStore(out.path)
    # (2) per-pixel residual on the core (input grid; the core is exactly one chunk)
    if residual is not None:
        r = _crop_to_blend(residual, t, 1, C, "residual").astype(np.float32)
        cys, cxs = t.core_in_blend
        y0, y1, x0, x1 = t.core
        xr.Dataset({"residual": (("t", "c", "y", "x"), r[np.newaxis, :, cys, cxs])}).to_zarr(
            store, group="diagnostics", mode="r+", consolidated=False, zarr_format=3,
            region={"t": slice(frame, frame + 1), "y": slice(y0, y1), "x": slice(x0, x1)})
    _fault("after_residual")
    # (3) per-tile scalars
    if diagnostics:
        dv = {name: (("t", "tile"), np.array([[diagnostics[name]]], dtype=DIAG_SCALARS[name]))
              for name in diagnostics}
        xr.Dataset(dv).to_zarr(store, group="diagnostics", mode="r+", consolidated=False, zarr_format=3,
                               region={"t": slice(frame, frame + 1), "tile": slice(k, k + 1)})
    _fault("before_mark")
    # (4) only now: the atomic completion marker
    out.ledger.mark_done(frame, k, "solved", run_id=run_id, recon_sha256=hashlib.sha256(x.tobytes()).hexdigest())


def assemble_tile(out, frame: int, tile: int, *, run_id: str | None = None) -> None:
    """Pass 2 for one core: blend the staged solutions of the contributing tiles, map to physical
    units and write the core's single chunk of ``recon/0``; then mark it assembled."""
    out = _as_output(out)
    require_lock(out.path, run_id)
    plan, op, C = out.plan, out.out_plan, out.channels
    t = plan.tile_of(tile)
    frame = int(frame)
    missing = [s.index for s in plan.contributors(t) if not out.ledger.is_done(frame, s.index, "solved")]
    if missing:
        raise StorageError(f"frame {frame} tile {t.index}: contributing tiles {missing} are not solved yet; "
                           "assemble after all of them are written")
    g = out.group("w")
    contrib = g["staging/contrib"]
    to = op.tile_of(t.index)
    y0, y1, x0, x1 = to.core
    acc = np.zeros((C, y1 - y0, x1 - x0), np.float64)
    for s in op.contributors(to):
        by0, by1, bx0, bx1 = s.blend
        iy0, iy1, ix0, ix1 = max(y0, by0), min(y1, by1), max(x0, bx0), min(x1, bx1)
        w = op.weights(s)[iy0 - by0:iy1 - by0, ix0 - bx0:ix1 - bx0]
        xs = contrib[frame, s.index, :, iy0 - by0:iy1 - by0, ix0 - bx0:ix1 - bx0].astype(np.float64)
        acc[:, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] += w * xs
    g["recon/0"][frame, :, y0:y1, x0:x1] = out.intensity.from_model(acc)
    _fault("before_assembled_mark")
    out.ledger.mark_done(frame, t.index, "assembled", run_id=run_id)


def assemble_frame(out, frame: int, *, run_id: str | None = None) -> int:
    """Assemble every not-yet-assembled core of ``frame``; returns how many were written."""
    out = _as_output(out)
    n = 0
    for k in range(out.plan.n_tiles):
        if not out.ledger.is_done(frame, k, "assembled"):
            assemble_tile(out, frame, k, run_id=run_id)
            n += 1
    return n


def finalize(out, *, run_id: str | None = None) -> dict:
    """Check every core of every frame is assembled, then write ``_ledger/COMPLETE.json``."""
    out = _as_output(out)
    require_lock(out.path, run_id)
    left = out.ledger.pending("assembled")
    if left:
        raise StorageError(f"{out.path}: {len(left)} (frame, tile) cores not assembled yet, e.g. {left[:5]}")
    info = {"config_hash": out.manifest["config_hash"], "run_id": run_id, "time": time.time(),
            "n_frames": out.n_frames, "n_tiles": out.plan.n_tiles}
    atomic_write_json(out.path / "_ledger" / "COMPLETE.json", info)
    return info
