"""Source readers: TIFF/BigTIFF/OME-TIFF, ``.npy``, folders of PNG/JPEG/TIFF frames, HDF5.

Room: ``storage`` — numpy, tifffile, pillow, optional h5py; never torch/prefect/``ddiff``/``flows``.

Every reader presents a stack of frames as ``(T, C, H, W)`` and reads it block by block:
``reader.read(t0, t1) -> ndarray (t1 - t0, C, H, W)`` in the source dtype, never the whole
stack. Readers validate what they can *before* any data is read (page byte ranges against the
file size for TIFF, every frame's size and dtype for folders) so :func:`storage.ingest` fails
before it writes anything; errors are :class:`storage.safety.SourceError` with the file named.

Axis conventions: TIFF uses tifffile's axes (pages = Y,X[,S]; every leading axis except ``C``
is flattened, in file order, into ``T``). ``.npy`` and HDF5 take ``axes=`` (letters from
``tcyx``), defaulting to ``yx`` (2-D), ``tyx`` (3-D), ``tcyx`` (4-D).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np

from .safety import SourceError, file_sha256

__all__ = ["open_source", "natural_key", "SourceReader"]

FRAME_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
TIFF_EXTS = {".tif", ".tiff", ".btf", ".tf8", ".ome.tif"}
H5_RE = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|he5|hdf))(?::(?P<ds>.*))?$", re.IGNORECASE)


def natural_key(name: str) -> list:
    """Sort key so ``frame2`` comes before ``frame10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class SourceReader:
    """Base: ``shape`` (T, C, H, W), ``dtype``, ``read(t0, t1)``, ``files``, ``kind``."""

    kind = "?"
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    files: list[Path]

    def read(self, t0: int, t1: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def checksum(self) -> str:
        """Streamed SHA-256 of the source bytes (one file: its sha256; several: sha256 over
        ``name\\0sha256\\n`` lines in stack order)."""
        if len(self.files) == 1:
            return file_sha256(self.files[0])
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
        return h.hexdigest()


def _axes_to_tcyx(arr: np.ndarray, axes: str) -> np.ndarray:
    """Reorder an array with ``axes`` (subset of ``tcyx``, containing y and x) to (t, c, y, x)."""
    for a in "tc":
        if a not in axes:
            arr = arr[np.newaxis]
            axes = a + axes
    return np.ascontiguousarray(np.transpose(arr, [axes.index(a) for a in "tcyx"]))


def _check_axes(axes: str, ndim: int, who: str) -> str:
    axes = axes.lower()
    if len(axes) != ndim or len(set(axes)) != ndim or not set(axes) <= set("tcyx") or not {"y", "x"} <= set(axes):
        raise SourceError(f"{who}: axes={axes!r} does not describe a {ndim}-D array; use letters "
                          "from 'tcyx' with y and x, e.g. 'tyx' or 'tcyx'")
    return axes


_DEFAULT_AXES = {2: "yx", 3: "tyx", 4: "tcyx"}


class ArrayReader(SourceReader):
    """Any array supporting basic slicing (np.memmap, h5py.Dataset) with an ``axes`` string."""

    def __init__(self, arr, axes: str | None, files: list[Path], kind: str, closer=None):
        if arr.ndim not in _DEFAULT_AXES and axes is None:
            raise SourceError(f"{files[0]}: cannot guess the axes of a {arr.ndim}-D array; pass axes='tcyx'-style")
        self.arr, self.kind, self.files, self._closer = arr, kind, files, closer
        self.axes = _check_axes(axes or _DEFAULT_AXES[arr.ndim], arr.ndim, str(files[0]))
        dims = dict(zip(self.axes, arr.shape))
        self.shape = (dims.get("t", 1), dims.get("c", 1), dims["y"], dims["x"])
        self.dtype = np.dtype(arr.dtype)

    def read(self, t0: int, t1: int) -> np.ndarray:
        # A memory map kept open accumulates every touched page in the process RSS (file-backed,
        # but counted): for .npy, map afresh per block and drop the map after copying the block.
        arr = np.load(self.files[0], mmap_mode="r", allow_pickle=False) if self.kind == "npy" else self.arr
        if "t" in self.axes:
            key = tuple(slice(t0, t1) if a == "t" else slice(None) for a in self.axes)
            block = np.array(arr[key])
        else:
            block = np.array(arr[...])
        del arr
        return _axes_to_tcyx(block, self.axes)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(level=logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


class TiffReader(SourceReader):
    """TIFF / BigTIFF / OME-TIFF through tifffile, one page at a time."""

    kind = "tiff"

    def __init__(self, path: Path):
        import tifffile

        self.files = [path]
        errors: list[str] = []  # tifffile *logs* (does not raise) broken page chains: collect them
        handler = _ListHandler(errors)
        log = logging.getLogger("tifffile")
        log.addHandler(handler)
        try:
            self.tf = tifffile.TiffFile(path)
            series = self.tf.series[0]
            key = series.keyframe
            page_axes, page_shape = key.axes, key.shape
            pages = series.pages
            n_pages = len(pages)
        except Exception as exc:  # tifffile raises many types for a broken file
            raise SourceError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc}); "
                              "check the file is complete and really a TIFF") from exc
        finally:
            log.removeHandler(handler)
        if page_axes not in ("YX", "YXS", "SYX"):
            raise SourceError(f"{path}: unsupported TIFF page layout {page_axes!r} (expected YX, YXS or SYX)")
        self.page_axes = page_axes
        lead_axes = series.axes[: len(series.axes) - len(page_axes)]
        lead_shape = tuple(series.shape[: len(lead_axes)])
        expected = int(np.prod(lead_shape, dtype=np.int64))
        if expected != n_pages or errors:
            raise SourceError(f"{path}: the TIFF metadata describes {expected} pages of shape {page_shape} but "
                              f"{n_pages} are readable{' (' + errors[0] + ')' if errors else ''}; the file is "
                              "truncated or damaged (re-copy or re-export it)")
        if "S" in page_axes:
            C = page_shape[page_axes.index("S")]
            chan_axis = None
        elif "C" in lead_axes:
            chan_axis = lead_axes.index("C")
            C = lead_shape[chan_axis]
        else:
            chan_axis, C = None, 1
        H, W = page_shape[page_axes.index("Y")], page_shape[page_axes.index("X")]
        T = n_pages // (C if chan_axis is not None else 1)
        self.shape = (T, C, H, W)
        self.dtype = np.dtype(key.dtype)
        self.pages = pages
        self._lead_shape, self._chan_axis = lead_shape, chan_axis
        self._validate_extents(path)

    def _validate_extents(self, path: Path) -> None:
        """Refuse a truncated file before reading: every page's bytes must lie inside the file."""
        size = os.path.getsize(path)
        for i in range(len(self.pages)):
            try:
                page = self.pages[i]
                offsets, counts = page.dataoffsets, page.databytecounts
            except Exception as exc:
                raise SourceError(f"{path}: page {i} cannot be parsed ({exc}); the file is damaged") from exc
            if page is None or len(offsets) == 0:
                raise SourceError(f"{path}: page {i} has no image data; the file is damaged or truncated")
            end = max(int(o) + int(c) for o, c in zip(offsets, counts))
            if end > size:
                raise SourceError(f"{path}: page {i} needs bytes up to {end} but the file has {size}; "
                                  "the TIFF is truncated (re-copy or re-export it)")

    def _page_index(self, frame: int, channel: int) -> int:
        if self._chan_axis is None:
            return frame
        other = [s for i, s in enumerate(self._lead_shape) if i != self._chan_axis]
        idx = list(np.unravel_index(frame, other)) if other else []
        idx.insert(self._chan_axis, channel)
        return int(np.ravel_multi_index(idx, self._lead_shape))

    def read(self, t0: int, t1: int) -> np.ndarray:
        T, C, H, W = self.shape
        out = np.empty((t1 - t0, C, H, W), self.dtype)
        for t in range(t0, t1):
            for c in range(C if self._chan_axis is not None else 1):
                i = self._page_index(t, c)
                try:
                    page = np.asarray(self.pages[i].asarray())
                except Exception as exc:
                    raise SourceError(f"{self.files[0]}: page {i} cannot be decoded ({type(exc).__name__}: "
                                      f"{exc}); the file is damaged") from exc
                if self.page_axes == "YX":
                    out[t - t0, c] = page
                elif self.page_axes == "YXS":
                    out[t - t0] = np.moveaxis(page, -1, 0)
                else:  # SYX
                    out[t - t0] = page
        return out

    def close(self) -> None:
        self.tf.close()


