"""Source readers: TIFF/BigTIFF/OME-TIFF, ``.npy``, folders of PNG/JPEG/TIFF frames, HDF5.

Room: ``storage`` — numpy, tifffile, pillow, optional h5py; never torch/prefect/``ddiff``/``flows``.

Every reader knows the axes the data has (``reader.layout``: letters of ``tczyx`` in that order
with their sizes, see :mod:`storage.axes`) and its physical geometry (``reader.geometry``, see
:mod:`storage.physical`), and presents the stack as frames — one ``(t, z)`` plane with all
channels, ``frame = t·Z + z`` — read block by block: ``reader.read(f0, f1) -> (f1 - f0, C, H, W)``
or window by window: ``reader.read_region(frame, ys, xs) -> (C, h, w)`` in the source dtype,
never the whole stack. Readers validate what they can *before* any data is read (page byte ranges against the
file size for TIFF, every frame's size and dtype for folders) so :func:`storage.ingest` fails
before it writes anything; errors are :class:`storage.safety.SourceError` with the file named.

Axis conventions: TIFF uses tifffile's axes (OME-XML / ImageJ hyperstack order; pages = Y,X[,S];
``Z`` -> z, ``C`` -> c, interleaved samples -> c, every other axis — planar samples included —
flattened, in file order, into t; docs/volumes.md has the table) unless ``axes=`` names every
series dimension. ``.npy`` and HDF5 take ``axes=`` (letters of ``tczyx`` in the
array's order), else HDF5 dimension labels when they are such letters, else ``yx`` (2-D),
``tyx`` (3-D), ``tcyx`` (4-D).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from .axes import Layout, check_axes
from .physical import Geometry, from_hdf5
from .safety import SourceError, file_sha256

__all__ = ["open_source", "natural_key", "SourceReader"]

FRAME_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
TIFF_EXTS = {".tif", ".tiff", ".btf", ".tf8", ".ome.tif"}
H5_RE = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|he5|hdf))(?::(?P<ds>.*))?$", re.IGNORECASE)


def natural_key(name: str) -> list:
    """Sort key so ``frame2`` comes before ``frame10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class SourceReader:
    """Base: ``axes`` (stored axes, order ``tczyx``), ``layout`` (:class:`~storage.axes.Layout`),
    ``shape`` = frames ``(N, C, H, W)`` with ``N = T·Z``, ``dtype``, ``geometry``
    (:class:`~storage.physical.Geometry`), ``read(f0, f1)`` whole frames, ``read_region(f, ys, xs)``
    one frame's ``(C, h, w)`` window, ``files``, ``kind``."""

    kind = "?"
    layout: Layout
    dtype: np.dtype
    files: list[Path]
    geometry: Geometry = Geometry()

    @property
    def axes(self) -> str:
        return self.layout.axes

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.layout.frames_shape

    def read(self, f0: int, f1: int) -> np.ndarray:
        """Frames ``[f0, f1)`` as ``(f1 - f0, C, H, W)`` (frame = t·Z + z)."""
        _, C, H, W = self.shape
        out = np.empty((f1 - f0, C, H, W), self.dtype)
        for f in range(f0, f1):
            out[f - f0] = self.read_region(f, slice(0, H), slice(0, W))
        return out

    def read_region(self, frame: int, ys: slice, xs: slice) -> np.ndarray:  # pragma: no cover - abstract
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


def _check_axes(axes: str, ndim: int, who: str) -> str:
    try:
        return check_axes(axes, ndim, who)
    except ValueError as exc:
        raise SourceError(str(exc)) from None


def _to_cyx(block: np.ndarray, dims: list[str]) -> np.ndarray:
    """``block`` with ``dims`` (a subset of c, y, x in any order) as ``(C, h, w)``."""
    if "c" not in dims:
        block, dims = block[np.newaxis], ["c"] + dims
    return np.transpose(block, [dims.index(a) for a in "cyx"])


_DEFAULT_AXES = {2: "yx", 3: "tyx", 4: "tcyx"}


class ArrayReader(SourceReader):
    """Any array supporting basic slicing (np.memmap, h5py.Dataset) with an ``axes`` string
    (letters of ``tczyx`` in the array's own order)."""

    def __init__(self, arr, axes: str | None, files: list[Path], kind: str, closer=None, geometry=None):
        if arr.ndim not in _DEFAULT_AXES and axes is None:
            raise SourceError(f"{files[0]}: cannot guess the axes of a {arr.ndim}-D array; pass axes, e.g. "
                              "'tzcyx' (--axes TZCYX)")
        self.arr, self.kind, self.files, self._closer = arr, kind, files, closer
        self.src_axes = _check_axes(axes or _DEFAULT_AXES[arr.ndim], arr.ndim, str(files[0]))
        self.layout = Layout.from_sizes(dict(zip(self.src_axes, arr.shape)))
        self.dtype = np.dtype(arr.dtype)
        self.geometry = geometry or Geometry()

    def _array(self):
        # A memory map kept open accumulates every touched page in the process RSS (file-backed,
        # but counted): for .npy, map afresh per read and drop the map after copying.
        return np.load(self.files[0], mmap_mode="r", allow_pickle=False) if self.kind == "npy" else self.arr

    def _frame(self, arr, frame: int, ys: slice, xs: slice) -> np.ndarray:
        t, z = self.layout.frame_tz(frame)
        parts = {"t": t, "z": z, "c": slice(None), "y": ys, "x": xs}
        block = np.array(arr[tuple(parts[a] for a in self.src_axes)])
        return _to_cyx(block, [a for a in self.src_axes if a in "cyx"])

    def read(self, f0: int, f1: int) -> np.ndarray:
        arr = self._array()
        _, C, H, W = self.shape
        out = np.empty((f1 - f0, C, H, W), self.dtype)
        for f in range(f0, f1):
            out[f - f0] = self._frame(arr, f, slice(None), slice(None))
        del arr
        return out

    def read_region(self, frame: int, ys: slice, xs: slice) -> np.ndarray:
        arr = self._array()
        out = self._frame(arr, frame, ys, xs)
        del arr
        return out

    def close(self) -> None:
        if self._closer is not None:
            self._closer()


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
        sizes = {"t": len(files), "y": shape0[0], "x": shape0[1]}
        if len(shape0) == 3:
            sizes["c"] = shape0[2]
        self.layout = Layout.from_sizes(sizes)
        self.dtype = dtype0

    def read_region(self, frame: int, ys: slice, xs: slice) -> np.ndarray:
        return self.read(frame, frame + 1)[0][:, ys, xs]

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
        from .tiff import TiffReader

        return TiffReader(path, axes)
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
    ds = fh[ds_name]
    if axes is None:  # dimension scales labelled with axis letters (e.g. 'z', 'y', 'x')
        labels = "".join(str(d.label or "?").strip().lower()[:1] for d in ds.dims)
        if all(str(d.label).strip().lower() in ("t", "c", "z", "y", "x", "time", "channel") for d in ds.dims):
            axes = labels
    try:
        reader = ArrayReader(ds, axes, [path], "hdf5", closer=fh.close)
    except SourceError:
        fh.close()
        raise
    reader.geometry = from_hdf5(ds, reader.src_axes) or Geometry()
    reader.dataset = ds_name
    return reader
