"""TIFF / BigTIFF / OME-TIFF / ImageJ reader (see :mod:`storage.readers` for the reader contract).

Room: ``storage`` — numpy, tifffile (+ zarr for window reads through tifffile's Zarr store).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .axes import Layout
from .physical import Geometry, from_imagej, from_ome_xml
from .readers import SourceReader, _check_axes, _to_cyx
from .safety import SourceError

__all__ = ["TiffReader"]


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(level=logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


class TiffReader(SourceReader):
    """TIFF / BigTIFF / OME-TIFF / ImageJ hyperstacks through tifffile, one page at a time.

    The series' leading axes map to ``t`` (``T`` and any other letter, flattened in file order),
    ``z`` (``Z``) and ``c`` (``C``, unless the pages hold samples ``S``); an OME-TIFF keeps all of
    its model's ``T, C, Z`` axes, even of size 1; ``axes`` (one letter per series dimension, e.g.
    ``"zcyx"``) overrides that reading. Pixel sizes come from OME-XML or
    ImageJ metadata. ``read_region`` decodes only the strips/tiles a window touches."""

    kind = "tiff"

    def __init__(self, path: Path, axes: str | None = None):
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
            geometry = (from_ome_xml(self.tf.ome_metadata) if self.tf.is_ome and self.tf.ome_metadata else
                        from_imagej(self.tf.imagej_metadata, key) if self.tf.is_imagej else None)
        except Exception as exc:  # tifffile raises many types for a broken file
            raise SourceError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc}); "
                              "check the file is complete and really a TIFF") from exc
        finally:
            log.removeHandler(handler)
        if page_axes not in ("YX", "YXS", "SYX"):
            raise SourceError(f"{path}: unsupported TIFF page layout {page_axes!r} (expected YX, YXS or SYX)")
        self.page_axes, self.series = page_axes, series
        # OME-TIFF: keep the OME model's axes (T, C, Z even of size 1: they are the file's axes)
        self._squeeze, self._trailing_s = not self.tf.is_ome, False
        s_axes, s_shape = series.axes, tuple(series.shape)
        if self.tf.is_ome:
            s_axes, s_shape = series.get_axes(squeeze=False), tuple(series.get_shape(squeeze=False))
            if s_axes.endswith("S") and s_shape[-1] == 1 and "S" not in page_axes:
                s_axes, s_shape, self._trailing_s = s_axes[:-1], s_shape[:-1], True
        lead_axes = s_axes[: len(s_axes) - len(page_axes)]
        lead_shape = tuple(s_shape[: len(lead_axes)])
        expected = int(np.prod(lead_shape, dtype=np.int64))
        if expected != n_pages or errors:
            raise SourceError(f"{path}: the TIFF metadata describes {expected} pages of shape {page_shape} but "
                              f"{n_pages} are readable{' (' + errors[0] + ')' if errors else ''}; the file is "
                              "truncated or damaged (re-copy or re-export it)")
        roles = self._roles(path, s_axes, lead_axes, page_axes, axes)
        sizes = {"y": page_shape[page_axes.index("Y")], "x": page_shape[page_axes.index("X")]}
        if "S" in page_axes:
            sizes["c"] = page_shape[page_axes.index("S")]
        for r, n in zip(roles, lead_shape):
            sizes[r] = sizes.get(r, 1) * n
        self.layout = Layout.from_sizes(sizes)
        self.dtype = np.dtype(key.dtype)
        self.geometry = geometry or Geometry()
        self.pages = pages
        self._lead_shape, self._roles_of = lead_shape, roles
        self._zarr = None
        self._validate_extents(path)

    @staticmethod
    def _roles(path, series_axes: str, lead_axes: str, page_axes: str, axes: str | None) -> list[str]:
        """Role (t, z or c) of each leading series axis."""
        if axes is not None:
            axes = _check_axes(axes, len(series_axes), str(path))
            want = "".join({"Y": "y", "X": "x", "S": "c"}[a] for a in page_axes)
            if axes[len(lead_axes):] != want:
                raise SourceError(f"{path}: the file stores {series_axes} with shape per page {page_axes}; axes="
                                  f"{axes!r} must end with {want!r} (one letter per dimension of {series_axes})")
            roles = list(axes[: len(lead_axes)])
        else:
            roles = ["z" if a == "Z" else "c" if a == "C" and "S" not in page_axes else "t" for a in lead_axes]
        for r in "zc":
            if roles.count(r) > 1:
                raise SourceError(f"{path}: more than one series axis maps to {r!r} ({series_axes}); pass axes=")
        if "c" in roles and "S" in page_axes:
            raise SourceError(f"{path}: pages hold samples (S) and axes also names a channel axis; pass axes=")
        return roles

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

    def _lead_index(self, frame: int, channel) -> tuple:
        """Index of ``(frame, channel)`` into the leading series axes (channel may be a slice)."""
        t, z = self.layout.frame_tz(frame)
        t_shape = [n for r, n in zip(self._roles_of, self._lead_shape) if r == "t"]
        t_idx = iter(np.unravel_index(t, t_shape)) if t_shape else iter(())
        return tuple(int(next(t_idx)) if r == "t" else z if r == "z" else channel for r in self._roles_of)

    def read(self, f0: int, f1: int) -> np.ndarray:
        _, C, H, W = self.shape
        out = np.empty((f1 - f0, C, H, W), self.dtype)
        per_page = "c" in self._roles_of
        for f in range(f0, f1):
            for c in range(C if per_page else 1):
                i = int(np.ravel_multi_index(self._lead_index(f, c), self._lead_shape)) if self._lead_shape else 0
                try:
                    page = np.asarray(self.pages[i].asarray())
                except Exception as exc:
                    raise SourceError(f"{self.files[0]}: page {i} cannot be decoded ({type(exc).__name__}: "
                                      f"{exc}); the file is damaged") from exc
                if self.page_axes == "YX":
                    out[f - f0, c] = page
                elif self.page_axes == "YXS":
                    out[f - f0] = np.moveaxis(page, -1, 0)
                else:  # SYX
                    out[f - f0] = page
        return out

    def read_region(self, frame: int, ys: slice, xs: slice) -> np.ndarray:
        import zarr

        if self._zarr is None:
            self._zarr = zarr.open_array(self.series.aszarr(squeeze=self._squeeze), mode="r")
        page = {"Y": ys, "X": xs, "S": slice(None)}
        key = self._lead_index(frame, slice(None)) + tuple(page[a] for a in self.page_axes)
        key += (0,) if self._trailing_s else ()
        block = np.asarray(self._zarr[key])
        dims = (["c"] if "c" in self._roles_of else []) + [{"Y": "y", "X": "x", "S": "c"}[a] for a in self.page_axes]
        return _to_cyx(block, dims)

    def close(self) -> None:
        self.tf.close()