def _image_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Frame shape (H, W[, C]) and dtype of one image file without decoding its pixels."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tf:
            if len(tf.pages) != 1:
                raise SourceError(f"{path}: a frame file must hold one page, it has {len(tf.pages)}; "
                                  "ingest multi-page TIFFs directly, not inside a folder")
            p = tf.pages[0]
            if p.axes not in ("YX", "YXS"):
                raise SourceError(f"{path}: unsupported page layout {p.axes!r}")
            return tuple(p.shape), np.dtype(p.dtype)
    from PIL import Image

    with Image.open(path) as im:
        modes = {"L": np.uint8, "P": np.uint8, "RGB": np.uint8, "RGBA": np.uint8, "LA": np.uint8,
                 "I;16": np.uint16, "I;16B": np.uint16, "I": np.int32, "F": np.float32, "1": np.bool_}
        if im.mode not in modes:
            raise SourceError(f"{path}: unsupported image mode {im.mode!r}")
        bands = len(im.getbands())
        shape = (im.height, im.width) if bands == 1 else (im.height, im.width, bands)
        return shape, np.dtype(modes[im.mode])


def _read_image(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


class FolderReader(SourceReader):
    """A folder of single-frame PNG/JPEG/TIFF files, in natural sort order."""

    kind = "folder"

    def __init__(self, folder: Path):
        files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTS),
                       key=lambda p: natural_key(p.name))
        if not files:
            raise SourceError(f"{folder}: no .png/.jpg/.jpeg/.tif/.tiff frames found")
        headers = []
        for f in files:
            try:
                headers.append(_image_header(f))
            except SourceError:
                raise
            except Exception as exc:
                raise SourceError(f"{f}: unreadable image ({type(exc).__name__}: {exc})") from exc
        shape0, dtype0 = headers[0]
        for f, (shp, dt) in zip(files, headers):
            if shp != shape0 or dt != dtype0:
                raise SourceError(f"mixed frames in {folder}: {files[0].name} is {shape0} {dtype0} but "
                                  f"{f.name} is {shp} {dt}; all frames must share size, channels and dtype")
        self.files = files
        C = shape0[2] if len(shape0) == 3 else 1
        self.shape = (len(files), C, shape0[0], shape0[1])
        self.dtype = dtype0

    def read(self, t0: int, t1: int) -> np.ndarray:
        out = np.empty((t1 - t0,) + self.shape[1:], self.dtype)
        for t in range(t0, t1):
            try:
                img = _read_image(self.files[t])
            except Exception as exc:
                raise SourceError(f"{self.files[t]}: cannot decode ({type(exc).__name__}: {exc})") from exc
            if img.ndim == 3:
                img = np.moveaxis(img, -1, 0)
            if img.ndim == 2:
                img = img[np.newaxis]
            if img.shape != self.shape[1:]:
                raise SourceError(f"{self.files[t]}: decoded shape {img.shape} != header {self.shape[1:]}")
            out[t - t0] = img
        return out


