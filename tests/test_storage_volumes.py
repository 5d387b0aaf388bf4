"""Axes (t, c, z, y, x) and physical geometry through ingest and outputs; frames larger than a
read block; viewer-ready outputs read by the real clients (ome-zarr-models, ome-zarr-py, bioio,
napari-ome-zarr when installed) and xarray."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
import zarr

import storage
from test_storage_output import run

T, C, Z, H, W = 2, 2, 3, 40, 52
OME_META = {"axes": "TCZYX", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.2,
            "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "µm", "TimeIncrement": 30,
            "TimeIncrementUnit": "s"}


def volume(seed=0, dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, 4000, (T, C, Z, H, W)).astype(dtype)


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    """A 5-D OME-TIFF ingested and 'reconstructed' (deterministic per-tile solver), flags written."""
    d = tmp_path_factory.mktemp("vol")
    src = volume()
    tifffile.imwrite(d / "v.ome.tif", src, ome=True, photometric="minisblack", metadata=OME_META)
    st = storage.ingest(d / "v.ome.tif", d / "in.zarr", chunk=16)
    plan = storage.TilePlan((H, W), tile=16, halo=3, overlap=4)
    out = run(d / "in.zarr", d / "recon.zarr", plan)
    flags = np.zeros((H, W), bool)
    flags[5:15, 10:30] = True
    with storage.RunLock(out.path) as lock:
        storage.write_flag_label(out, "audit_flags", st.layout.frame_of(1, 2), flags, run_id=lock.run_id)
    return {"dir": d, "src": src, "stack": st, "out": out, "flags": flags, "frame": st.layout.frame_of(1, 2)}


def test_5d_ome_tiff_keeps_axes_and_pixel_sizes(vol):
    st, src = vol["stack"], vol["src"]
    assert st.axes == "tczyx" and st.data.shape == (T, C, Z, H, W) and st.shape == (T * Z, C, H, W)
    assert np.array_equal(st.data[:], src)
    assert np.array_equal(st.array[st.layout.frame_of(1, 2)], src[1, :, 2])  # frame = t·Z + z
    assert np.array_equal(st.volume(1), src[1])
    assert st.scale == {"t": 30.0, "z": 1.5, "y": 0.2, "x": 0.25} and st.meta["geometry"]["source"] == "ome-xml"
    assert st.units == {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    ms = st.ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == list("tczyx")
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [30.0, 1.0, 1.5, 0.2, 0.25]
    assert storage.verify_stack(st.path)
    # the output keeps them: same axes, same physical steps
    out = vol["out"]
    assert out.layout.axes == "tczyx" and out.layout.shape == (T, C, Z, H, W)
    assert out.geometry[0] == st.scale


def test_imagej_hdf5_npy_axes_and_user_geometry(tmp_path):
    src = volume(1)
    # ImageJ hyperstack (TZCYX on disk) -> stored t, c, z, y, x with its spacing and resolution
    tifffile.imwrite(tmp_path / "ij.tif", src.transpose(0, 2, 1, 3, 4), imagej=True, resolution=(5.0, 5.0),
                     metadata={"axes": "TZCYX", "spacing": 0.8, "unit": "um", "finterval": 2.0})
    st = storage.ingest(tmp_path / "ij.tif", tmp_path / "ij.zarr", chunk=16)
    assert st.axes == "tczyx" and np.array_equal(st.data[:], src)
    assert st.scale == {"t": 2.0, "z": 0.8, "y": 0.2, "x": 0.2} and st.meta["geometry"]["source"] == "imagej"
    # .npy z-stack with the user's axes and geometry: z stays z (never t)
    np.save(tmp_path / "zs.npy", src[0, 0].transpose(1, 2, 0))  # (y, x, z) on disk
    st = storage.ingest(tmp_path / "zs.npy", tmp_path / "zs.zarr", axes="YXZ", pixel_size=0.1, z_step=0.4)
    assert st.axes == "zyx" and np.array_equal(st.data[:], src[0, 0]) and st.n_frames == Z
    assert st.scale == {"z": 0.4, "y": 0.1, "x": 0.1} and st.meta["geometry"]["source"] == "user"
    # HDF5 with dimension labels and element_size_um
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "v.h5", "w") as f:
        ds = f.create_dataset("data", data=src[1, 1])
        for i, name in enumerate("zyx"):
            ds.dims[i].label = name
        ds.attrs["element_size_um"] = [2.0, 0.5, 0.5]
    st = storage.ingest(f"{tmp_path}/v.h5:/data", tmp_path / "h5.zarr")
    assert st.axes == "zyx" and np.array_equal(st.data[:], src[1, 1]) and st.scale == {"z": 2.0, "y": 0.5, "x": 0.5}
    # a TIFF series re-read with the user's axes; a wrong count is one clear error
    tifffile.imwrite(tmp_path / "flat.tif", src[0, 0], photometric="minisblack")  # (3, H, W) pages
    assert storage.ingest(tmp_path / "flat.tif", tmp_path / "flat.zarr", axes="zyx").axes == "zyx"
    with pytest.raises(storage.SourceError, match="axes"):
        storage.ingest(tmp_path / "flat.tif", tmp_path / "bad.zarr", axes="tzyx")


@pytest.mark.parametrize("kind", ["tiled-tiff", "npy"])
def test_frames_larger_than_a_block_ingest_window_by_window(tmp_path, kind):
    """A frame bigger than ``block_bytes`` is streamed in shard-aligned windows: same bytes, same checksum."""
    src = volume(2)[:, :, 0]  # (t, c, y, x)
    if kind == "tiled-tiff":
        tifffile.imwrite(tmp_path / "s.ome.tif", src, ome=True, tile=(16, 16), photometric="minisblack",
                         metadata={"axes": "TCYX"})
        path = tmp_path / "s.ome.tif"
    else:
        np.save(tmp_path / "s.npy", src)
        path = tmp_path / "s.npy"
    whole = storage.ingest(path, tmp_path / "whole.zarr", chunk=8, shard=16)
    win = storage.ingest(path, tmp_path / "win.zarr", chunk=8, shard=16, block_bytes=C * H * W)  # < one frame
    assert np.array_equal(win.array[:], src) and np.array_equal(whole.array[:], src)  # frames (t, c, y, x)
    assert win.meta["data_sha256"] == whole.meta["data_sha256"] and storage.verify_stack(win.path)


def test_planes_view_reads_and_writes_regions():
    from storage.axes import Layout, Planes

    a = np.zeros((2, 3, 4, 5), np.int32)  # (t, z, y, x): no channel axis
    p = Planes(a, Layout("tzyx", a.shape))
    assert p.shape == (6, 1, 4, 5)
    p[4, :, 1:3, 2:4] = 7  # frame 4 = (t 1, z 1)
    assert (a[1, 1, 1:3, 2:4] == 7).all() and a.sum() == 7 * 4
    assert p[4, 0].shape == (4, 5) and p[3:5, :, 1:3].shape == (2, 1, 2, 5)


def test_recon_is_an_ome_ngff_image_at_the_root_with_pyramid_and_labels(vol):
    out = vol["out"]
    models = pytest.importorskip("ome_zarr_models.v05.image")
    img = models.Image.from_zarr(zarr.open_group(out.path, mode="r"))
    assert len(img.datasets[0]) == out.levels == 3 and img.labels.label_paths == ["audit_flags"]
    # level 1 is the 2x2 mean of level 0 (odd edges: mean of the pixels present)
    l0, l1 = out.recon(0)[:], out.recon(1)[:]
    assert l1.shape == (T * Z, C, H // 2, W // 2)
    assert np.allclose(l1, l0.reshape(T * Z, C, H // 2, 2, W // 2, 2).mean(axis=(3, 5)), rtol=1e-6)
    ms = zarr.open_group(out.path, mode="r").attrs["ome"]["multiscales"][0]
    assert ms["datasets"][1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [30.0, 1.0, 1.5, 0.4, 0.5]},
        {"type": "translation", "translation": [0.0, 0.0, 0.0, 0.1, 0.125]}]
    lab = zarr.open_group(out.path, mode="r")["labels/audit_flags"]
    assert lab["0"].shape == (T, Z, H, W) and lab["0"].dtype == np.uint8  # image axes less c
    assert np.array_equal(lab["0"][1, 2].astype(bool), vol["flags"]) and lab["0"][0].max() == 0
    assert np.array_equal(lab["1"][1, 2], vol["flags"].reshape(H // 2, 2, W // 2, 2).max(axis=(1, 3)))


def test_ome_zarr_py_and_bioio_open_the_root(vol):
    out = vol["out"]
    ome_reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    nodes = list(ome_reader.Reader(parse_url(str(out.path)))())
    image = nodes[0]
    assert any(isinstance(s, ome_reader.Multiscales) for s in image.specs)
    assert [d.shape for d in image.data] == [(T, C, Z, H, W), (T, C, Z, H // 2, W // 2), (T, C, Z, H // 4, W // 4)]
    assert np.array_equal(np.asarray(image.data[0]), out.group()["0"][:], equal_nan=True)
    label = [n for n in nodes if any(isinstance(s, ome_reader.Label) for s in n.specs)]
    assert len(label) == 1 and label[0].data[0].shape == (T, Z, H, W)
    bioio = pytest.importorskip("bioio")
    pytest.importorskip("bioio_ome_zarr")
    im = bioio.BioImage(str(out.path))
    assert (im.dims.T, im.dims.C, im.dims.Z, im.dims.Y, im.dims.X) == (T, C, Z, H, W)
    assert tuple(im.physical_pixel_sizes) == (1.5, 0.2, 0.25)
    assert np.array_equal(im.get_image_data("TCZYX"), out.group()["0"][:])


def test_napari_ome_zarr_reads_image_and_labels(vol):
    reader = pytest.importorskip("napari_ome_zarr")
    layers = reader.napari_get_reader(str(vol["out"].path))(str(vol["out"].path))
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image", "labels"]
    (data, meta, _), (ldata, lmeta, _) = layers
    assert [d.shape for d in data][0] == (T, C, Z, H, W) and meta["channel_axis"] == 1
    assert list(meta["scale"]) == list(lmeta["scale"]) == [30.0, 1.5, 0.2, 0.25]  # labels sit on the image


def test_diagnostics_open_in_xarray_without_warnings_with_physical_coords(vol):
    import xarray as xr

    out = vol["out"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(out.path, group="diagnostics")
        ds2 = xr.open_zarr(out.path / "diagnostics")
    assert ds.identical(ds2)
    assert ds.residual.dims == ("frame", "c", "y", "x") and ds.chi2_nu.dims == ("frame", "tile")
    assert np.allclose(ds.y.values, np.arange(H) * 0.2) and ds.y.attrs["units"] == "micrometer"
    assert np.allclose(ds.x.values, np.arange(W) * 0.25)
    assert np.allclose(ds.time.values, np.repeat(np.arange(T), Z) * 30.0) and ds.time.attrs["units"] == "second"
    assert np.allclose(ds.depth.values, np.tile(np.arange(Z), T) * 1.5) and ds.depth.attrs["units"] == "micrometer"
    plan = out.plan
    assert np.allclose(ds.tile_y.values, [(t.core[0] + t.core[1] - 1) / 2 * 0.2 for t in plan])
    assert ds.tile_x.attrs["units"] == "micrometer" and np.isfinite(ds.chi2_nu.values).all()
