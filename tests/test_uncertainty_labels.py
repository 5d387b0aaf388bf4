"""--seeds K through the tiled flow: the seed spread and the prior-filled map are blended like the
image into recon.zarr/uncertainty, and the audit writes labels/prior_filled next to audit_flags.
Values: an inpainting hole (the operator's null space) is prior-filled, observed pixels are not;
the stores open in xarray (no warning, physical coordinates), ome-zarr-py, bioio and napari-ome-zarr."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
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
    # prior_only: the audit windows inside the hole, which hold no measurement to test (issue 27)
    assert lab.attrs["ome"]["labels"] == ["audit_flags", "prior_only", "prior_filled"]
    for t in range(out.n_frames):
        assert not lab["prior_only/0"][t].astype(bool)[~hole].any()
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
    assert img.labels.label_paths == ["audit_flags", "prior_only", "prior_filled"]
    ome_reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    nodes = list(ome_reader.Reader(parse_url(str(out.path)))())
    labels = {n.zarr.path.rsplit("/", 1)[-1]: n for n in nodes if any(isinstance(s, ome_reader.Label) for s in n.specs)}
    assert sorted(labels) == ["audit_flags", "prior_filled", "prior_only"]
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
    assert [kind for _, _, kind in layers] == ["image", "labels", "labels", "labels"]  # audit_flags, prior_only, prior_filled


# ---- whole frames (a global operator): MRI k-space, where no pixel has a measurement of its own ----

def _kspace_store(tmp_path, acceleration: float, sigma: float):
    """Held-out camera and coins (32 px, physical [0, 1]) as noisy Cartesian k-space at ``acceleration``."""
    import operators
    from flows.sample_data import sample_images
    from operators.fourier import fft2c
    from skimage.transform import resize

    _, held, _ = sample_images(("camera", "coins"))
    truth = np.stack([resize((h[: min(h.shape), : min(h.shape)] + 1) / 2, (32, 32), anti_aliasing=True)
                      for h in held]).astype(np.float32)
    mask = operators.get_operator("mri_cartesian", acceleration=acceleration, image_size=32, seed=1).mask().numpy()
    g = np.random.default_rng(1)
    k = fft2c(torch.from_numpy(truth).to(torch.complex64)).numpy()
    k = (k + sigma * (g.standard_normal(k.shape) + 1j * g.standard_normal(k.shape))) * mask.astype(bool)
    src = tmp_path / f"k{acceleration:g}.npy"
    np.save(src, k.astype(np.complex64))
    store = tmp_path / f"k{acceleration:g}.zarr"
    flows.ingest_stack(flows.IngestParams(source=str(src), store=str(store), domain="kspace"), artifacts=False)
    return store


def _seeded_frames(store, out, sigma: float, **kw):
    p = flows.ReconstructParams(input_store=str(store), output_store=str(out), noise={"sigma": sigma},
                                solver={"steps": 10, "seeds": 3}, seed=5, artifacts=False,
                                execution={"batch_size": 1, "torch_threads": 1}, **kw)
    return p, flows.reconstruct_stack(p)


def test_whole_frame_seed_spread_in_image_units_resumes_and_labels(prefect_harness, tmp_path):
    sigma = 0.02  # per real and imaginary part, k-space units (= image units: the FFT is unitary)
    full, under = _kspace_store(tmp_path, 1, sigma), _kspace_store(tmp_path, 8, sigma)
    _seeded_frames(full, tmp_path / "full.zarr", sigma)
    p, _ = _seeded_frames(under, tmp_path / "under.zarr", sigma)
    uf = [storage.read_uncertainty(storage.open_output(tmp_path / "full.zarr"), t) for t in range(2)]
    uu = [storage.read_uncertainty(storage.open_output(p.output_store), t) for t in range(2)]
    for a, b in zip(uf, uu):
        assert a["spread"].shape == (32, 32) and np.isfinite(a["spread"]).all() and np.isfinite(b["spread"]).all()
        assert np.isnan(b["measured_spread"]).all()  # a global operator: no pixel has a measurement of its own
        assert np.median(a["spread"]) < sigma  # fully sampled: the seeds agree to within the noise's sd (σ per pixel)
    # at R = 8 seven eighths of k-space are the prior's: on coins (structure the 4 lines cannot pin) the
    # upper decile of the spread is far higher than fully sampled (measured here: 0.021 -> 0.063); the
    # smooth camera crop stays low at any R, as does its error (`benchmarks/mri_seed_spread.py --steps 10`,
    # model units: coins spread p90 0.050 -> 0.151, error p90 0.071 -> 0.315; camera 0.030 -> 0.036)
    assert np.quantile(uu[1]["spread"], 0.9) > 1.8 * np.quantile(uf[1]["spread"], 0.9)
    # interrupted after one frame and resumed: the maps are the bytes of the uninterrupted run
    q = p.model_copy(update={"output_store": str(tmp_path / "resumed.zarr"), "fail_after_tiles": 1})
    with pytest.raises(Exception, match="interrupted deliberately"):
        flows.reconstruct_stack(q)
    flows.reconstruct_stack(q.model_copy(update={"fail_after_tiles": None}))
    ur = [storage.read_uncertainty(storage.open_output(q.output_store), t) for t in range(2)]
    for a, b in zip(uu, ur):
        assert all(np.array_equal(a[m], b[m], equal_nan=True) for m in storage.UNC_MAPS)
    res = flows.audit_reconstruction(flows.AuditParams(output_store=p.output_store, artifacts=False))
    lab = zarr.open_group(p.output_store, mode="r")["labels"]
    # (whole frames are tested whole: no window flag map, so prior_filled is the only label)
    assert lab.attrs["ome"]["labels"] == ["prior_filled"] and lab["prior_filled/0"].shape == (2, 32, 32)
    for t in range(2):
        assert np.array_equal(lab["prior_filled/0"][t].astype(bool), uu[t]["prior_filled"] > 0.5)
    assert "3 seeds" in res["uncertainty"] and "what the prior decided shows in the seed spread" in res["uncertainty"]
    assert res["prior_filled_fraction"] == pytest.approx(float(np.mean(lab["prior_filled/0"][:].astype(bool))))
