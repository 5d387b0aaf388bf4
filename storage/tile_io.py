"""Tiles in and out of an output store: read a tile with its halo, stage its solution (pass 1),
blend the cores (pass 2), build the pyramid, mark the run complete.

Room: ``storage`` — zarr, numpy; never torch/prefect/``ddiff``/``flows``. The store itself (layout,
creation, manifest, guarantees) is :mod:`storage.output`; this module is the per-tile contract of
its docstring: every write is a full, deterministic overwrite of the tile's own chunks, followed by
its ledger marker.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from . import output as _output
from .axes import Planes
from .diagnostics import DIAG_SCALARS, write_residual, write_scalars
from .ingest import Stack, open_stack
from .output import _as_output
from .provenance import open_input
from .pyramid import build_pyramid
from .safety import StorageError, atomic_write_json, require_lock, write_error, writes
from .tiling import Tile, TilePlan
from .uncertainty import UNC_MAPS, bounds_pyramid, is_bounded, keeps_seeds, write_uncertainty_core

__all__ = ["TileInput", "read_tile", "write_tile_result", "assemble_tile", "assemble_frame", "finalize"]


def _fault(step: str) -> None:
    """The crash-test hook of :mod:`storage.output` (``storage.output._FAULT_HOOK``)."""
    _output._fault(step)


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
                      residual: np.ndarray | None = None, *, run_id: str | None = None,
                      uncertainty: np.ndarray | None = None) -> None:
    """Pass 1 for one (frame, tile): stage the solution, write its diagnostics, then mark it solved.

    ``recon``: model space, ``(C, bh·f, bw·f)`` (blend window) or ``(C, rh·f, rw·f)`` (read window,
    cropped here); must be finite. ``diagnostics``: any of :data:`DIAG_SCALARS`. ``residual``:
    ``y − A x`` on the input grid, blend- or read-window shaped; its core is stored.
    ``uncertainty``: ``(7, ·, ·)`` on the output grid, blend- or read-window shaped — the tile's
    seed spread (model units), measured spread (noise sd) and prior-filled map (0/1) in the order
    of :data:`storage.uncertainty.UNC_MAPS`; required exactly when the output keeps seeds.
    """
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
    keeps = keeps_seeds(out.manifest)
    if keeps != (uncertainty is not None):
        raise StorageError(f"frame {frame} tile {k}: " + (
            f"this output keeps the seed spread (seeds={out.manifest['config'].get('seeds')}); pass uncertainty="
            if keeps else "uncertainty given, but this output was made without seeds >= 2"))
    u = None if uncertainty is None else _crop_to_blend(uncertainty, t, f, len(UNC_MAPS), "uncertainty")
    try:
        g = out.group("w")
        # (1) staging slot: one whole chunk, NaN-padded, so a rerun rewrites identical bytes
        sy, sx = out.out_plan.slot_shape
        slot = np.full((C, sy, sx), np.nan, np.float32)
        slot[:, : x.shape[1], : x.shape[2]] = x
        g["staging/contrib"][frame, k] = slot
        if u is not None:
            slot = np.full((len(UNC_MAPS), sy, sx), np.nan, np.float32)
            slot[:, : u.shape[1], : u.shape[2]] = u
            g["staging/uncertainty"][frame, k] = slot
        _fault("after_staging")
        # (2) per-pixel residual on the core (input grid; the core is exactly one chunk)
        if residual is not None:
            r = _crop_to_blend(residual, t, 1, C, "residual").astype(np.float32)
            cys, cxs = t.core_in_blend
            write_residual(out.path, frame, t.core, r[:, cys, cxs])
        _fault("after_residual")
        # (3) per-tile scalars
        if diagnostics:
            write_scalars(out.path, frame, k, diagnostics)
        _fault("before_mark")
        # (4) only now: the atomic completion marker
        out.ledger.mark_done(frame, k, "solved", run_id=run_id, recon_sha256=hashlib.sha256(x.tobytes()).hexdigest())
    except OSError as exc:  # disk full, size limit, read-only: one line naming the store and the cause
        raise write_error(f"frame {frame} tile {k}", out.path, exc) from exc


def assemble_tile(out, frame: int, tile: int, *, run_id: str | None = None) -> None:
    """Pass 2 for one core: blend the staged solutions of the contributing tiles, map to physical
    units and write the core's single chunk of level ``0``; then mark it assembled."""
    out = _as_output(out)
    require_lock(out.path, run_id)
    plan, op, C = out.plan, out.out_plan, out.channels
    t = plan.tile_of(tile)
    frame = int(frame)
    missing = [s.index for s in plan.contributors(t) if not out.ledger.is_done(frame, s.index, "solved")]
    if missing:
        raise StorageError(f"frame {frame} tile {t.index}: contributing tiles {missing} are not solved yet; "
                           "assemble after all of them are written")
    try:
        g = out.group("w")
        to = op.tile_of(t.index)
        y0, y1, x0, x1 = to.core
        acc = _blend(g["staging/contrib"], op, to, frame, C)
        Planes(g["0"], out.layout)[frame, :, y0:y1, x0:x1] = out.intensity.from_model(acc)
        if keeps_seeds(out.manifest):  # the seed-spread maps, with the image's weights
            maps = _blend(g["staging/uncertainty"], op, to, frame, g["staging/uncertainty"].shape[2])
            write_uncertainty_core(g, out.layout, frame, slice(y0, y1), slice(x0, x1), maps, out.intensity, mean=acc)
        _fault("before_assembled_mark")
        out.ledger.mark_done(frame, t.index, "assembled", run_id=run_id)
    except OSError as exc:
        raise write_error(f"the assembled frame {frame} (core {t.index})", out.path, exc) from exc


