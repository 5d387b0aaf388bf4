"""The benchmark: the protocol's pieces (flows.bench.protocol), its resumable output folder
(flows.bench.store) and the whole ``smoke`` preset under Prefect's test harness, with the
embedded default prior — every file of the output layout, resume, refusal, determinism."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from ddiff import DDiff
from ddiff.priors import GaussianPrior
from ddiff.priors.exact import se_covariance
from flows.bench import protocol as B
from operators import GaussianNoise, get_operator


# ---------------------------------------------------------------- protocol (pure torch) -----
@pytest.fixture(scope="module")
def gauss_prior():
    return GaussianPrior(torch.zeros(1, 12, 12), se_covariance((1, 12, 12), std=0.3, length=2.0))  # SSIM needs ≥ 11 px


@pytest.mark.parametrize("name", B.DIFFUSION_SOLVERS)
def test_every_solver_spends_exactly_the_nfe_budget(name, gauss_prior):
    x = gauss_prior.sample(2, torch.Generator().manual_seed(0))
    A = get_operator("gaussian_blur", kernel_size=5, std=1.0)
    noise = GaussianNoise(0.05)
    y = noise.sample(A(x), torch.Generator().manual_seed(1))
    for nfe in (10, 20):
        solver = B.build_solver(name, gauss_prior, B.solver_kwargs(name, "gaussian_blur", nfe))
        res = B.solve_best_of(solver, y, A, noise, x)
        assert res.nfe == nfe, (name, nfe, res.nfe)
        assert res.x.shape == x.shape and torch.isfinite(res.x).all()


def test_solver_kwargs_follow_the_paper_and_references():
    k = B.solver_kwargs("ddiff", "motion_blur", 50)
    assert (k["gamma0"], k["t0"], k["noising"], k["steps"]) == (2.9, 80, "ancestral", 50)
    assert B.solver_kwargs("ddiff", "motion_blur", 50, dataset="imagenet")["gamma0"] == 1.5
    # one meaning per name: ddiff_hqs is DDiffHQS with the paper's step policy, as in the CLI and flows
    hqs = B.solver_kwargs("ddiff_hqs", "super_resolution", 50)
    assert hqs == DDiff.paper("super_resolution") | dict(steps=50)
    ref = B.solver_kwargs("ddiff_hqs", "super_resolution", 50, overrides=B.DDIFF_HQS_REFERENCE)
    assert (ref["a"], ref["b"], ref["gamma0"], ref["noising"]) == (1.0, 1.0, 90.0, "fresh")
    assert B.solver_kwargs("dps", "inpainting_box", 50)["zeta"] == 0.5
    assert B.solver_kwargs("dps", "hdr", 50)["zeta"] == B.BASELINE_FALLBACK["dps"]["zeta"]
    assert B.solver_kwargs("daps", "motion_blur", 1000) == dict(
        annealing_steps=200, ode_steps=5, mcmc_steps=100, lr=5e-5, lr_min_ratio=0.01, tau=0.01)
    assert B.solver_kwargs("ddiff", "hdr", 50, overrides={"gamma0": 7.0})["gamma0"] == 7.0
    with pytest.raises(ValueError, match="unknown solver"):
        B.solver_kwargs("sgld", "hdr", 50)
    with pytest.raises(ValueError, match="unknown task"):
        B.solver_kwargs("ddiff", "denoising", 50)
    with pytest.raises(ValueError, match="nfe"):
        B.solver_kwargs("ddiff", "hdr", 0)


def test_box_keeps_its_area_fraction_and_blur_its_pixels():
    p = B.task_operator_params("inpainting_box", 64)
    A = get_operator("inpainting_box", **p)
    hidden = 1 - A(torch.ones(1, 1, 64, 64)).mean().item()
    assert hidden == pytest.approx(0.25)  # 128² of 256², as in the paper
    assert B.task_operator_params("gaussian_blur", 64) == {}  # the paper's 61×61, std 3 px


def test_best_of_runs_picks_the_highest_psnr_per_image(gauss_prior):
    x = gauss_prior.sample(3, torch.Generator().manual_seed(0))
    A = get_operator("phase_retrieval")
    noise = GaussianNoise(0.05)
    y = noise.sample(A(x), torch.Generator().manual_seed(1))
    solver = B.build_solver("ddiff", gauss_prior, B.solver_kwargs("ddiff", "phase_retrieval", 10))
    best = B.solve_best_of(solver, y, A, noise, x, runs=4, seed=0)
    assert torch.equal(best.x, B.solve_best_of(solver, y, A, noise, x, runs=4, seed=0).x)  # seeded
    per_run = []
    for r in range(4):  # rebuild each run with its generators and check the choice
        gens = [torch.Generator().manual_seed(B.run_seed(0, r, i)) for i in range(3)]
        per_run.append(B.image_metrics(solver.solve(y, A, noise, generator=gens, x_shape=x.shape).x, x, y, A, noise)["psnr"])
    per_run = torch.stack(per_run)
    assert torch.equal(best.run, per_run.argmax(0))
    assert torch.allclose(best.metrics["psnr"], per_run.max(0).values)
    assert best.nfe == 10 and best.runs == 4


def test_image_metrics_data_fit_is_ideal_at_the_truth():
    x = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    A = get_operator("gaussian_blur", kernel_size=5, std=1.0)
    noise = GaussianNoise(0.1)
    y = noise.sample(A(x), torch.Generator().manual_seed(1))
    m = B.image_metrics(x, x, y, A, noise)
    assert torch.isinf(m["psnr"]).all() or (m["psnr"] > 90).all()
    assert m["chi2_nu"].mean().item() == pytest.approx(1.0, abs=0.02)
    assert m["residual"].mean().item() < 0.1 * 0.1**2


# ---------------------------------------------------------------- the output folder ---------
def test_store_refuses_another_configuration_and_writes_only_under_its_lock(tmp_path):
    from flows.bench.store import BenchmarkStore, cell_key, put_cell
    from storage import ConfigMismatchError, LockError

    rec = [dict(task="hdr", solver="tv", sigma_y=0.05, nfe_budget=0, image="a", image_index=0, run=0, runs=1,
                psnr=20.0, ssim=0.5, lpips=float("nan"), chi2_nu=1.0, residual=0.0, nfe=0, seconds=0.1,
                floor_seconds=0.0, setting="{}")]
    with BenchmarkStore(tmp_path / "b", {"n": 1}) as s:
        s.put(cell_key("hdr", "tv", 0.05, 0), rec, np.zeros((1, 4, 4)))
        assert s.has("hdr__tv__s0.05__n0")
    with pytest.raises(LockError):  # nobody holds the lock now
        put_cell(tmp_path / "b", "someone", "x", rec)
    with pytest.raises(ConfigMismatchError, match="another configuration"):
        BenchmarkStore(tmp_path / "b", {"n": 2})
    with BenchmarkStore(tmp_path / "b", {"n": 1}) as s:  # same configuration: resumes
        (got,) = s.records()
        assert np.isnan(got.pop("lpips")) and got == {k: v for k, v in rec[0].items() if k != "lpips"}
        assert s.preview("hdr__tv__s0.05__n0").shape == (1, 4, 4)
    with BenchmarkStore(tmp_path / "b", {"n": 2}, overwrite=True) as s:
        assert s.records() == []
    with pytest.raises(ValueError, match="letters"):
        cell_key("../etc", "tv", 0.05, 0)


def test_user_images_are_cropped_scaled_and_checked(tmp_path):
    from flows.bench.store import load_eval_images

    imgs = (np.arange(3 * 40 * 50) % 256).astype(np.uint8).reshape(3, 40, 50)
    np.save(tmp_path / "imgs.npy", imgs)
    x, names = load_eval_images(tmp_path / "imgs.npy", 32, 2, channels=3)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], imgs[0, 4:36, 9:41] / 255.0 * 2 - 1, atol=1e-6)  # centre crop
    assert len(names) == 2
    with pytest.raises(ValueError, match="holds 3 images"):
        load_eval_images(tmp_path / "imgs.npy", 32, 5, channels=1)
    with pytest.raises(ValueError, match="smaller than"):
        load_eval_images(tmp_path / "imgs.npy", 64, 2, channels=1)
    np.save(tmp_path / "bad.npy", np.full((2, 40, 40), 3.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_eval_images(tmp_path / "bad.npy", 32, 2, channels=1)


def test_params_name_the_problem():
    from pydantic import ValidationError

    from flows.params import BenchmarkParams

    with pytest.raises(ValidationError, match="unknown solver"):
        BenchmarkParams(preset="smoke", solvers=["ddiff", "sgld"])
    with pytest.raises(ValidationError, match="unknown task"):
        BenchmarkParams(preset="smoke", tasks=["denoise"])
    with pytest.raises(ValidationError, match="images"):
        BenchmarkParams(preset="paper")
    with pytest.raises(ValidationError, match="device"):
        BenchmarkParams(preset="smoke", device="gpu0")
    r = BenchmarkParams(preset="cpu", nfe=20).resolved()
    assert r["nfe"] == 20 and r["size"] == 64 and r["images"] is None


# ---------------------------------------------------------------- the smoke preset ----------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory, prefect_harness):
    import flows

    out = tmp_path_factory.mktemp("bench") / "smoke"
    r = flows.benchmark(flows.BenchmarkParams(preset="smoke", out=str(out)), artifacts=False)
    return out, r


def test_smoke_preset_writes_every_file_of_the_output_layout(smoke):
    from flows.bench import OUTPUT_FILES
    from flows.bench.store import RECORD_COLUMNS

    out, r = smoke
    assert sorted(r["files"]) == sorted(OUTPUT_FILES)
    for name in OUTPUT_FILES:
        assert (out / name).exists(), name
    assert list(r["skipped"]) == ["nonlinear_blur"] and "weights" in r["skipped"]["nonlinear_blur"]
    df = pd.read_csv(out / "results.csv")
    assert tuple(df.columns) == RECORD_COLUMNS
    assert len(df) == r["cells"] * 2  # two images per cell
    assert set(df.task) == set(B.TASKS) - {"nonlinear_blur"}
    assert set(df.solver) == set(B.SOLVERS)
    assert np.isfinite(df[["psnr", "ssim", "chi2_nu", "residual", "seconds"]].to_numpy()).all()
    assert (df[df.task == "phase_retrieval"].query("solver != 'tv'").runs == 2).all()
    dif = df[df.solver != "tv"]
    assert (dif.floor_seconds > 0).all() and (df[df.solver == "tv"].nfe == 0).all()
    main = dif[(dif.sigma_y == 0.05) & (dif.nfe_budget == 4) & (dif.solver != "daps")]
    assert (main.nfe == 4).all()  # equal NFE (DAPS: whole annealing steps of ode_steps calls)
    import xarray as xr

    ds = xr.open_zarr(out / "results.zarr", consolidated=False)
    assert set(ds.sizes) == {"task", "solver", "sigma_y", "nfe_budget", "image"}
    assert np.nanmean(ds.psnr.values) == pytest.approx(df.psnr.mean())
    report = (out / "report.md").read_text()
    for needle in ("Table 1", "Table 2", "Timing", "noise_sweep.png", "nfe_sweep.png", "qualitative.png",
                   "skipped `nonlinear_blur`", "Phase retrieval"):
        assert needle in report, needle


def test_rerun_resumes_and_a_lost_cell_is_recomputed_identically(smoke, tmp_path):
    import flows

    out, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / ".ddiff.lock").unlink(missing_ok=True)  # the finished run released it; be sure
    before = pd.read_csv(copy / "results.csv")
    lost = copy / "cells" / "hdr__ddiff__s0.05__n4.json"
    lost.unlink()
    r = flows.benchmark(flows.BenchmarkParams(preset="smoke", out=str(copy)), artifacts=False)
    assert r["ran"] == 1  # only the lost cell
    after = pd.read_csv(copy / "results.csv")
    cols = ["task", "solver", "sigma_y", "nfe_budget", "image", "psnr", "ssim", "chi2_nu", "residual", "nfe"]
    pd.testing.assert_frame_equal(before[cols], after[cols])
    with pytest.raises(ValueError, match="another configuration"):
        flows.benchmark(flows.BenchmarkParams(preset="smoke", out=str(copy), n_images=1), artifacts=False)
    assert json.loads((copy / "config.json").read_text())["config"]["n_images"] == 2  # untouched


def test_cli_names_a_bad_override_in_one_line(tmp_path, capsys):
    from flows.cli import main

    rc = main(["bench", "--preset", "smoke", "--out", str(tmp_path / "b"), "--set", "gamma0=5", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--set gamma0" in err and "ddiff.gamma0" in err and len(err.strip().splitlines()) == 1
    rc = main(["bench", "--preset", "smoke", "--out", str(tmp_path / "b"), "--solvers", "ddiff,sgld", "--no-progress"])
    assert rc == 2 and "unknown solver" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # nothing written on bad input


def test_paper_preset_path_on_the_users_rgb_images_and_checkpoint(tmp_path, prefect_harness):
    """The `paper` preset's path (user images, a user checkpoint, RGB) at toy size: everything the
    GPU job does except its scale."""
    from PIL import Image

    import flows
    from conftest import tiny_prior

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"val{i}.png")
    prior = tiny_prior(tmp_path / "rgb.safetensors", channels=3)
    p = flows.BenchmarkParams(
        preset="paper", images=str(tmp_path / "imgs"), prior=str(prior), out=str(tmp_path / "out"), size=32,
        n_images=2, nfe=2, tasks=["inpainting_box", "phase_retrieval", "nonlinear_blur"], solvers=["ddiff", "tv"],
        noise_sweep=[0.05, 0.1], nfe_sweep=[2], sweep_task="inpainting_box", noise_sweep_solvers=["ddiff"],
        nfe_sweep_solvers=["ddiff"], phase_retrieval_runs=2, tune_images=1, tv_weights=[0.05], tv_iters=5)
    r = flows.benchmark(p, artifacts=False)
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(df.image) == {"val0", "val1"} and set(df.task) == {"inpainting_box", "phase_retrieval"}
    assert "nonlinear_blur" in r["skipped"] and (tmp_path / "out" / "qualitative.png").is_file()
    assert len(df) == 2 * r["cells"] and (df[df.task == "phase_retrieval"].query("solver == 'ddiff'").runs == 2).all()