def open_source(source: str | os.PathLike, *, dataset: str | None = None, axes: str | None = None) -> SourceReader:
    """Open ``source`` with the reader its kind needs.

    ``source``: a TIFF file, a ``.npy`` file, a folder of frames, or an HDF5 file (the dataset as
    ``file.h5:/path/in/file`` or ``dataset=``).
    """
    text = os.fspath(source)
    m = H5_RE.match(text)
    if m:
        return _open_h5(Path(m["file"]), dataset or m["ds"], axes)
    path = Path(text)
    if not path.exists():
        raise SourceError(f"source {path} does not exist")
    if path.is_dir():
        return FolderReader(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        _check_npy_magic(path)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            if "pickle" in str(exc).lower():  # numpy's advice (allow_pickle=True) would run code from the file
                raise SourceError(f"{path}: the .npy holds Python objects, not numbers; it was not loaded (that "
                                  "could run code). Save a numeric array (np.save of a float/int array)") from exc
            raise SourceError(f"{path}: not a readable .npy file ({exc}); the file is damaged or truncated") from exc
        return ArrayReader(arr, axes, [path], "npy")
    if suffix in TIFF_EXTS:
        return TiffReader(path)
    raise SourceError(f"{path}: unknown source type {suffix!r}; give a TIFF, .npy, HDF5 (file.h5:/dataset) "
                      "or a folder of PNG/JPEG/TIFF frames")


_MAGIC = ((b"II*\x00", "a TIFF", ".tif"), (b"MM\x00*", "a TIFF", ".tif"), (b"II+\x00", "a BigTIFF", ".tif"),
          (b"MM\x00+", "a BigTIFF", ".tif"), (b"\x89HDF", "an HDF5", ".h5 (and name the dataset: file.h5:/data)"),
          (b"\x89PNG", "a PNG", ".png (in a folder of frames)"), (b"\xff\xd8\xff", "a JPEG", ".jpg (in a folder of frames)"),
          (b"PK\x03\x04", "a zip/.npz", ".npz — ingest takes one array: np.save it as .npy"))


def _check_npy_magic(path: Path) -> None:
    """Name the real format of a file called ``.npy`` that is not one (instead of numpy's advice)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if head.startswith(b"\x93NUMPY"):
        return
    for magic, what, ext in _MAGIC:
        if head.startswith(magic):
            raise SourceError(f"{path}: this is {what} file named .npy; rename it to {ext}")
    raise SourceError(f"{path}: not a .npy file (no NumPy header; {len(head)} leading bytes {head[:8]!r}); "
                      "give a file written by np.save")


def _open_h5(path: Path, ds_name: str | None, axes: str | None) -> SourceReader:
    try:
        import h5py
    except ImportError as exc:
        raise SourceError("reading HDF5 needs h5py: pip install 'ddiff-pipeline[hdf5]'") from exc
    if not path.exists():
        raise SourceError(f"source {path} does not exist")
    if not ds_name:
        raise SourceError(f"{path}: name the HDF5 dataset, e.g. '{path}:/data' or dataset='/data'")
    try:
        fh = h5py.File(path, "r")
    except Exception as exc:
        raise SourceError(f"{path}: not a readable HDF5 file ({exc})") from exc
    if ds_name not in fh or not isinstance(fh[ds_name], h5py.Dataset):
        fh.close()
        raise SourceError(f"{path}: no dataset {ds_name!r} in the file")
    reader = ArrayReader(fh[ds_name], axes, [path], "hdf5", closer=fh.close)
    reader.dataset = ds_name
    return reader