def _blend(staged, op: TilePlan, to: Tile, frame: int, n: int) -> np.ndarray:
    """The weighted sum over the tiles contributing to core ``to`` of their staged ``(n, ·, ·)``
    blend windows (weights of ``op``, a partition of unity): ``(n, h, w)`` float64."""
    y0, y1, x0, x1 = to.core
    acc = np.zeros((n, y1 - y0, x1 - x0), np.float64)
    for s in op.contributors(to):
        by0, by1, bx0, bx1 = s.blend
        iy0, iy1, ix0, ix1 = max(y0, by0), min(y1, by1), max(x0, bx0), min(x1, bx1)
        w = op.weights(s)[iy0 - by0:iy1 - by0, ix0 - bx0:ix1 - bx0]
        xs = staged[frame, s.index, :, iy0 - by0:iy1 - by0, ix0 - bx0:ix1 - bx0].astype(np.float64)
        acc[:, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] += w * xs
    return acc


def assemble_frame(out, frame: int, *, run_id: str | None = None) -> int:
    """Assemble every not-yet-assembled core of ``frame``, then build the frame's pyramid levels;
    returns how many cores were written. Refuses (:class:`InputChangedError`) when the input is no
    longer the one the output was made from."""
    out = _as_output(out)
    open_input(out)
    n = 0
    for k in range(out.plan.n_tiles):
        if not out.ledger.is_done(frame, k, "assembled"):
            assemble_tile(out, frame, k, run_id=run_id)
            n += 1
    _pyramid(out, frame, run_id)
    return n


@writes("the pyramid levels of frame {frame}")
def _pyramid(out: OutputStore, frame: int, run_id: str | None) -> None:
    if out.ledger.is_done(frame, 0, "pyramid"):
        return
    require_lock(out.path, run_id)
    build_pyramid(out.group("w"), out.layout, out.levels, int(frame))
    if is_bounded(out.manifest):  # the calibrated bounds get the image's pyramid
        bounds_pyramid(out.group("w"), out.layout, out.levels, int(frame))
    out.ledger.mark_done(frame, 0, "pyramid", run_id=run_id)


def finalize(out, *, run_id: str | None = None) -> dict:
    """Check every core of every frame is assembled, build any missing pyramid levels, then write
    ``_ledger/COMPLETE.json``."""
    out = _as_output(out)
    require_lock(out.path, run_id)
    left = out.ledger.pending("assembled")
    if left:
        raise StorageError(f"{out.path}: {len(left)} (frame, tile) cores not assembled yet, e.g. {left[:5]}")
    for frame in range(out.n_frames):
        _pyramid(out, frame, run_id)
    info = {"config_hash": out.manifest["config_hash"], "run_id": run_id, "time": time.time(),
            "n_frames": out.n_frames, "n_tiles": out.plan.n_tiles}
    try:
        atomic_write_json(out.path / "_ledger" / "COMPLETE.json", info)
    except OSError as exc:
        raise write_error("the completion marker", out.path, exc) from exc
    return info
