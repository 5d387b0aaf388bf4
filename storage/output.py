"""Output stores: reconstruction (OME-Zarr), diagnostics (xarray in Zarr), ledger, manifest, lock.

The per-tile functions named below (``read_tile``, ``write_tile_result``, ``assemble_*``,
``finalize``) live in :mod:`storage.tile_io`.

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

Layout of ``out_path`` (a Zarr v3 group; ``attributes["ddiff"]`` is the run manifest). The root
is the reconstruction itself, an OME-NGFF 0.5 image, so ``recon.zarr`` opens as an image in
ome-zarr-py, napari-ome-zarr and bioio::

    0, 1, …       the pyramid: level 0 = the reconstruction with the INPUT's axes (t, c, z as present,
                  y·f, x·f), float32 in the input's physical units (model space mapped back with the
                  input's affine), chunks = one frame × one core (ty·f, tx·f); level l is 2^l times
                  coarser (2×2 means), built per frame after its cores are assembled. NaN until then.
                  The OME scale = the input's physical steps (y, x divided by f).
    labels/       OME-NGFF label images over the reconstruction (e.g. the audit's flags), written
                  with :func:`write_flag_label`; the image's axes less c, its levels, uint8.
    staging/contrib (N, n_tiles, C, sy·f, sx·f) float32 model space: one chunk per (frame, tile) holding
                  that tile's unweighted blend-window solution (NaN-padded). Pass 1 writes here.
    diagnostics/  xarray Dataset with physical coordinates (:mod:`storage.diagnostics`).
    uncertainty/  (runs with ``seeds ≥ 2``) seed spread, its re-measurement and the prior-filled map
                  per pixel: xarray Dataset + OME-NGFF image (:mod:`storage.uncertainty`);
                  ``staging/uncertainty`` holds each tile's maps for pass 2.
    _ledger/      solved/t<frame>/k<tile>.json, assembled/..., pyramid/t<frame>/k000000.json,
                  COMPLETE.json — plain files written atomically (temp + rename) *after* the data
                  they certify.
    .ddiff.lock   present while a run holds the store.

Frames: ``frame = t·Z + z`` indexes the input's (t, z) planes (:mod:`storage.axes`);
``OutputStore.recon(level)`` is the ``(N, C, H·f, W·f)`` frame view of a level.

Guarantees: (1) a ledger entry exists only if all data of that step was written before it (a crash
in between leaves the step pending and a rerun redoes it; every write is a full, deterministic
overwrite of that tile's own chunks, so the rerun's bytes equal an uninterrupted run's); (2) no two
tiles ever write the same chunk; (3) an existing output with a different configuration hash is
refused unless ``overwrite=True`` (and never while another live run holds its lock); a path holding
anything else is refused outright; (4) writes need the run lock (``run_id`` checked when given);
(5) readers of the input (tasks, assembly, the audit) go through :func:`open_input`, which refuses
an input replaced since the output was made (:mod:`storage.provenance`); (6) a failed write raises
:class:`~storage.safety.StorageWriteError` naming the store and the cause (errno kept).
The manifest's ``config_hash`` covers the config dict, the prior checksum, the input's data checksum,
the plan and the scale factor.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import zarr
from zarr.storage import LocalStore

from .axes import Layout, Planes
from .diagnostics import DIAG_SCALARS, create_diagnostics
from .ingest import Stack, _compressors, _store_kind, open_stack
from .intensity import IntensityMap
from .ledger import Ledger
from .ome import ome_image_attrs
from .provenance import damaged_output, open_input, output_action
from .pyramid import consolidate, level_layout, pyramid_levels
from .safety import RunLock, StorageError, TargetAppearedError, atomic_directory, write_error
from .tiling import TilePlan
from .uncertainty import create_uncertainty, is_bounded, keeps_seeds

__all__ = ["OUTPUT_KIND", "DIAG_SCALARS", "OutputStore", "Ledger", "create_output", "open_output", "output_action",
           "open_input"]

OUTPUT_KIND = "ddiff-output"

# Fault injection for crash tests: called with a step name between the writes of one tile.
_FAULT_HOOK: Callable[[str], None] | None = None


def _fault(step: str) -> None:
    if _FAULT_HOOK is not None:
        _FAULT_HOOK(step)


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

    @property
    def layout(self) -> Layout:
        """Level-0 layout of the reconstruction (the input's axes, y and x times the scale)."""
        r = self.manifest["recon"]
        return Layout(r["axes"], tuple(r["shape"]))

    @property
    def levels(self) -> int:
        return int(self.manifest["recon"]["levels"])

    @property
    def geometry(self) -> tuple[dict, dict]:
        """``(scale, units)`` of the reconstruction's level 0 (physical step per axis)."""
        r = self.manifest["recon"]
        return dict(r["scale"]), dict(r["units"])

    def group(self, mode: str = "r") -> zarr.Group:
        return zarr.open_group(LocalStore(self.path, read_only=(mode == "r")), mode="r" if mode == "r" else "r+")

    def recon(self, level: int = 0, mode: str = "r") -> Planes:
        """Frame view ``(N, C, H·f / 2^level, W·f / 2^level)`` of pyramid level ``level``."""
        if not 0 <= int(level) < self.levels:
            raise ValueError(f"level {level} out of range: the reconstruction has {self.levels} levels")
        return Planes(self.group(mode)[str(int(level))], level_layout(self.layout, int(level)))

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
        damaged_output(path)
        raise StorageError(f"{path} is not a ddiff output store (kind={kind!r}); give a store written by a reconstruction (`ddiff reconstruct`)")
    root = zarr.open_group(LocalStore(path, read_only=True), mode="r")
    return OutputStore(path, dict(root.attrs["ddiff"]))


def create_output(path, input_store, plan: TilePlan, config: Mapping, *, prior_sha256: str | None = None,
                  scale: int = 1, overwrite: bool = False, replace_unused: bool = False,
                  frames: Mapping | None = None) -> OutputStore:
    """Create (or reopen, when the configuration matches) the output store of a run.

    ``config``: JSON-serialisable run configuration (solver/prior names and hyperparameters, ...);
    ``config["solver"]`` and ``config["prior"]`` (if present) are recorded as the diagnostics'
    solver/prior identity. ``scale``: output pixels per input pixel (super-resolution factor).
    Returns the existing store unchanged if its ``config_hash`` matches (resume); raises
    :class:`ConfigMismatchError` if it differs and ``overwrite`` is False — except, with
    ``replace_unused=True`` (the flows), for an output nothing was ever solved into and no live run
    holds (a failed or killed start): it holds no work, so it is replaced. Two runs creating the same new output at once: the one that loses the swap
    reopens the winner's store (resume when the configuration matches; the run lock then decides).
    ``frames`` (:func:`storage.create_frame_output`): a whole-frame output of a measurement store.
    """
    path = Path(path)
    stack = input_store if isinstance(input_store, Stack) else open_stack(input_store)
    for attempt in range(2):
        action, manifest = output_action(path, stack, plan, config, prior_sha256=prior_sha256, scale=scale,
                                         overwrite=overwrite, replace_unused=replace_unused, frames=frames)
        if action == "resume":
            return open_output(path)
        if action == "replace":
            # hold the old store's lock while replacing it: raises LockError if a live run holds it,
            # breaks a stale one; the lock file leaves with the old folder
            RunLock(path).acquire()
        try:
            with atomic_directory(path, action == "replace", "create") as tmp:
                _build_output(tmp, stack, plan, int(scale), manifest)
        except TargetAppearedError:
            if attempt:
                raise
            continue  # a simultaneous start won the swap: decide again against its store
        except OSError as exc:  # a full disk already at creation: nothing is left at path
            raise write_error("the new output store", path, exc) from exc
        return open_output(path)
    raise AssertionError("unreachable")  # pragma: no cover


def _recon_meta(stack: Stack, plan: TilePlan, scale: int, image_shape: tuple[int, int] | None = None) -> dict:
    """Axes, shape, pyramid levels and physical steps of the reconstruction (level 0). ``image_shape``:
    a reconstruction grid of its own (whole frames of a measurement store; one chunk per frame)."""
    s = stack.sizes
    if image_shape is not None:  # image pixel = one detector bin / field-of-view sample: the input's x step
        (Ho, Wo), (cy, cx) = image_shape, image_shape
        phys = {a: (stack.scale["x"] if a in "yx" else v) for a, v in stack.scale.items()}
    else:
        Ho, Wo, (cy, cx) = s["y"] * scale, s["x"] * scale, plan.scaled(scale).chunks
        phys = {a: (v / scale if a in "yx" else v) for a, v in stack.scale.items()}
    layout = stack.layout.with_sizes(y=Ho, x=Wo)
    return {"axes": layout.axes, "shape": list(layout.shape), "chunks": [cy, cx],
            "levels": pyramid_levels(Ho, Wo, cy, cx), "scale": phys, "units": stack.units}


def _build_output(tmp: Path, stack: Stack, plan: TilePlan, scale: int, manifest: dict) -> None:
    r = manifest["recon"]
    layout, levels, (cy, cx) = Layout(r["axes"], tuple(r["shape"])), r["levels"], r["chunks"]
    C = stack.shape[1]
    root = zarr.open_group(LocalStore(tmp), mode="w-", zarr_format=3, attributes={
        "ddiff": manifest, "ome": ome_image_attrs(Path(manifest["input"]["path"]).stem + "-recon", layout.axes,
                                                  r["scale"], r["units"], levels)})
    f32 = np.dtype("float32")
    for level in range(levels):
        ll = level_layout(layout, level)
        root.create_array(str(level), shape=ll.shape, dtype=f32, chunks=ll.chunks(cy, cx),
                          compressors=_compressors("blosc-zstd", f32), dimension_names=tuple(ll.axes),
                          fill_value=float("nan"))
    tiled = "image_shape" not in manifest
    if tiled:  # whole frames are written directly, tiles are staged then blended
        sy, sx = plan.scaled(scale).slot_shape
        staging = root.create_group("staging")
        staging.create_array("contrib", shape=(stack.n_frames, plan.n_tiles, C, sy, sx), dtype=f32,
                             chunks=(1, 1, C, sy, sx), compressors=_compressors("blosc-zstd", f32),
                             fill_value=float("nan"), dimension_names=("frame", "tile", "c", "y", "x"))
    if keeps_seeds(manifest):  # --seeds K: the seed spread (tiles: staged and blended like the image)
        create_uncertainty(tmp, layout, (cy, cx), r["scale"], r["units"], plan.n_tiles if tiled else None,
                           (sy, sx) if tiled else None, _compressors("blosc-zstd", f32),
                           levels=levels if is_bounded(manifest) else 0)
    cfg = manifest["config"]
    create_diagnostics(tmp, stack.layout, plan, stack.scale, stack.units, measurement=stack.meta.get("measurement"), attrs={
        "solver": str(cfg.get("solver", "")), "prior": str(cfg.get("prior", "")),
        "prior_sha256": manifest["prior_sha256"] or "", "config_hash": manifest["config_hash"],
        "residual_units": manifest.get("residual_units", "model space [-1,1] units of the measurement (y - A x), input "
                                       "grid, tile cores; NaN where the measurement is invalid (masked)")})
    if "residual_units" in manifest:
        zarr.open_group(LocalStore(tmp), mode="r+")["diagnostics/residual"].attrs["units"] = manifest["residual_units"]
    consolidate(tmp)
