"""Calibrated bounds through the flows: `calibrate` writes a record from references, `reconstruct
--calibration` writes uncertainty/lower, upper (image units, the image's pyramid) and refuses a record of
other settings before writing, a resumed run writes the same bytes, the audit labels what is unresolved.
Tiny random prior, small frames, few steps: the plumbing and the values it must carry, not the quality."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import flows
import storage
from conftest import BLUR, SIGMA_DATA, smooth_truth, tiny_prior
from ddiff.audit import FEATURES, ScaleRule

ALPHA, DELTA = 0.3, 0.3  # a small calibration set can certify these (min_calibration_frames)


def _refs(folder, n=12, hw=24, channels=1, nan=False):
    x = (smooth_truth(n, hw, hw, seed=5) + 1) / 2
    if channels > 1:
        x = np.repeat(x, channels, 1)
    if nan:
        x[3, 0, 2, 2] = np.nan
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "refs.npy", x.astype(np.float32))
    store = folder / "refs.zarr"
    flows.ingest_stack(flows.IngestParams(source=str(folder / "refs.npy"), store=str(store), axes="tcyx",
                                          intensity=[0, 1], nonfinite="mask" if nan else "refuse"), artifacts=False)
    return store


def _cal_params(refs, record, prior, **kw):
    return flows.CalibrateParams(references=str(refs), record=str(record), alpha=ALPHA, delta=DELTA, operator=BLUR,
                                 noise={"kind": "gaussian", "sigma": SIGMA_DATA}, prior=str(prior),
                                 solver={"name": "ddiff", "steps": 3, "seeds": 2}, tile=24, overlap=4, seed=1,
                                 execution={"batch_size": 4, "torch_threads": 1}, **kw)


@pytest.fixture(scope="module")
def record(flows_env):
    d = flows_env["dir"] / "cal"
    refs = _refs(d)
    res = flows.calibrate_bounds_flow(_cal_params(refs, d / "rec.json", flows_env["prior"]))
    return d / "rec.json", res


def _run(flows_env, out, calibration, **kw):
    args = {"operator": BLUR, "noise": {"kind": "gaussian", "sigma": SIGMA_DATA}, "tile": 24, "overlap": 4, "seed": 3,
            **kw, "solver": {"name": "ddiff", "steps": 3, **kw.get("solver", {})}}
    return flows.ReconstructParams(input_store=str(flows_env["input"]), output_store=str(out), prior=str(flows_env["prior"]),
                                   execution={"batch_size": 4, "torch_threads": 1}, artifacts=False,
                                   calibration=str(calibration), **args)


def test_record_holds_the_settings_and_the_guarantee(record):
    path, res = record
    rec = json.loads(path.read_text())
    assert rec["format"] == "ddiff-bounds/1" and rec["alpha"] == ALPHA and rec["delta"] == DELTA
    assert rec["seeds"] == 2 and rec["steps"] == 3 and rec["solver"] == "ddiff" and rec["operator"] == BLUR
    assert rec["frames"] == 12 and rec["pixels"] == 12 * 24 * 24 and rec["n_fit"] + rec["n_lambda"] == 12
    assert len(rec["prior_sha256"]) == 64 and rec["noise"]["sigma_model"] == pytest.approx(2 * SIGMA_DATA)
    assert rec["ucb"] < ALPHA and rec["lambda"] == res["lambda"] > 0 and "exchangeable" in rec["guarantee"]
    assert sum(rec["rule"]["weights"]) == pytest.approx(1.0)


def test_reconstruct_writes_bounds_with_the_pyramid_and_resumes_to_the_same_bytes(flows_env, record, tmp_path):
    path, _ = record
    rec = json.loads(path.read_text())
    p = _run(flows_env, tmp_path / "b.zarr", path)
    flows.reconstruct_stack(p)
    out = storage.open_output(p.output_store)
    assert out.manifest["config"]["seeds"] == 2 and storage.is_bounded(out.manifest)  # --calibration implies K
    g = zarr.open_group(out.path, mode="r")
    assert out.levels >= 2 and all(f"uncertainty/{b}/{lv}" in g for b in ("lower", "upper") for lv in range(out.levels))
    rule, k = ScaleRule.from_dict(rec["rule"]), abs(out.intensity.scale)
    for t in range(out.n_frames):
        lo, hi = storage.read_bounds(out, t)
        x = out.recon()[t]
        u = storage.read_uncertainty(out, t)
        assert np.all(lo <= x + 1e-6) and np.all(x <= hi + 1e-6) and np.all(hi > lo)
        # the half-width is λ·s of the record's rule applied to the stored features (image units)
        feats = np.stack([u[m] for m in FEATURES]) * k
        np.testing.assert_allclose(u["halfwidth"], rec["lambda"] * rule.scale(feats) / k, rtol=2e-3, atol=1e-6)
        np.testing.assert_allclose(hi - lo, 2 * u["halfwidth"][None], rtol=1e-4, atol=1e-5)
        lo1, hi1 = storage.read_bounds(out, t, level=1)  # the pyramid: block means
        np.testing.assert_allclose(lo1[0, 0, 0], lo[0, :2, :2].mean(), rtol=1e-5)
    q = p.model_copy(update={"output_store": str(tmp_path / "r.zarr"), "fail_after_tiles": 1})
    with pytest.raises(Exception, match="interrupted deliberately"):
        flows.reconstruct_stack(q)
    flows.reconstruct_stack(q.model_copy(update={"fail_after_tiles": None}))
    r = storage.open_output(q.output_store)
    for t in range(out.n_frames):
        assert all(np.array_equal(a, b) for a, b in zip(storage.read_bounds(out, t), storage.read_bounds(r, t)))
    res = flows.audit_reconstruction(flows.AuditParams(output_store=p.output_store, window=8, artifacts=False,
                                                       max_width=0.05))
    lab = zarr.open_group(out.path, mode="r")["labels"]
    assert "unresolved" in lab.attrs["ome"]["labels"]
    for t in range(out.n_frames):
        width = 2 * storage.read_uncertainty(out, t)["halfwidth"]
        assert np.array_equal(lab["unresolved/0"][t].astype(bool), width > 0.05)
        row = res["bounds"]["frames"][t]
        assert row["mean_width"] == pytest.approx(float(width.mean()), rel=1e-5)
        assert row["unresolved_fraction"] == pytest.approx(float((width > 0.05).mean()))
    assert "marginal over pixels and frames" in res["uncertainty"] and "exchangeable" in res["uncertainty"]
    from pathlib import Path

    assert (Path(res["report"]).parent / "bounds_width_0.png").is_file()  # the width picture of the artifact


@pytest.mark.parametrize("change, match", [
    ({"operator": {"name": "gaussian_blur", "params": {"kernel_size": 7, "std": 1.5}}}, "calibrated with operator"),
    ({"solver": {"steps": 4}}, "calibrated with hyperparameters"),
    ({"solver": {"seeds": 3}}, "calibrated with 2 seeds"),
    ({"noise": {"kind": "gaussian", "sigma": 2 * SIGMA_DATA}}, "noise σ"),
])
def test_a_record_of_other_settings_is_refused_before_anything_is_written(flows_env, record, tmp_path, change, match):
    p = _run(flows_env, tmp_path / "x.zarr", record[0], **change)
    with pytest.raises(ValueError, match=match):
        flows.reconstruct_stack(p)
    assert not (tmp_path / "x.zarr").exists()


def test_a_record_of_another_prior_is_refused(flows_env, record, tmp_path):
    other = tiny_prior(tmp_path / "other.safetensors", seed=1)
    p = _run(flows_env, tmp_path / "x.zarr", record[0]).model_copy(update={"prior": str(other)})
    with pytest.raises(ValueError, match="another prior"):
        flows.reconstruct_stack(p)
    assert not (tmp_path / "x.zarr").exists()


def test_calibrate_refuses_bad_references_in_one_line_writing_nothing(flows_env, tmp_path):
    from flows.calibrate import check_calibrate

    prior = flows_env["prior"]
    few = _refs(tmp_path / "few", n=5)
    with pytest.raises(ValueError, match=r"has 5 reference frames; alpha 0\.3 at delta 0\.3 .* needs at least \d+"):
        check_calibrate(_cal_params(few, tmp_path / "a.json", prior))
    nan = _refs(tmp_path / "nan", nan=True)
    with pytest.raises(ValueError, match="reference frame 3 has 1 NaN/Inf"):
        check_calibrate(_cal_params(nan, tmp_path / "b.json", prior))
    rgb = _refs(tmp_path / "rgb", channels=3)
    with pytest.raises(ValueError, match="1-channel images but the references have 3"):
        check_calibrate(_cal_params(rgb, tmp_path / "c.json", prior))
    meas = _refs(tmp_path / "meas", n=11)
    with pytest.raises(ValueError, match="has 11 frames but"):
        check_calibrate(_cal_params(_refs(tmp_path / "ok"), tmp_path / "d.json", prior, measurements=str(meas)))
    assert not any((tmp_path / f"{c}.json").exists() or (tmp_path / f"{c}.json.work").exists() for c in "abcd")


def test_paired_kspace_calibration_and_whole_frame_bounds(flows_env, tmp_path):
    """References paired with a store of their (simulated, here) k-space: the whole-frame path writes the
    bounds with the frame, and they hold the seed mean."""
    import operators
    import torch
    from operators.fourier import fft2c

    n, sigma = 12, 0.02
    x = (smooth_truth(n, 16, 16, seed=9) + 1) / 2
    np.save(tmp_path / "refs.npy", x)
    refs = tmp_path / "refs.zarr"
    flows.ingest_stack(flows.IngestParams(source=str(tmp_path / "refs.npy"), store=str(refs), axes="tcyx",
                                          intensity=[0, 1]), artifacts=False)
    mask = operators.get_operator("mri_cartesian", acceleration=2, image_size=16, seed=1).mask().numpy().astype(bool)
    g = np.random.default_rng(2)
    k = fft2c(torch.from_numpy(x).to(torch.complex64)).numpy()
    k = ((k + sigma * (g.standard_normal(k.shape) + 1j * g.standard_normal(k.shape))) * mask).astype(np.complex64)
    np.save(tmp_path / "k.npy", k)
    meas = tmp_path / "k.zarr"
    flows.ingest_stack(flows.IngestParams(source=str(tmp_path / "k.npy"), store=str(meas), domain="kspace",
                                          intensity=[0, 1]), artifacts=False)
    solver = {"name": "ddiff", "steps": 3, "seeds": 2}
    res = flows.calibrate_bounds_flow(flows.CalibrateParams(
        references=str(refs), record=str(tmp_path / "k.json"), measurements=str(meas), alpha=ALPHA, delta=DELTA,
        noise={"sigma": sigma}, prior=str(flows_env["prior"]), solver=solver, seed=1,
        execution={"batch_size": 4, "torch_threads": 1}))
    rec = json.loads((tmp_path / "k.json").read_text())
    assert rec["measurements"].endswith("k.zarr") and rec["operator"]["name"] == "mri_cartesian" and res["ucb"] < ALPHA
    p = flows.ReconstructParams(input_store=str(meas), output_store=str(tmp_path / "kb.zarr"), noise={"sigma": sigma},
                                prior=str(flows_env["prior"]), solver={"steps": 3}, seed=4, artifacts=False,
                                execution={"batch_size": 4, "torch_threads": 1}, calibration=str(tmp_path / "k.json"))
    flows.reconstruct_stack(p)
    out = storage.open_output(p.output_store)
    for t in range(n):
        lo, hi = storage.read_bounds(out, t)
        xr = out.recon()[t]
        assert lo.shape == xr.shape == (1, 16, 16) and np.all(lo <= xr + 1e-6) and np.all(xr <= hi + 1e-6)
        np.testing.assert_allclose(hi - lo, 2 * storage.read_uncertainty(out, t)["halfwidth"][None], rtol=1e-4, atol=1e-5)


def test_cli_reconstruct_with_calibration_and_audit_max_width(flows_env, record, tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "cli.zarr"
    args = ["--prior", str(flows_env["prior"]), "--operator", "gaussian_blur", "--op-param", "kernel_size=7",
            "--op-param", "std=1.0", "--sigma", str(SIGMA_DATA), "--steps", "3", "--tile", "24", "--overlap", "4",
            "--seed", "3", "--batch-size", "4", "--threads", "1", "--no-progress"]
    assert main(["reconstruct", str(flows_env["input"]), str(out), *args, "--calibration", str(record[0])]) == 0
    assert main(["audit", str(out), "--window", "8", "--max-width", "0.04", "--no-progress"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "wider than --max-width 0.04" in text and "outside [lower, upper] is ≤ 0.3" in text
    o = storage.open_output(out)
    lab = zarr.open_group(out, mode="r")["labels/unresolved/0"]
    assert np.array_equal(lab[0].astype(bool), 2 * storage.read_uncertainty(o, 0)["halfwidth"] > 0.04)
    capsys.readouterr()
    assert main(["reconstruct", str(flows_env["input"]), str(tmp_path / "x.zarr"), *args, "--seeds", "3",
                 "--calibration", str(record[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibrated with 2 seeds" in err[0] and not (tmp_path / "x.zarr").exists()


def test_one_seed_calibration_gives_bounds_at_the_cost_of_one_run(flows_env, tmp_path):
    """K = 1: no seed spread (its weight is 0), the operator's and the image's features carry s."""
    refs = _refs(tmp_path / "r1")
    p = _cal_params(refs, tmp_path / "k1.json", flows_env["prior"]).model_copy(
        update={"solver": flows.SolverSpec(name="ddiff", steps=3, seeds=1)})
    flows.calibrate_bounds_flow(p)
    rec = json.loads((tmp_path / "k1.json").read_text())
    assert rec["seeds"] == 1 and rec["rule"]["weights"][1] == 0.0 and rec["ucb"] < ALPHA
    q = _run(flows_env, tmp_path / "one.zarr", tmp_path / "k1.json")
    flows.reconstruct_stack(q)
    out = storage.open_output(q.output_store)
    assert "seeds" not in out.manifest["config"] and storage.is_bounded(out.manifest)
    u = storage.read_uncertainty(out, 0)
    assert np.all(u["spread"] == 0) and np.all(np.isfinite(u["halfwidth"])) and np.all(u["halfwidth"] > 0)
    lo, hi = storage.read_bounds(out, 0)
    assert np.all(lo <= out.recon()[0] + 1e-6) and np.all(out.recon()[0] <= hi + 1e-6)
    res = flows.audit_reconstruction(flows.AuditParams(output_store=q.output_store, window=8, artifacts=False))
    assert res["prior_filled_fraction"] is None and "one seed" in res["uncertainty"] and res["bounds"]["frames"]


def test_the_shipped_demo_record_matches_the_demo_settings():
    """`ddiff demo --bounds` uses it: a change of DDiff's defaults, the demo's blur or noise, or the default
    prior must come with a recalibrated record (benchmarks/calibrate_demo.py) — this test says when."""
    from flows.calibration import load_record
    from flows.demo import DEMO_OPERATOR
    from flows.tiles import prior_identity

    rec = load_record("demo")
    assert rec["settings"]["operator"] == DEMO_OPERATOR and rec["settings"]["noise_sigma_model"] == pytest.approx(0.05)
    assert rec["settings"]["hyperparameters"] == flows.SolverSpec().resolve(DEMO_OPERATOR["name"])
    assert rec["settings"]["solver"] == "ddiff" and rec["settings"]["dtype"] == "fp32"
    assert rec["prior_sha256"] == prior_identity("default")[1]
    assert rec["alpha"] == 0.1 and rec["delta"] == 0.1 and rec["ucb"] < 0.1 and rec["measurements"] == "simulated"
