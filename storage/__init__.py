"""OME-Zarr storage for ddiff-pipeline: ingest, read-only stacks, tile plans, outputs, diagnostics.

Room: ``storage`` — zarr, xarray, dask, numpy (+ tifffile/pillow/h5py readers); never torch,
prefect, ``ddiff`` or ``flows``.

Public surface (see each module's docstring for its contract):

* :func:`ingest`, :func:`open_stack`, :class:`Stack`, :func:`verify_stack` — ``storage.ingest``;
* :class:`Layout`, :class:`Planes` (axes t, c, z, y, x and the frame view) — ``storage.axes``;
* :class:`TilePlan`, :class:`Tile` — ``storage.tiling``;
* :func:`create_output`, :func:`open_output`, :func:`read_tile`, :func:`write_tile_result`,
  :func:`assemble_tile`, :func:`assemble_frame`, :func:`finalize`, :class:`Ledger`, :func:`open_input`
  (the input an output was made from, checked), :func:`output_action` (what create_output would do)
  — ``storage.output`` and ``storage.tile_io``; :func:`write_flag_label` (OME-NGFF label images) — ``storage.labels``;
  :func:`consolidate` — ``storage.pyramid``; :func:`has_uncertainty`, :func:`read_uncertainty` (the
  seed-spread maps of a ``seeds ≥ 2`` run) — ``storage.uncertainty``; :func:`create_audit`,
  :func:`write_audit_frame`, :func:`write_audit_block`, :func:`finish_audit` (the ``audit/`` dataset) — ``storage.audit``;
* :func:`measurement_of`, :func:`create_frame_output`, :func:`write_frame_result` — ``storage.frames``
  (measurement stores and whole-frame outputs of global operators);
* :class:`~storage.bricks.ZPlan`, :func:`~storage.bricks.read_brick` — ``storage.bricks`` (z-stacks
  solved as bricks: a tile × a chunk of planes with its axial context);
* :class:`RunLock`, :func:`safe_subpath`, :func:`file_sha256` and the errors — ``storage.safety``.

Tasks pass descriptors (store paths, frame and tile indices, a JSON config), never arrays.
"""
from .audit import create_audit, finish_audit, write_audit_block, write_audit_frame
from .axes import Layout, Planes
from .frames import create_frame_output, frame_spec, is_frame_output, measurement_of, read_extra, write_frame_result
from .ingest import Stack, check_ingest, ingest, open_stack, verify_stack
from .intensity import IntensityMap
from .labels import LABELS, label_pyramid, write_flag_label
from .output import DIAG_SCALARS, Ledger, OutputStore, create_output, open_input, open_output, output_action
from .tile_io import TileInput, assemble_frame, assemble_tile, finalize, read_tile, write_tile_result
from .pyramid import consolidate
from .safety import (ConfigMismatchError, InputChangedError, LockError, NonFiniteError, RunLock, SourceError,
                     StorageError, StorageWriteError, StoreExistsError, file_sha256, reclaim_orphans, safe_subpath)
from .tiling import Tile, TilePlan
from .uncertainty import UNC_MAPS, has_uncertainty, is_bounded, read_bounds, read_uncertainty

__all__ = [
    "ingest", "check_ingest", "open_stack", "verify_stack", "Stack", "IntensityMap", "TilePlan", "Tile",
    "create_output", "open_output", "OutputStore", "Ledger", "TileInput", "read_tile", "write_tile_result",
    "assemble_tile", "assemble_frame", "finalize", "DIAG_SCALARS", "LABELS", "write_flag_label", "label_pyramid",
    "consolidate",
    "Layout", "Planes", "RunLock", "safe_subpath", "file_sha256",
    "measurement_of", "read_extra", "create_frame_output", "frame_spec", "write_frame_result", "is_frame_output",
    "StorageError", "StoreExistsError", "ConfigMismatchError", "LockError", "NonFiniteError", "SourceError",
    "InputChangedError", "StorageWriteError", "open_input", "output_action", "reclaim_orphans",
    "UNC_MAPS", "has_uncertainty", "read_uncertainty", "is_bounded", "read_bounds", "create_audit", "write_audit_frame", "write_audit_block",
    "finish_audit",
]
