"""Ingest: stream a source stack into an OME-Zarr (Zarr v3, OME-NGFF 0.5) input store; open it read-only.

Room: ``storage`` — zarr, numpy (+ the readers' tifffile/pillow/h5py); never torch/prefect.

Contract for flows:

* ``storage.ingest(source, store, ...) -> Stack`` reads ``source`` frame-block by frame-block
  (``block_bytes`` at a time, default 64 MiB) — or, for a frame larger than that, window by
  window — so memory stays bounded whatever the stack or frame size; writes ``store`` and
  returns it opened read-only. It writes into a hidden sibling folder and renames it into place
  only after the last byte, so ``store`` is either absent or complete; on any error the partial
  folder is removed and nothing is left at ``store``.
* Layout of ``store``: root group = OME-NGFF 0.5 image (``attributes["ome"]``), array ``"0"``
  with the axes the data has (letters of ``tczyx`` in that order, e.g. ``(z, y, x)`` for a
  z-stack, ``(t, c, z, y, x)`` for a 5-D OME-TIFF; ``dimension_names`` match), the source dtype,
  chunks of one ``(t, z)`` plane, all channels and ``chunk × chunk`` pixels (the unit tiles are
  read in) grouped in shards of ``4·chunk`` (fewer files; ingest is the only writer),
  Blosc-zstd (byte shuffle) by default; the OME ``scale`` carries the physical steps and units
  (from OME-XML / ImageJ / HDF5 metadata or the caller). ``attributes["ddiff"]`` records the
  source (path, kind, axes, streamed SHA-256 of its bytes), ``axes``, ``geometry`` (scale, units,
  where they came from), the SHA-256 of the ingested pixels frame by frame, each in ``(c, y, x)``
  C order (``data_sha256``, re-checkable with :func:`verify_stack`), dtype, and the intensity
  map to model space (see :mod:`storage.intensity`). The pipeline indexes *frames*
  (``Stack.array``, ``(N, C, H, W)``, ``frame = t·Z + z``; see :mod:`storage.axes`).
* NaN/Inf (float sources only): ``nonfinite="refuse"`` (default) raises
  :class:`~storage.safety.NonFiniteError` naming the frames; ``nonfinite="mask"`` stores the
  values unchanged plus a boolean array ``"valid"`` (False where non-finite); the intensity
  percentiles use finite values only and :func:`storage.read_tile` returns those pixels as 0 in
  model space with the mask so solvers can treat them as missing.
* An existing ``store``: a previous ingest is replaced only with ``overwrite=True``; a path that
  holds anything else (unrelated files) is refused even with ``overwrite=True`` — we never delete
  data we did not write.
* ``storage.open_stack(store) -> Stack`` opens it through a read-only Zarr store: downstream code
  cannot modify the input (:mod:`storage.stack`).
"""
from __future__ import annotations

import errno
import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.storage import LocalStore

from .intensity import IntensityMap, PercentileSampler
from .axes import Layout, Planes
from .ome import ome_image_attrs, package_version
from .readers import open_source
from .stack import INPUT_KIND, Stack, _hash_frame, _store_kind, open_stack, verify_stack
from .safety import (NonFiniteError, StorageError, StoreExistsError, atomic_directory, creatable, strict_json,
                     write_error)
from .validity import ValidityRules

__all__ = ["ingest", "check_ingest", "open_stack", "Stack", "verify_stack", "INPUT_KIND"]

#: errors only a write can meet (a full disk, a size limit, a read-only target)
_WRITE_ERRNOS = {getattr(errno, n) for n in ("ENOSPC", "EFBIG", "EDQUOT", "EROFS") if hasattr(errno, n)}


