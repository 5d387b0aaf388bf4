"""--seeds K through the tiled flow: the seed spread and the prior-filled map are blended like the
image into recon.zarr/uncertainty, and the audit writes labels/prior_filled next to audit_flags.
Values: an inpainting hole (the operator's null space) is prior-filled, observed pixels are not;
the stores open in xarray (no warning, physical coordinates), ome-zarr-py, bioio and napari-ome-zarr."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr

import flows
import storage
from flows import tiles as T

OP = {"name": "inpainting_box", "params": {"box_size": 14, "margin": [8, 8], "seed": 3}}


@pytest.fixture(scope="module")
def seeded(flows_env):
    out = flows_env["dir"] / "seeds.zarr"
    p = flows.ReconstructParams(input_store=str(flows_env["input"]), output_store=str(out), prior=str(flows_env["prior"]),
                                operator=OP, noise={"kind": "gaussian", "sigma": 0.025},
                                solver={"name": "ddiff", "steps": 5, "seeds": 3}, tile=24, overlap=4, seed=3,
                                execution={"batch_size": 4, "torch_threads": 1}, artifacts=False)
    flows.reconstruct_stack(p)
    res = flows.audit_reconstruction(flows.AuditParams(output_store=str(out), window=8, artifacts=False))
    hole = T.build_operator(OP["name"], OP["params"], (48, 40)).mask.numpy() == 0
    return storage.open_output(out), res, hole


def test_seed_spread_marks_the_inpainting_hole_prior_filled(seeded):
    out, res, hole = seeded
    assert 150 < hole.sum() < 250
    lab = zarr.open_group(out.path, mode="r")["labels"]
    assert lab.attrs["ome"]["labels"] == ["audit_flags", "prior_filled"]
    for t in range(out.n_frames):
        u = storage.read_uncertainty(out, t)
        assert np.isfinite(u["spread"]).all() and np.isfinite(u["measured_spread"]).all()
        pf = lab["prior_filled/0"][t].astype(bool)
        assert np.array_equal(pf, u["prior_filled"] > 0.5)  # the label is the blended map
        assert pf[hole].mean() >= 0.9 and pf[~hole].mean() <= 0.01, (pf[hole].mean(), pf[~hole].mean())
        # the seeds disagree in the hole, and the data cannot tell them apart there (noise sd units)
        assert np.median(u["spread"][hole]) > 10 * np.median(u["spread"][~hole])
        assert u["measured_spread"][hole].max() < 1e-6
    frac = np.mean([lab["prior_filled/0"][t].astype(bool).mean() for t in range(out.n_frames)])
    assert res["prior_filled_fraction"] == pytest.approx(frac) and "3 seeds" in res["uncertainty"]


def test_uncertainty_and_label_open_in_the_usual_clients(seeded):
    import xarray as xr

    out, _, _ = seeded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(out.path, group="uncertainty")
    assert ds.spread.dims == ("t", "y", "x") and ds.spread.shape == (2, 48, 40)
    assert ds.y.attrs["units"] == out.geometry[1]["y"] and float(ds.x[1] - ds.x[0]) == out.geometry[0]["x"]
    models = pytest.importorskip("ome_zarr_models.v05.image")
    img = models.Image.from_zarr(zarr.open_group(out.path, mode="r"))  # the root still validates, labels listed
    assert img.labels.label_paths == ["audit_flags", "prior_filled"]
    ome_reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    nodes = list(ome_reader.Reader(parse_url(str(out.path)))())
    labels = {n.zarr.path.rsplit("/", 1)[-1]: n for n in nodes if any(isinstance(s, ome_reader.Label) for s in n.specs)}
    assert sorted(labels) == ["audit_flags", "prior_filled"]
    assert np.array_equal(np.asarray(labels["prior_filled"].data[0]), zarr.open_group(out.path, mode="r")["labels/prior_filled/0"][:])
    unc = list(ome_reader.Reader(parse_url(str(out.path / "uncertainty")))())[0]
    assert np.array_equal(np.asarray(unc.data[0]), ds.spread.values, equal_nan=True)
    pytest.importorskip("bioio")
    bioio_ome_zarr = pytest.importorskip("bioio_ome_zarr")
    import bioio

    im = bioio.BioImage(str(out.path / "labels" / "prior_filled"), reader=bioio_ome_zarr.Reader)
    assert im.dims.T == 2 and (im.dims.Y, im.dims.X) == (48, 40)
    assert np.array_equal(im.get_image_data("TYX"), zarr.open_group(out.path, mode="r")["labels/prior_filled/0"][:])


def test_napari_ome_zarr_shows_both_labels_over_the_image(seeded):
    out = seeded[0]
    napari_ome_zarr = pytest.importorskip("napari_ome_zarr")
    layers = napari_ome_zarr.napari_get_reader(str(out.path))(str(out.path))
    assert [kind for _, _, kind in layers] == ["image", "labels", "labels"]
