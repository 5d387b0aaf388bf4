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

    Every series axis other than ``Y``/``X`` gets a role ``t``, ``z`` or ``c`` (docs/volumes.md,
    "What each TIFF layout becomes"): ``Z`` -> z; ``C`` -> c unless the pages hold interleaved
    samples; the samples ``S`` of an interleaved page (``YXS``, an RGB image) -> c; every other
    axis — ``T``, tifffile's unnamed ``Q``/``I`` and the samples of a *planar* page (``SYX``, what
    ``tifffile.imwrite`` and imageio write for a ``(3|4, H, W)`` array, which tifffile itself says
    it will store as separate grey pages) — -> t, flattened in file order. A plain multi-page file
    written page by page (one tifffile series per page) is read as one stack of all its pages. An
    OME-TIFF keeps all of its model's ``T, C, Z`` axes, even of size 1. ``axes`` (one letter per
    series dimension in the file's order, e.g. ``"tyx"`` for a ``SYX`` page, ``"zcyx"``) overrides
    the roles. Pixel sizes come from OME-XML or ImageJ metadata. ``read_region`` decodes only the
    strips/tiles a window touches."""

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
            if _one_series_per_page(self.tf):  # written page by page: one stack of all pages
                self.tf.close()
                self.tf = tifffile.TiffFile(path, is_shaped=False)
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
        n_lead = len(s_axes) - len(page_axes)
        expected = int(np.prod(s_shape[:n_lead], dtype=np.int64))
        if expected != n_pages or errors:
            raise SourceError(f"{path}: the TIFF metadata describes {expected} pages of shape {page_shape} but "
                              f"{n_pages} are readable{' (' + errors[0] + ')' if errors else ''}; the file is "
                              "truncated or damaged (re-copy or re-export it)")
        self._s_axes, self._s_shape, self._n_lead = s_axes, s_shape, n_lead
        self._roles_of = self._roles(path, s_axes, page_axes, axes)
        sizes = {"y": page_shape[page_axes.index("Y")], "x": page_shape[page_axes.index("X")]}
        for r, n in zip(self._roles_of, s_shape):
            if r in "tzc":
                sizes[r] = sizes.get(r, 1) * n
        self.layout = Layout.from_sizes(sizes)
        self.dtype = np.dtype(key.dtype)
        self.geometry = geometry or Geometry()
        self.pages = pages
        self._zarr, self._cached = None, (None, None)
        self._validate_extents(path)

    @staticmethod
    def _roles(path, series_axes: str, page_axes: str, axes: str | None) -> list[str]:
        """Role of each series axis: ``t``, ``z`` or ``c``, and ``y``/``x`` for the page's Y and X."""
        if axes is not None:
            if len(str(axes)) != len(series_axes):
                raise SourceError(f"{path}: the file stores {len(series_axes)} axes {series_axes}; axes={axes!r} "
                                  f"needs one letter of tczyx for each, in that order, e.g. {_example(series_axes)!r}")
            axes = _check_axes(axes, len(series_axes), str(path))
            wrong = [f"{a}={r!r}" for a, r in zip(series_axes, axes) if a in "YX" and r != a.lower()]
            if wrong:
                raise SourceError(f"{path}: the file stores axes {series_axes}; axes={axes!r} must name Y as 'y' "
                                  f"and X as 'x' in that order ({', '.join(wrong)}): one letter per dimension "
                                  f"of {series_axes}, e.g. {_example(series_axes)!r}")
            roles = list(axes)
        else:
            interleaved = page_axes == "YXS"
            roles = [a.lower() if a in "YXZ" else "c" if (a == "C" and not interleaved) or (a == "S" and interleaved)
                     else "t" for a in series_axes]
        for r in "zc":
            if roles.count(r) > 1:
                raise SourceError(f"{path}: more than one series axis maps to {r!r} ({series_axes} as "
                                  f"{''.join(roles)}); pass axes=, e.g. {_example(series_axes)!r}")
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

    def _key(self, frame: int, ys=slice(None), xs=slice(None)) -> list:
        """Index of one frame into every series axis (``slice(None)`` on the channel axis)."""
        t, z = self.layout.frame_tz(frame)
        t_shape = [n for r, n in zip(self._roles_of, self._s_shape) if r == "t"]
        t_idx = iter(np.unravel_index(t, t_shape)) if t_shape else iter(())
        part = {"z": z, "c": slice(None), "y": ys, "x": xs}
        return [int(next(t_idx)) if r == "t" else part[r] for r in self._roles_of]

    def _page(self, i: int) -> np.ndarray:
        """Decoded page ``i`` (the last one is kept: a planar page's samples are consecutive frames)."""
        if self._cached[0] != i:
            try:
                self._cached = (i, np.asarray(self.pages[i].asarray()))
            except Exception as exc:
                raise SourceError(f"{self.files[0]}: page {i} cannot be decoded ({type(exc).__name__}: "
                                  f"{exc}); the file is damaged") from exc
        return self._cached[1]

    def read(self, f0: int, f1: int) -> np.ndarray:
        _, C, H, W = self.shape
        out = np.empty((f1 - f0, C, H, W), self.dtype)
        lead_shape, n = self._s_shape[: self._n_lead], self._n_lead
        page_dims = self._roles_of[n:]
        for f in range(f0, f1):
            key = self._key(f)
            c_lead = [j for j, k in enumerate(key[:n]) if isinstance(k, slice)]
            for c in range(C if c_lead else 1):
                lead = [c if j in c_lead else k for j, k in enumerate(key[:n])]
                i = int(np.ravel_multi_index(lead, lead_shape)) if lead_shape else 0
                block = self._page(i)[tuple(key[n:])]
                dims = [r for r, k in zip(page_dims, key[n:]) if isinstance(k, slice)]
                out[f - f0, c if c_lead else slice(None)] = _to_cyx(block, dims)[0 if c_lead else slice(None)]
        return out

    def read_region(self, frame: int, ys: slice, xs: slice) -> np.ndarray:
        import zarr

        if self._zarr is None:
            self._zarr = zarr.open_array(self.series.aszarr(squeeze=self._squeeze), mode="r")
        key = self._key(frame, ys, xs) + ([0] if self._trailing_s else [])
        block = np.asarray(self._zarr[tuple(key)])
        return _to_cyx(block, [r for r, k in zip(self._roles_of, key) if isinstance(k, slice)])

    def close(self) -> None:
        self.tf.close()


def _one_series_per_page(tf) -> bool:
    """A plain file written page by page (``TiffWriter.write`` in a loop, imageio's ``mimwrite``):
    tifffile sees one series per page; all of the same shape and dtype, they are one stack."""
    series = tf.series
    if len(series) < 2 or tf.is_ome or tf.is_imagej:
        return False
    first = series[0]
    return all(len(s.pages) == 1 and s.shape == first.shape and s.dtype == first.dtype for s in series) and \
        sum(len(s.pages) for s in series) == len(tf.pages)


def _example(series_axes: str) -> str:
    """A valid ``axes`` example for a file's series axes (Y, X, Z, C kept; other axes t, then c, z)."""
    named = [a.lower() if a in "YXZC" else None for a in series_axes]
    free = [r for r in "tcz" if r not in named]
    return "".join(r or (free.pop(0) if free else "t") for r in named)
