"""Ingest: exact round trips per reader and dtype, OME-NGFF 0.5 validity, intensity map, bad input."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import storage
from storage.readers import natural_key

T, H, W = 4, 37, 45
DTYPES = ["uint8", "uint16", "float32"]


def make_stack(dtype: str, seed: int = 0, shape=(T, H, W)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return (rng.standard_normal(shape) * 100 + 7).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def write_source(kind: str, arr: np.ndarray, d: Path) -> str:
    """Write ``arr`` (T, H, W) in the given container; return the source spec string."""
    if kind == "tiff":
        tifffile.imwrite(d / "s.tif", arr, photometric="minisblack")
        return str(d / "s.tif")
    if kind == "bigtiff":
        tifffile.imwrite(d / "s.tif", arr, bigtiff=True, photometric="minisblack")
        return str(d / "s.tif")
    if kind == "ome-tiff":
        tifffile.imwrite(d / "s.ome.tif", arr, ome=True, metadata={"axes": "TYX"}, photometric="minisblack")
        return str(d / "s.ome.tif")
    if kind == "npy":
        np.save(d / "s.npy", arr)
        return str(d / "s.npy")
    if kind == "hdf5":
        h5py = pytest.importorskip("h5py")
        with h5py.File(d / "s.h5", "w") as fh:
            fh.create_dataset("grp/data", data=arr, chunks=(1, H, W))
        return str(d / "s.h5") + ":/grp/data"
    if kind in ("folder-tiff", "folder-png"):
        folder = d / "frames"
        folder.mkdir()
        for i, fr in enumerate(arr):  # names whose lexical order differs from natural order
            if kind == "folder-tiff":
                tifffile.imwrite(folder / f"img_{i * 5}.tif", fr)
            else:
                from PIL import Image
                Image.fromarray(fr).save(folder / f"img_{i * 5}.png")
        return str(folder)
    raise AssertionError(kind)


READERS = ["tiff", "bigtiff", "ome-tiff", "npy", "hdf5", "folder-tiff", "folder-png"]


@pytest.mark.parametrize("kind", READERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_exact(tmp_path, kind, dtype):
    if kind == "folder-png" and dtype == "float32":
        pytest.skip("PNG has no float32 pixels")
    src = make_stack(dtype)
    spec = write_source(kind, src, tmp_path)
    st = storage.ingest(spec, tmp_path / "in.zarr", chunk=16, block_bytes=2 * H * W * src.itemsize)
    assert st.shape == (T, 1, H, W)
    assert st.dtype == src.dtype
    back = st.array[:]
    assert np.array_equal(back[:, 0], src)  # exact, bitwise for float32 too
    assert st.meta["data_sha256"] == hashlib.sha256(np.ascontiguousarray(src)).hexdigest()
    assert storage.verify_stack(tmp_path / "in.zarr")
    assert st.meta["source"]["sha256"] is not None and len(st.meta["source"]["sha256"]) == 64
    assert st.meta["dtype"] == src.dtype.str
    axes = "tczyx" if kind == "ome-tiff" else "tyx"  # an OME-TIFF keeps its model's 5 axes (c, z of size 1)
    assert tuple(st.data.metadata.dimension_names) == tuple(axes) and st.axes == axes
    assert st.data.chunks[-2:] == (16, 16) and st.data.shards[-2:] == (48, 48)  # auto shard = 4 chunks, clipped


def test_rgb_and_channel_axes(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (3, 20, 24, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    st = storage.ingest(tmp_path / "rgb.tif", tmp_path / "rgb.zarr")
    assert np.array_equal(st.array[:], np.moveaxis(rgb, -1, 1))
    # OME-TIFF with separate channel pages, T C Y X
    tc = rng.standard_normal((3, 2, 10, 12)).astype(np.float32)
    tifffile.imwrite(tmp_path / "tc.ome.tif", tc, ome=True, metadata={"axes": "TCYX"})
    st = storage.ingest(tmp_path / "tc.ome.tif", tmp_path / "tc.zarr")
    assert np.array_equal(st.array[:], tc)
    # npy with explicit axes (t, y, x, c) and hdf5 via dataset=
    np.save(tmp_path / "tyxc.npy", rgb)
    st = storage.ingest(tmp_path / "tyxc.npy", tmp_path / "tyxc.zarr", axes="tyxc")
    assert np.array_equal(st.array[:], np.moveaxis(rgb, -1, 1))
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "x.h5", "w") as fh:
        fh["d"] = tc
    st = storage.ingest(tmp_path / "x.h5", tmp_path / "h5.zarr", dataset="d")
    assert np.array_equal(st.array[:], tc)
    assert st.meta["source"]["dataset"] == "d" and st.meta["source"]["path"] == str((tmp_path / "x.h5").resolve())


def test_jpeg_folder_matches_decoder_and_natural_order(tmp_path):
    from PIL import Image
    folder = tmp_path / "jpg"
    folder.mkdir()
    rng = np.random.default_rng(2)
    frames = {}
    for i in (10, 2, 1):
        fr = rng.integers(0, 255, (16, 18), dtype=np.uint8)
        Image.fromarray(fr).save(folder / f"f{i}.jpg", quality=90)
        frames[i] = np.asarray(Image.open(folder / f"f{i}.jpg"))  # JPEG is lossy: compare to decode
    st = storage.ingest(folder, tmp_path / "j.zarr")
    assert np.array_equal(st.array[:, 0], np.stack([frames[1], frames[2], frames[10]]))
    assert sorted(["a10", "a2", "a1"], key=natural_key) == ["a1", "a2", "a10"]


def test_ome_ngff_05_validates(tmp_path):
    ome_image = pytest.importorskip("ome_zarr_models.v05.image")
    spec = write_source("npy", make_stack("uint16"), tmp_path)
    storage.ingest(spec, tmp_path / "in.zarr", pixel_size=(0.5, 0.25), space_unit="micrometer", time_step=2.0)
    img = ome_image.Image.from_zarr(zarr.open_group(tmp_path / "in.zarr", mode="r"))
    ms = img.attributes.ome.multiscales[0]
    assert [a.name for a in ms.axes] == ["t", "y", "x"]  # the axes the data has (no c, no z)
    assert [a.type for a in ms.axes] == ["time", "space", "space"]
    assert ms.axes[1].unit == "micrometer" and ms.axes[0].unit == "second"
    assert list(ms.datasets[0].coordinateTransformations[0].scale) == [2.0, 0.5, 0.25]
    # the validator is not a rubber stamp: a wrong axis order must be rejected
    meta_path = tmp_path / "in.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    axes = meta["attributes"]["ome"]["multiscales"][0]["axes"]
    axes[0], axes[2] = axes[2], axes[0]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(Exception):
        ome_image.Image.from_zarr(zarr.open_group(tmp_path / "in.zarr", mode="r"))


def test_intensity_map_percentiles_and_inverse(tmp_path):
    src = make_stack("uint16", seed=3)
    spec = write_source("npy", src, tmp_path)
    # max_samples >= all pixels -> the subsample is the whole stack -> exact percentiles
    st = storage.ingest(spec, tmp_path / "a.zarr", percentiles=(1.0, 99.0), max_samples=src.size)
    lo, hi = np.percentile(src.astype(np.float64), [1.0, 99.0])
    assert st.intensity.low == pytest.approx(lo) and st.intensity.high == pytest.approx(hi)
    assert st.to_model(np.array([lo, hi])) == pytest.approx([-1.0, 1.0], abs=1e-6)
    x = src[0].astype(np.float64)
    assert np.allclose(st.from_model(st.to_model(x)), x, rtol=1e-6, atol=1e-6 * hi)
    # subsampled (streaming) estimate stays close
    st2 = storage.ingest(spec, tmp_path / "b.zarr", percentiles=(1.0, 99.0), max_samples=500)
    assert abs(st2.intensity.low - lo) < 0.02 * 65535 and abs(st2.intensity.high - hi) < 0.02 * 65535
    st3 = storage.ingest(spec, tmp_path / "c.zarr", intensity="dtype")
    assert (st3.intensity.low, st3.intensity.high) == (0.0, 65535.0)
    st4 = storage.ingest(spec, tmp_path / "d.zarr", intensity="minmax")
    assert (st4.intensity.low, st4.intensity.high) == (float(src.min()), float(src.max()))


def test_input_is_read_only(tmp_path):
    st = storage.ingest(write_source("npy", make_stack("uint8"), tmp_path), tmp_path / "in.zarr")
    with pytest.raises(Exception):
        st.array[0, 0, 0, 0] = 1
    with pytest.raises(storage.StorageError):
        storage.open_stack(tmp_path)  # not a store


def _nothing_left(tmp_path: Path, name: str) -> bool:
    return not (tmp_path / name).exists() and not any(p.name.startswith(f".{name}.") for p in tmp_path.iterdir())


def test_truncated_and_garbage_tiff(tmp_path):
    src = make_stack("uint16", shape=(6, 64, 64))
    tifffile.imwrite(tmp_path / "ok.tif", src)
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(storage.SourceError, match="truncated|damaged|readable"):
        storage.ingest(tmp_path / "cut.tif", tmp_path / "cut.zarr")
    assert _nothing_left(tmp_path, "cut.zarr")
    (tmp_path / "cut2.tif").write_bytes(data[:-100])  # every IFD intact, last page's pixels cut
    with pytest.raises(storage.SourceError, match="truncated"):
        storage.ingest(tmp_path / "cut2.tif", tmp_path / "cut2.zarr")
    assert _nothing_left(tmp_path, "cut2.zarr")
    (tmp_path / "junk.tif").write_bytes(b"this is not a tiff at all" * 10)
    with pytest.raises(storage.SourceError, match="not a readable TIFF"):
        storage.ingest(tmp_path / "junk.tif", tmp_path / "junk.zarr")
    assert _nothing_left(tmp_path, "junk.zarr")


def test_mixed_frame_sizes_folder(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    tifffile.imwrite(folder / "a1.tif", np.zeros((10, 10), np.uint16))
    tifffile.imwrite(folder / "a2.tif", np.zeros((10, 11), np.uint16))
    with pytest.raises(storage.SourceError, match="mixed frames"):
        storage.ingest(folder, tmp_path / "m.zarr")
    assert _nothing_left(tmp_path, "m.zarr")


def test_nonfinite_refuse_and_mask(tmp_path):
    src = make_stack("float32")
    src[2, 3, 4] = np.nan
    src[3, 0, 0] = np.inf
    spec = write_source("npy", src, tmp_path)
    with pytest.raises(storage.NonFiniteError, match=r"\[2, 3\]"):
        storage.ingest(spec, tmp_path / "nf.zarr")
    assert _nothing_left(tmp_path, "nf.zarr")
    st = storage.ingest(spec, tmp_path / "nf.zarr", nonfinite="mask", intensity="minmax")
    assert st.meta["nonfinite"] == {"policy": "mask", "frames": [2, 3], "mask": "valid"}
    assert np.array_equal(st.array[:, 0], src, equal_nan=True)  # values kept as they were
    finite = src[np.isfinite(src)]
    assert st.intensity.low == float(finite.min()) and st.intensity.high == float(finite.max())
    plan = storage.TilePlan(st.frame_shape, tile=16, halo=0, overlap=0)
    ti = storage.read_tile(st, 2, 0, plan)
    assert ti.valid is not None and not ti.valid[0, 3, 4] and ti.valid.sum() == ti.valid.size - 1
    assert ti.data[0, 3, 4] == 0.0 and np.isfinite(ti.data).all()
    assert storage.read_tile(st, 1, 0, plan).valid is None


def test_target_with_unrelated_data_is_refused(tmp_path):
    spec = write_source("npy", make_stack("uint8"), tmp_path)
    target = tmp_path / "busy"
    target.mkdir()
    (target / "thesis.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(storage.StoreExistsError, match="unrelated data"):
            storage.ingest(spec, target, overwrite=overwrite)
    assert sorted(os.listdir(target)) == ["thesis.txt"] and (target / "thesis.txt").read_text() == "precious"
    assert not any(p.name.startswith(".busy.") for p in tmp_path.iterdir())
    # an earlier ingest is replaced only on request
    storage.ingest(spec, tmp_path / "s.zarr")
    with pytest.raises(storage.StoreExistsError, match="overwrite=True"):
        storage.ingest(spec, tmp_path / "s.zarr")
    spec2 = str(tmp_path / "s2.npy")
    np.save(spec2, make_stack("uint8", seed=9))
    st = storage.ingest(spec2, tmp_path / "s.zarr", overwrite=True)
    assert np.array_equal(st.array[:, 0], make_stack("uint8", seed=9))


def test_bad_specs(tmp_path):
    with pytest.raises(storage.SourceError, match="does not exist"):
        storage.ingest(tmp_path / "nope.tif", tmp_path / "x.zarr")
    (tmp_path / "a.xyz").write_text("?")
    with pytest.raises(storage.SourceError, match="unknown source type"):
        storage.ingest(tmp_path / "a.xyz", tmp_path / "x.zarr")
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "f.h5", "w") as fh:
        fh["d"] = np.zeros((2, 4, 4))
    with pytest.raises(storage.SourceError, match="no dataset"):
        storage.ingest(str(tmp_path / "f.h5") + ":/missing", tmp_path / "x.zarr")
    with pytest.raises(storage.SourceError, match="name the HDF5 dataset"):
        storage.ingest(tmp_path / "f.h5", tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()
