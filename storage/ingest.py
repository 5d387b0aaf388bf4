"""Ingest: stream a source stack into an OME-Zarr (Zarr v3, OME-NGFF 0.5) input store; open it read-only.

Room: ``storage`` — zarr, numpy (+ the readers' tifffile/pillow/h5py); never torch/prefect.

Contract for flows:

* ``storage.ingest(source, store, ...) -> Stack`` reads ``source`` frame-block by frame-block
  (``block_bytes`` at a time, default 64 MiB, so memory stays bounded whatever the stack size),
  writes ``store`` and returns it opened read-only. It writes into a hidden sibling folder and
  renames it into place only after the last byte, so ``store`` is either absent or complete; on
  any error the partial folder is removed and nothing is left at ``store``.
* Layout of ``store``: root group = OME-NGFF 0.5 image (``attributes["ome"]``), array ``"0"`` of
  shape ``(T, C, H, W)``, dtype of the source, ``dimension_names = ("t", "c", "y", "x")``,
  chunks ``(1, C, chunk, chunk)`` (one frame, one spatial tile: the unit tiles are read in)
  grouped in shards of ``(1, C, 4·chunk, 4·chunk)`` (fewer files; ingest is the only writer),
  Blosc-zstd (byte shuffle) by default. ``attributes["ddiff"]`` records the source (path, kind,
  streamed SHA-256 of its bytes), the SHA-256 of the ingested pixel bytes in ``(t, c, y, x)``
  C order (``data_sha256``, re-checkable with :func:`verify_stack`), dtype, and the intensity
  map to model space (see :mod:`storage.intensity`).
* NaN/Inf (float sources only): ``nonfinite="refuse"`` (default) raises
  :class:`~storage.safety.NonFiniteError` naming the frames; ``nonfinite="mask"`` stores the
  values unchanged plus a boolean array ``"valid"`` (False where non-finite); the intensity
  percentiles use finite values only and :func:`storage.read_tile` returns those pixels as 0 in
  model space with the mask so solvers can treat them as missing.
* An existing ``store``: a previous ingest is replaced only with ``overwrite=True``; a path that
  holds anything else (unrelated files) is refused even with ``overwrite=True`` — we never delete
  data we did not write.
* ``storage.open_stack(store) -> Stack`` opens it through a read-only Zarr store: downstream code
  cannot modify the input.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.storage import LocalStore

from .intensity import IntensityMap, PercentileSampler
from .ome import AXES, ome_image_attrs, package_version
from .readers import open_source
from .safety import NonFiniteError, StorageError, StoreExistsError, atomic_directory

__all__ = ["ingest", "open_stack", "Stack", "verify_stack", "INPUT_KIND"]

INPUT_KIND = "ddiff-input-stack"


def _compressors(compression: str | None, dtype: np.dtype):
    if compression in (None, "none"):
        return None
    if compression == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle" if dtype.itemsize > 1 else "bitshuffle",
                           typesize=dtype.itemsize)]
    if compression == "zstd":
        return [ZstdCodec(level=3)]
    raise ValueError(f"compression={compression!r}; use 'blosc-zstd', 'zstd' or None")


def _store_kind(path: Path) -> str | None:
    """``ddiff`` kind recorded in the root ``zarr.json`` of ``path``, or None if there is none."""
    try:
        g = zarr.open_group(LocalStore(path, read_only=True), mode="r")
        return g.attrs.get("ddiff", {}).get("kind")
    except Exception:
        return None


def _check_target(store: Path, overwrite: bool, kind: str) -> bool:
    """Validate the ingest target; return True if an old store of ``kind`` must be replaced."""
    if not store.exists():
        return False
    if store.is_dir() and not any(store.iterdir()):
        return False
    found = _store_kind(store) if store.is_dir() else None
    if found != kind:
        raise StoreExistsError(f"{store} already holds unrelated data ({'a file' if store.is_file() else 'a non-empty folder'}"
                               f"{'' if found is None else ' of kind ' + found}); nothing was written. "
                               "Choose a new path (overwrite=True never deletes data this package did not write)")
    if not overwrite:
        raise StoreExistsError(f"{store} already holds an ingested stack; pass overwrite=True to replace it "
                               "or choose another path")
    return True


def ingest(source, store, *, dataset: str | None = None, axes: str | None = None, chunk: int = 256,
           shard: int | str | None = "auto", compression: str | None = "blosc-zstd",
           intensity: str | tuple[float, float] = "percentile", percentiles: tuple[float, float] = (0.1, 99.9),
           max_samples: int = 2_000_000, nonfinite: str = "refuse", pixel_size: tuple[float, float] = (1.0, 1.0),
           space_unit: str = "micrometer", time_step: float = 1.0, time_unit: str = "second",
           block_bytes: int = 64 << 20, checksum: bool = True, overwrite: bool = False,
           measurement: dict | None = None, extra_arrays: dict | None = None) -> "Stack":
    """Stream ``source`` into the OME-Zarr store ``store`` and return it opened read-only.

    Parameters: ``source`` TIFF/BigTIFF/OME-TIFF, ``.npy``, folder of frames, or ``file.h5:/ds``
    (or ``dataset=``); ``axes`` for ``.npy``/HDF5 (``tcyx`` letters); ``chunk`` spatial chunk
    edge (pick the tile size you will solve with); ``shard`` spatial shard edge (a multiple of
    ``chunk``; ``"auto"`` = 4·chunk, ``None`` = no sharding) — safe here because ingest is the
    only writer of the input store; ``intensity`` ``"percentile"`` (default, ``percentiles`` of a
    ≤``max_samples`` streamed subsample -> [-1, 1]), ``"minmax"``, ``"dtype"`` (integer range) or
    an explicit ``(low, high)``; ``nonfinite`` ``"refuse"``|``"mask"``; ``pixel_size``/units go
    into the OME scale transform; ``block_bytes`` bounds the frames read at once.
    ``measurement`` (see :mod:`storage.measurements`): the stack holds measurements of an operator
    (sinograms, k-space, ...), recorded as ``attributes["ddiff"]["measurement"]``; complex sources
    are accepted then, and ``intensity`` is the map of the *image* to reconstruct. ``extra_arrays``:
    small named arrays written next to ``"0"`` (e.g. a k-space sampling mask).
    """
    if nonfinite not in ("refuse", "mask"):
        raise ValueError(f"nonfinite={nonfinite!r}; use 'refuse' (default) or 'mask'")
    if shard == "auto":  # one writer (us) -> shards are safe; 4x4 chunks per shard = 16x fewer files
        shard = 4 * chunk
    if chunk < 1 or (shard is not None and (shard < chunk or shard % chunk)):
        raise ValueError(f"chunk={chunk}, shard={shard}: chunk must be >= 1 and shard a multiple of chunk")
    store = Path(store)
    replace_old = _check_target(store, overwrite, INPUT_KIND)
    reader = open_source(source, dataset=dataset, axes=axes)
    t_start = time.perf_counter()
    try:
        with atomic_directory(store, replace_old, "ingest") as tmp:
            T, C, H, W = reader.shape
            dtype = reader.dtype
            if not (dtype.kind in "uif" and dtype.itemsize <= 8 or dtype.kind == "c" and measurement is not None):
                raise StorageError(f"{source}: dtype {dtype} is not supported (integers or floats only"
                                   f"{'; complex data is accepted as measurements: --domain kspace' if dtype.kind == 'c' else ''})")
            cy, cx = min(chunk, H), min(chunk, W)
            shards = None if shard is None else (1, C, min(shard, -(-H // cy) * cy), min(shard, -(-W // cx) * cx))
            root = zarr.open_group(LocalStore(tmp), mode="w-", zarr_format=3)
            arr = root.create_array("0", shape=(T, C, H, W), dtype=dtype, chunks=(1, C, cy, cx), shards=shards,
                                    compressors=_compressors(compression, dtype), dimension_names=AXES,
                                    fill_value=0)
            valid = None
            sampler = PercentileSampler(T * C * H * W, max_samples)
            data_hash = hashlib.sha256()
            per_block = max(1, block_bytes // max(1, C * H * W * dtype.itemsize))
            nonfinite_frames: list[int] = []
            for t0 in range(0, T, per_block):
                t1 = min(T, t0 + per_block)
                block = reader.read(t0, t1)
                if dtype.kind in "fc":
                    fin = np.isfinite(block)
                    if not fin.all():
                        bad = [t0 + int(i) for i in np.flatnonzero(~fin.reshape(t1 - t0, -1).all(axis=1))]
                        if nonfinite == "refuse":
                            raise NonFiniteError(f"{source}: frame(s) {bad[:10]} contain NaN/Inf; nothing was written. "
                                                 "Clean the data or pass nonfinite='mask' to store them with a "
                                                 "validity mask")
                        nonfinite_frames += [int(b) for b in bad]
                        if valid is None:
                            valid = root.create_array("valid", shape=(T, C, H, W), dtype=bool, chunks=(1, C, cy, cx),
                                                      compressors=_compressors("zstd", np.dtype(bool)),
                                                      dimension_names=AXES, fill_value=True)
                        valid[t0:t1] = fin
                sampler.add(np.abs(block) if dtype.kind == "c" else block)
                data_hash.update(np.ascontiguousarray(block))
                arr[t0:t1] = block
                del block
            imap = _intensity_map(intensity, percentiles, sampler, dtype)
            meta = {
                "kind": INPUT_KIND,
                "version": package_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source": {"path": str((Path(source) if reader.kind == "folder" else reader.files[0]).resolve()),
                           "kind": reader.kind, "dataset": getattr(reader, "dataset", None), "n_files": len(reader.files),
                           "sha256": reader.checksum() if checksum else None, "shape": [T, C, H, W]},
                "dtype": dtype.str,
                "data_sha256": data_hash.hexdigest(),
                "intensity": imap.to_dict(),
                "nonfinite": {"policy": nonfinite, "frames": nonfinite_frames, "mask": "valid" if valid is not None else None},
                "seconds": round(time.perf_counter() - t_start, 3),
            }
            if measurement is not None:
                meta["measurement"] = dict(measurement)
            for name, value in (extra_arrays or {}).items():
                value = np.asarray(value)
                root.create_array(name, shape=value.shape, dtype=value.dtype, chunks=value.shape, fill_value=0)[...] = value
            root.attrs.update({"ome": ome_image_attrs(Path(store).name, pixel_size, space_unit, time_step, time_unit),
                               "ddiff": meta})
    finally:
        reader.close()
    return open_stack(store)


def _intensity_map(intensity, percentiles, sampler: PercentileSampler, dtype: np.dtype) -> IntensityMap:
    if isinstance(intensity, (tuple, list)):
        return IntensityMap.from_range(*intensity, method="explicit")
    if intensity == "percentile":
        lo, hi = percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles={percentiles} must satisfy 0 <= low < high <= 100")
        return IntensityMap.from_range(*sampler.percentiles(lo, hi), method=f"percentile{list(percentiles)}")
    if intensity == "minmax":
        return IntensityMap.from_range(*sampler.minmax(), method="minmax")
    if intensity == "dtype":
        if dtype.kind not in "ui":
            raise ValueError("intensity='dtype' needs an integer source; use 'percentile' or (low, high)")
        info = np.iinfo(dtype)
        return IntensityMap.from_range(info.min, info.max, method="dtype")
    raise ValueError(f"intensity={intensity!r}; use 'percentile', 'minmax', 'dtype' or (low, high)")


@dataclass
class Stack:
    """Read-only view of an ingested stack. Arrays are ``(T, C, H, W)``; frames ``(C, H, W)``."""

    path: Path
    array: zarr.Array
    meta: dict
    ome: dict
    intensity: IntensityMap
    valid: zarr.Array | None = field(default=None)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]

    def frame(self, t: int) -> np.ndarray:
        return self.array[t]

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """Physical -> model space ``[-1, 1]`` (float32)."""
        return self.intensity.to_model(x)

    def from_model(self, m: np.ndarray) -> np.ndarray:
        """Model space -> physical units (float32)."""
        return self.intensity.from_model(m)

    def dask(self):
        """The stack as a lazy dask array (chunks = Zarr chunks)."""
        import dask.array as da

        return da.from_zarr(self.array)


def open_stack(store) -> Stack:
    """Open an ingested stack read-only (:class:`Stack`); refuse folders that are not one."""
    path = Path(store)
    if not (path / "zarr.json").exists():
        raise StorageError(f"{path} is not a Zarr v3 store (no zarr.json); ingest the source first")
    root = zarr.open_group(LocalStore(path, read_only=True), mode="r")
    meta = dict(root.attrs.get("ddiff", {}))
    if meta.get("kind") != INPUT_KIND:
        raise StorageError(f"{path} is a Zarr store but not an ingested stack (kind={meta.get('kind')!r}); "
                           "create it with storage.ingest")
    valid = root["valid"] if meta.get("nonfinite", {}).get("mask") else None
    return Stack(path=path, array=root["0"], meta=meta, ome=dict(root.attrs["ome"]),
                 intensity=IntensityMap.from_dict(meta["intensity"]), valid=valid)


def verify_stack(store, block_bytes: int = 64 << 20) -> bool:
    """Recompute the SHA-256 of the stored pixels (streamed) and compare with ``data_sha256``."""
    st = open_stack(store)
    T, C, H, W = st.shape
    per = max(1, block_bytes // max(1, C * H * W * st.dtype.itemsize))
    h = hashlib.sha256()
    for t0 in range(0, T, per):
        h.update(np.ascontiguousarray(st.array[t0:min(T, t0 + per)]))
    return h.hexdigest() == st.meta["data_sha256"]