def _compressors(compression: str | None, dtype: np.dtype):
    if compression in (None, "none"):
        return None
    if compression == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle" if dtype.itemsize > 1 else "bitshuffle",
                           typesize=dtype.itemsize)]
    if compression == "zstd":
        return [ZstdCodec(level=3)]
    raise ValueError(f"compression={compression!r}; use 'blosc-zstd', 'zstd' or None")


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
           max_samples: int = 2_000_000, nonfinite: str = "refuse", saturation="dtype", mask=None, bad_pixels=None,
           pixel_size: float | tuple[float, float] | None = None,
           z_step: float | None = None, space_unit: str | None = None, time_step: float | None = None,
           time_unit: str | None = None, block_bytes: int = 64 << 20, checksum: bool = True,
           overwrite: bool = False, measurement: dict | None = None, extra_arrays: dict | None = None,
           max_size=None) -> "Stack":
    """Stream ``source`` into the OME-Zarr store ``store`` and return it opened read-only.

    Parameters: ``source`` TIFF/BigTIFF/OME-TIFF/ImageJ, ``.npy``, folder of frames, or
    ``file.h5:/ds`` (or ``dataset=``); ``axes`` the source's axes, letters of ``tczyx`` in its
    order (``"TZCYX"`` works too; see :mod:`storage.readers` for what is read from the file when
    omitted); ``chunk`` spatial chunk edge (pick the tile size you will solve with); ``shard``
    spatial shard edge (a multiple of ``chunk``; ``"auto"`` = 4·chunk, ``None`` = no sharding) —
    safe here because ingest is the only writer of the input store; ``intensity``
    ``"percentile"`` (default, ``percentiles`` of a ≤``max_samples`` streamed subsample -> [-1, 1]),
    ``"minmax"``, ``"dtype"`` (integer range) or an explicit ``(low, high)``; ``nonfinite``
    ``"refuse"``|``"mask"``; ``saturation`` (``"dtype"``: the integer maximum, a level in data
    units, or None), ``mask`` (file, non-zero = valid) and ``bad_pixels`` (file, non-zero = bad)
    complete the validity mask (:mod:`storage.validity`); ``pixel_size`` (y, x) or one number, ``z_step``, ``time_step`` and
    the units override what the file says (default when neither: 1 micrometer, 1 second);
    ``block_bytes`` bounds what is held at once: whole frames are read while one fits, else each
    frame is streamed window by window (shard-aligned), so frames larger than memory ingest too.
    ``measurement`` (see :mod:`storage.frames`): the stack holds measurements of an operator
    (sinograms, k-space, ...), recorded as ``attributes["ddiff"]["measurement"]``; complex sources
    are accepted then, and ``intensity`` is the map of the *image* to reconstruct. ``extra_arrays``:
    small named arrays written next to ``"0"`` (e.g. a k-space sampling mask). ``max_size``: the largest
    declared (uncompressed) size accepted, e.g. ``"500G"``; default: the free space of the target's
    disk (:func:`check_size`; refused before anything is written).
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
        check_size(source, store, reader.layout, reader.dtype, max_size)  # before the hidden folder exists
        geometry = reader.geometry.override(pixel_size, z_step, time_step, space_unit, time_unit)
        with atomic_directory(store, replace_old, "ingest") as tmp:
            layout = reader.layout
            N, C, H, W = layout.frames_shape
            dtype = reader.dtype
            if not (dtype.kind in "uif" and dtype.itemsize <= 8 or dtype.kind == "c" and measurement is not None):
                raise StorageError(f"{source}: dtype {dtype} is not supported (integers or floats only"
                                   f"{'; complex data is accepted as measurements: --domain kspace' if dtype.kind == 'c' else ''})")
            cy, cx = min(chunk, H), min(chunk, W)
            shards = None
            if shard is not None:  # a whole number of chunks (may extend past the array edge)
                sy, sx = min(shard, -(-H // cy) * cy), min(shard, -(-W // cx) * cx)
                shards = tuple({"y": sy, "x": sx}.get(a, c) for a, c in zip(layout.axes, layout.chunks(cy, cx)))
            root = zarr.open_group(LocalStore(tmp), mode="w-", zarr_format=3)
            arr = root.create_array("0", shape=layout.shape, dtype=dtype, chunks=layout.chunks(cy, cx), shards=shards,
                                    compressors=_compressors(compression, dtype), dimension_names=tuple(layout.axes),
                                    fill_value=0)
            planes = Planes(arr, layout)
            rules = ValidityRules((N, C, H, W), dtype, saturation=saturation, mask=mask, bad_pixels=bad_pixels)
            w = _Writer(root, layout, planes, (cy, cx), source, nonfinite, PercentileSampler(N * C * H * W, max_samples),
                        rules)
            frame_bytes = C * H * W * dtype.itemsize
            if frame_bytes <= block_bytes:
                per_block = max(1, block_bytes // max(1, frame_bytes))
                for f0 in range(0, N, per_block):
                    f1 = min(N, f0 + per_block)
                    block = reader.read(f0, f1)
                    w.write(f0, block, (slice(0, H), slice(0, W)))
                    w.hash.update(np.ascontiguousarray(block))
                    del block
            else:  # frames larger than a block: shard-aligned windows, hashed by reading the frame back
                step = shard or chunk
                by = max(cy, min(-(-H // cy) * cy, step))
                bx = max(cx, (block_bytes // max(1, C * by * dtype.itemsize)) // step * step)
                for f in range(N):
                    for y0 in range(0, H, by):
                        for x0 in range(0, W, bx):
                            win = (slice(y0, min(H, y0 + by)), slice(x0, min(W, x0 + bx)))
                            w.write(f, reader.read_region(f, *win)[np.newaxis], win)
                    _hash_frame(planes, f, w.hash, block_bytes)
            rules.check_some_valid(source)  # an all-masked / all-saturated stack: the cause, not "no percentiles"
            imap = _intensity_map(intensity, percentiles, w.sampler, dtype)
            scale, units = geometry.resolved(layout.axes)
            if measurement is not None and measurement.get("axes"):  # angle × detector, k-space rows × columns:
                scale, units = measurement_geometry(measurement, scale, units, geometry.source)  # not µm pixels
            meta = {
                "kind": INPUT_KIND,
                "version": package_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source": {"path": str((Path(source) if reader.kind == "folder" else reader.files[0]).resolve()),
                           "kind": reader.kind, "dataset": getattr(reader, "dataset", None), "n_files": len(reader.files),
                           "sha256": reader.checksum() if checksum else None, "shape": list(reader.shape),
                           "axes": layout.axes, "sizes": dict(zip(layout.axes, layout.shape))},
                "axes": layout.axes,
                "geometry": {"scale": scale, "units": units, "source": geometry.source,
                             **({"axes": measurement_axes(measurement)} if measurement is not None else {})},
                "dtype": dtype.str,
                "data_sha256": w.hash.hexdigest(),
                "intensity": imap.to_dict(),
                "nonfinite": {"policy": nonfinite, "frames": sorted(w.nonfinite_frames),
                              "mask": "valid" if w.valid is not None else None},
                "validity": rules.summary("valid" if w.valid is not None else None),
                "seconds": round(time.perf_counter() - t_start, 3),
            }
            if measurement is not None:
                meta["measurement"] = dict(measurement)
            for name, value in (extra_arrays or {}).items():
                value = np.asarray(value)
                root.create_array(name, shape=value.shape, dtype=value.dtype, chunks=value.shape, fill_value=0)[...] = value
            strict_json(meta, "ingest metadata")
            root.attrs.update({"ome": ome_image_attrs(Path(store).name, layout.axes, scale, units), "ddiff": meta})
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:  # the target's disk: one line naming the store and the cause
            raise write_error("the ingested stack", store, exc) from exc
        raise
    finally:
        reader.close()
    return open_stack(store)


class _Writer:
    """Writes frame blocks or windows: non-finite policy, validity mask, intensity sample."""

    def __init__(self, root, layout: Layout, planes: Planes, chunks, source, nonfinite: str, sampler,
                 rules: ValidityRules):
        self.root, self.layout, self.planes, self.chunks = root, layout, planes, chunks
        self.source, self.nonfinite, self.sampler, self.rules = source, nonfinite, sampler, rules
        self.valid: Planes | None = None
        self.nonfinite_frames: set[int] = set()
        self.hash = hashlib.sha256()

    def write(self, f0: int, block: np.ndarray, win: tuple[slice, slice]) -> None:
        n = block.shape[0]
        if block.dtype.kind in "fc":
            fin = np.isfinite(block)
            if not fin.all():
                bad = [f0 + int(i) for i in np.flatnonzero(~fin.reshape(n, -1).all(axis=1))]
                if self.nonfinite == "refuse":
                    raise NonFiniteError(f"{self.source}: frame(s) {bad[:10]} contain NaN/Inf; nothing was written. "
                                         "Clean the data or pass nonfinite='mask' to store them with a validity mask")
                self.nonfinite_frames.update(bad)
        ok = self.rules.block(block, f0, win)  # non-finite, saturated, user mask, bad pixels
        if ok is not None:
            if self.valid is None:
                v = self.root.create_array("valid", shape=self.layout.shape, dtype=bool,
                                           chunks=self.layout.chunks(*self.chunks),
                                           compressors=_compressors("zstd", np.dtype(bool)),
                                           dimension_names=tuple(self.layout.axes), fill_value=True)
                self.valid = Planes(v, self.layout)
            self.valid[f0:f0 + n, :, win[0], win[1]] = ok
        mag = np.abs(block) if block.dtype.kind == "c" else block  # complex measurements: magnitudes
        self.sampler.add(mag if ok is None else np.where(ok, mag, np.nan))  # percentiles of measurements only
        self.planes[f0:f0 + n, :, win[0], win[1]] = block


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(size) -> int:
    """Bytes from ``size``: a number of bytes, or a string like ``"500G"``, ``"1.5TiB"``, ``"2 TB"`` (powers of 1024)."""
    import re

    if isinstance(size, (int, float)) and not isinstance(size, bool) and size >= 0:
        return int(size)
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgtp]?)(?:i?b)?\s*", str(size), re.IGNORECASE)
    try:
        return int(float(m[1]) * _UNITS[m[2].lower()])
    except (TypeError, ValueError):
        raise StorageError(f"max_size={size!r}: give a size like 500G, 2TiB or a number of bytes") from None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def check_size(source, store, layout: Layout, dtype: np.dtype, max_size=None) -> None:
    """Refuse, before a byte is written, a source whose declared pixels (uncompressed) exceed
    ``max_size`` — or, when it is None, the free space of the target's disk: a damaged or sparse
    header declaring 10⁶ × 10⁶ pixels would otherwise be ingested for hours and then fill the disk."""
    nbytes = int(np.prod(layout.shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    dims = f"{' × '.join(str(s) for s in layout.shape)} {np.dtype(dtype)} = {_human(nbytes)} uncompressed"
    if max_size is not None:
        limit = parse_size(max_size)
        if nbytes > limit:
            raise StorageError(f"{source}: declares {dims}, more than max_size={max_size} ({_human(limit)}); nothing "
                               "was written. Check the file's header (damaged or sparse?), or pass max_size= a larger "
                               "size if that size is meant")
        return
    folder = Path(store).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise StorageError(f"{source}: declares {dims}, more than the {_human(free)} free on the disk of {folder}; "
                           "nothing was written. Check the file's header (damaged or sparse?), free space or choose a "
                           "store on a larger disk, or pass max_size= a larger size if the data compresses that well")


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


def check_ingest(source, store, *, dataset: str | None = None, axes: str | None = None, overwrite: bool = False,
                 measurement: bool = False, mask=None, bad_pixels=None, saturation="dtype", max_size=None) -> None:
    """Everything :func:`ingest` checks before it writes, without writing: the target (absent, empty,
    or an old ingest with ``overwrite``; its folder writable), the source (readable, its layout
    and dtype supported — headers only, no pixels read; ``measurement``: complex data is accepted).
    Raises the error ``ingest`` would raise."""
    store = Path(store)
    _check_target(store, overwrite, INPUT_KIND)
    if not creatable(store):
        raise StorageError(f"cannot create {store}: its folder {store.parent} is not writable (or cannot be "
                           "created); choose a store path in a writable folder")
    reader = open_source(source, dataset=dataset, axes=axes)
    try:
        dtype = reader.dtype
        if not (dtype.kind in "uif" and dtype.itemsize <= 8 or dtype.kind == "c" and measurement):
            raise StorageError(f"{source}: dtype {dtype} is not supported (integers or floats only"
                               f"{'; complex data is accepted as measurements: --domain kspace' if dtype.kind == 'c' else ''})")
        check_size(source, store, reader.layout, dtype, max_size)
        # the mask / bad-pixel files (readable, numeric, shaped like the stack, not all-invalid) and the level
        ValidityRules(reader.layout.frames_shape, dtype, saturation=saturation, mask=mask, bad_pixels=bad_pixels)
    finally:
        reader.close()


def measurement_axes(measurement: dict) -> dict:
    """``{"y"|"x": {"name", "unit"}}`` of a measurement store's frame axes (without per-row values)."""
    return {a: {k: v for k, v in d.items() if k != "values"} for a, d in (measurement.get("axes") or {}).items()}


def measurement_geometry(measurement: dict, scale: dict, units: dict, source: str) -> tuple[dict, dict]:
    """A measurement store's ``(scale, units)``: its frame rows and columns are measurement axes (angle,
    detector bin, k-space row/column), not micrometres — step 1 and no OME space unit, unless the user
    gave a pixel size (then it is the detector bin's width, kept on x)."""
    scale, units = dict(scale), dict(units)
    user = "user" in source
    for a in "yx":
        if a == "y" or not user:
            scale[a] = 1.0
            units.pop(a, None)
    return scale, units
