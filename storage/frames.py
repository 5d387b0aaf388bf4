"""Measurement stores and whole-frame outputs: the storage side of global operators (CT, MRI, ...).

Room: ``storage`` — zarr, xarray, numpy; never torch/prefect/``ddiff``/``flows``.

A **measurement store** is an ingested stack (:func:`storage.ingest`, same kind, same read-only
access) whose frames are measurements of an operator, not images: ``attributes["ddiff"]
["measurement"]`` records ::

    {"domain": "sinogram" | "kspace" | "fourier_magnitude",
     "operator": {"name": "ct_parallel_beam", "params": {...}},  # geometry of the measurement
     "image_shape": [N, M],                                      # the grid to reconstruct on
     "units": {...}}                                             # e.g. angles in degrees

and array ``"0"`` holds the measurements in the user's units, axes ``(t, c, y, x)`` with ``y, x``
the measurement's own axes (angle × detector; k_y × k_x with DC at ``(H//2, W//2)``). Its
``intensity`` map is that of the *image* (physical image units ↔ model space), used to write the
reconstruction. Optional small arrays next to ``"0"`` (e.g. ``"sampling_mask"``, bool ``(H, W)``).

A **frame output** (:func:`create_frame_output`) has the layout of a tiled output
(:mod:`storage.output`: the root is the OME-Zarr reconstruction, ``diagnostics/``, ``_ledger/``)
with one "tile" per frame: the tile plan covers the *measurement* grid (``halo=None``: one tile,
core = the whole frame), so ``diagnostics/`` holds the per-(frame, tile) scalars (``chi2_nu``,
``nll``, ...) and ``residual`` ``(frame, c, y, x)`` on the measurement grid (real residual, or its
magnitude for complex data; NaN where nothing was measured) in the measurement's units; the
reconstruction ``0`` (and its pyramid) is on the image grid, one chunk per frame, written whole by
:func:`write_frame_result` (deterministic bytes, so a resumed run equals an uninterrupted one),
which marks the frame ``solved`` and ``assembled`` in the same ledger; :func:`storage.finalize`
builds the pyramids and completes the store. A ``seeds ≥ 2`` run also writes the frame's seed-spread
maps into ``uncertainty/`` (:mod:`storage.uncertainty`) in the same call, on the image grid.
"""
from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np
import zarr
from zarr.storage import LocalStore

from .diagnostics import write_residual, write_scalars
from .ingest import Stack, open_stack
from .output import DIAG_SCALARS, OutputStore, _as_output, create_output
from .safety import StorageError, require_lock, writes
from .tiling import TilePlan
from .uncertainty import UNC_MAPS, keeps_seeds, write_uncertainty_core

__all__ = ["measurement_of", "is_frame_output", "create_frame_output", "frame_spec", "write_frame_result", "read_extra"]

FRAME_LAYOUT = "frames"


def measurement_of(stack) -> dict | None:
    """The ``measurement`` record of an ingested stack (path or :class:`Stack`), or None for images."""
    st = stack if isinstance(stack, Stack) else open_stack(stack)
    m = st.meta.get("measurement")
    return dict(m) if m else None


def read_extra(stack, name: str) -> np.ndarray:
    """A small named array stored next to the measurements (e.g. ``"sampling_mask"``)."""
    st = stack if isinstance(stack, Stack) else open_stack(stack)
    root = zarr.open_group(LocalStore(st.path, read_only=True), mode="r")
    if name not in root:
        raise StorageError(f"{st.path} has no array {name!r}")
    return np.asarray(root[name][...])


def is_frame_output(out) -> bool:
    return _as_output(out).manifest.get("layout") == FRAME_LAYOUT


