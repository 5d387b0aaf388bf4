"""What each common TIFF layout ingests to (the table in docs/volumes.md), checked on values.

Every case writes an array of distinct values with a real writer (tifffile, imageio, Pillow) and
checks the stored axes and that each stored frame holds the planes the user meant.
"""
from __future__ import annotations

import warnings

import imageio
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from PIL import Image

import storage
from storage.readers import open_source

H, W = 12, 10


def _vals(*shape, dtype=np.uint16):
    return (np.arange(int(np.prod(shape))) % 60000).reshape(shape).astype(dtype)


def _write(path, a, **kw):
    with warnings.catch_warnings():  # tifffile's notice that (3, H, W) will become separate pages
        warnings.simplefilter("ignore", DeprecationWarning)
        tifffile.imwrite(path, a, **kw)


def _pages(path, planes):
    with tifffile.TiffWriter(path) as w:  # one series per page, as a loop of writes makes
        for p in planes:
            w.write(p)


def _pil(path, planes):
    ims = [Image.fromarray(p) for p in planes]
    ims[0].save(path, save_all=True, append_images=ims[1:])


# name -> (write(path, a), a's shape, stored axes, expected frames (N, C, H, W) from a)
CASES = {
    "tifffile (3,H,W) default: one planar page of 3 samples": (
        _write, (3, H, W), "tyx", lambda a: a[:, None]),
    "tifffile (4,H,W) default: planar RGBA page": (_write, (4, H, W), "tyx", lambda a: a[:, None]),
    "tifffile (5,H,W) default: 5 pages": (_write, (5, H, W), "tyx", lambda a: a[:, None]),
    "tifffile (3,H,W) minisblack": (
        lambda p, a: _write(p, a, photometric="minisblack"), (3, H, W), "tyx", lambda a: a[:, None]),
    "tifffile (H,W,3) RGB": (_write, (H, W, 3), "cyx", lambda a: np.moveaxis(a, -1, 0)[None]),
    "tifffile (T,H,W,3) RGB pages": (_write, (2, H, W, 3), "tcyx", lambda a: np.moveaxis(a, -1, 1)),
    "tifffile (T,3,H,W) default: planar pages": (
        _write, (2, 3, H, W), "tyx", lambda a: a.reshape(6, 1, H, W)),
    "tifffile bigtiff (3,H,W)": (lambda p, a: _write(p, a, bigtiff=True), (3, H, W), "tyx", lambda a: a[:, None]),
    "TiffWriter.write per page": (_pages, (4, H, W), "tyx", lambda a: a[:, None]),
    "imageio.v3.imwrite (3,H,W)": (lambda p, a: iio.imwrite(p, a), (3, H, W), "tyx", lambda a: a[:, None]),
    "imageio.v3.imwrite (H,W,3)": (lambda p, a: iio.imwrite(p, a), (H, W, 3), "cyx",
                                   lambda a: np.moveaxis(a, -1, 0)[None]),
    "imageio.mimwrite of 2-D frames": (lambda p, a: imageio.mimwrite(p, list(a)), (3, H, W), "tyx",
                                       lambda a: a[:, None]),
    "Pillow save_all": (_pil, (3, H, W), "tyx", lambda a: a[:, None]),
    "ImageJ TZCYX hyperstack": (
        lambda p, a: _write(p, a, imagej=True, metadata={"axes": "TZCYX"}), (2, 3, 2, H, W), "tczyx",
        lambda a: a.reshape(6, 2, H, W)),
    "ImageJ (N,H,W) without axes: tifffile writes channels=N": (
        lambda p, a: _write(p, a, imagej=True), (3, H, W), "cyx", lambda a: a[None]),
    "ImageJ RGB frames": (lambda p, a: _write(p, a, imagej=True), (2, H, W, 3), "tcyx",
                          lambda a: np.moveaxis(a, -1, 1)),
    "OME-TIFF TCZYX": (lambda p, a: _write(p, a, ome=True, metadata={"axes": "TCZYX"}), (2, 2, 3, H, W),
                       "tczyx", lambda a: a.transpose(0, 2, 1, 3, 4).reshape(6, 2, H, W)),
    "OME-TIFF (N,H,W) without axes": (lambda p, a: _write(p, a, ome=True), (3, H, W), "tczyx", lambda a: a[None]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_tiff_layout_ingests_to_the_axes_meant(tmp_path, name):
    write, shape, axes, frames = CASES[name]
    a = _vals(*shape, dtype=np.uint8 if "RGB" in name or "(H,W,3)" in name else np.uint16)
    write(tmp_path / "s.tif", a)
    st = storage.ingest(tmp_path / "s.tif", tmp_path / "s.zarr")
    want = frames(a)
    assert st.axes == axes and st.shape == want.shape
    assert np.array_equal(st.array[:], want)
    with _closing(tmp_path / "s.tif") as r:
        for f in range(r.shape[0]):  # the windowed read (tifffile's Zarr store) agrees with the page read
            assert np.array_equal(r.read_region(f, slice(2, 9), slice(1, 7)), want[f][:, 2:9, 1:7])


class _closing:
    def __init__(self, path, axes=None):
        self.r = open_source(path, axes=axes)

    def __enter__(self):
        return self.r

    def __exit__(self, *exc):
        self.r.close()


@pytest.mark.parametrize("axes,stored", [("tyx", "tyx"), ("zyx", "zyx"), ("cyx", "cyx"), ("TYX", "tyx")])
def test_axes_says_what_a_planar_page_cannot(tmp_path, axes, stored):
    a = _vals(3, H, W)
    _write(tmp_path / "counts.tif", a)  # tifffile's default: ONE page of 3 planar samples
    st = storage.ingest(tmp_path / "counts.tif", tmp_path / "c.zarr", axes=axes)
    assert st.axes == stored
    assert np.array_equal(st.array[:], a[None] if stored == "cyx" else a[:, None])


def test_axes_on_pages_of_samples_and_its_errors(tmp_path):
    a = _vals(2, 3, H, W)
    _write(tmp_path / "tc.tif", a)  # QSYX: (T, 3, H, W) as planar pages
    st = storage.ingest(tmp_path / "tc.tif", tmp_path / "tc.zarr", axes="tcyx")
    assert st.axes == "tcyx" and np.array_equal(st.array[:], a)
    st = storage.ingest(tmp_path / "tc.tif", tmp_path / "zt.zarr", axes="tzyx")
    assert st.axes == "tzyx" and np.array_equal(st.array[:], a.reshape(6, 1, H, W))
    with pytest.raises(storage.SourceError, match=r"must name Y as 'y' and X as 'x'.*e\.g\. 'tcyx'"):
        storage.ingest(tmp_path / "tc.tif", tmp_path / "bad.zarr", axes="tcxy")
    with pytest.raises(storage.SourceError, match=r"stores 4 axes QSYX; axes='tyx' needs one letter of tczyx for each.*'tcyx'"):
        storage.ingest(tmp_path / "tc.tif", tmp_path / "bad2.zarr", axes="tyx")