def create_frame_output(path, input_store, config: Mapping, *, prior_sha256: str | None = None,
                        overwrite: bool = False, replace_unused: bool = False) -> OutputStore:
    """Create (or reopen, when the configuration matches) the whole-frame output of a measurement store
    (:func:`storage.create_output` with a reconstruction grid of its own: same resume / refuse /
    replace rules, built atomically)."""
    stack = input_store if isinstance(input_store, Stack) else open_stack(input_store)
    meas = measurement_of(stack)
    if meas is None:
        raise StorageError(f"{stack.path} holds images, not measurements; reconstruct it tile by tile (storage.create_output)")
    return create_output(path, stack, TilePlan(stack.frame_shape, halo=None), config, prior_sha256=prior_sha256,
                         overwrite=overwrite, replace_unused=replace_unused, frames=frame_spec(meas))


def frame_spec(meas: dict) -> dict:
    """The ``frames=`` record of :func:`storage.create_output` / ``output_action`` for a measurement record."""
    return {"image_shape": [int(v) for v in meas["image_shape"]], "measurement": meas,
            "residual_units": f"units of the stored {meas['domain']} measurements: y - A x on the measurement "
                              "grid (|y - A x| for complex data; NaN where nothing was measured)"}


@writes("frame {frame}")
def write_frame_result(out, frame: int, recon: np.ndarray, diagnostics: Mapping, residual: np.ndarray, *,
                       run_id: str | None = None, uncertainty: np.ndarray | None = None) -> None:
    """Write one solved frame: ``recon`` ``(C, N, M)`` model space (mapped to the image's physical
    units here), ``diagnostics`` (any of :data:`DIAG_SCALARS`), ``residual`` ``(C, h, w)`` float
    on the measurement grid (measurement units, NaN where unmeasured), and for a ``seeds ≥ 2`` run
    ``uncertainty`` ``(7, N, M)`` (the maps of :data:`storage.UNC_MAPS`, model units; with calibrated bounds
    also ``uncertainty/lower``/``upper`` = x ∓ halfwidth); then
    mark the frame solved and assembled. Every write is one whole chunk or region, so rewriting gives
    identical bytes."""
    out = _as_output(out)
    require_lock(out.path, run_id)
    frame = int(frame)
    if not 0 <= frame < out.n_frames:
        raise ValueError(f"frame {frame} out of range: the output has {out.n_frames} frames")
    C, (N, M) = out.channels, out.manifest["image_shape"]
    x = np.asarray(recon, dtype=np.float32)
    if x.shape != (C, N, M):
        raise StorageError(f"recon of frame {frame} has shape {x.shape}; expected {(C, N, M)}")
    if not np.isfinite(x).all():
        raise StorageError(f"recon of frame {frame} contains NaN/Inf; not written (fix the solve)")
    unknown = set(diagnostics) - set(DIAG_SCALARS)
    if unknown:
        raise ValueError(f"unknown diagnostics {sorted(unknown)}; allowed: {sorted(DIAG_SCALARS)}")
    r = np.asarray(residual, dtype=np.float32)
    h, w = out.plan.frame_shape
    if r.shape != (C, h, w):
        raise StorageError(f"residual of frame {frame} has shape {r.shape}; expected {(C, h, w)}")
    keeps = keeps_seeds(out.manifest)
    if keeps != (uncertainty is not None):
        raise StorageError(f"frame {frame}: the output {'keeps' if keeps else 'has no'} seed-spread maps; "
                           f"uncertainty must be {'given' if keeps else 'None'}")
    out.recon(0, mode="w")[frame] = out.intensity.from_model(x)
    if keeps:
        u = np.asarray(uncertainty, dtype=np.float32)
        if u.shape != (len(UNC_MAPS), N, M):
            raise StorageError(f"uncertainty of frame {frame} has shape {u.shape}; expected {(len(UNC_MAPS), N, M)}")
        write_uncertainty_core(out.group("r+"), out.layout, frame, slice(None), slice(None), u, out.intensity, mean=x)
    write_residual(out.path, frame, (0, h, 0, w), r)
    write_scalars(out.path, frame, 0, dict(diagnostics))
    sha = hashlib.sha256(x.tobytes()).hexdigest()
    out.ledger.mark_done(frame, 0, "solved", run_id=run_id, recon_sha256=sha)
    out.ledger.mark_done(frame, 0, "assembled", run_id=run_id)
