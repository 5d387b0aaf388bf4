"""reconstruct_stack end to end under Prefect's test harness: outputs, exact per-tile wiring,
resume after an injected interruption, refusal of concurrent runs and of changed configs,
the same result on a real Dask LocalCluster, and the audit flow."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import BLUR, SIGMA, SIGMA_DATA

import flows
import storage
from flows import tiles as T

STEPS = 20


def params(env, out, **kw):
    base = dict(input_store=str(env["input"]), output_store=str(out), prior=str(env["prior"]), operator=BLUR,
                noise={"kind": "gaussian", "sigma": SIGMA_DATA}, solver={"name": "ddiff", "steps": STEPS}, tile=24,
                overlap=4, seed=3, execution={"batch_size": 3, "torch_threads": 1}, artifacts=True)
    base.update(kw)
    return flows.ReconstructParams(**base)


def recon(path) -> np.ndarray:
    return storage.open_output(path).recon()[:]


def staging(path) -> np.ndarray:
    return np.asarray(storage.open_output(path).group()["staging/contrib"][:])


@pytest.fixture(scope="module")
def straight(flows_env):
    """One uninterrupted local run (the reference for the other tests)."""
    out = flows_env["dir"] / "straight.zarr"
    res = flows.reconstruct_stack(params(flows_env, out))
    return out, res


def test_end_to_end_outputs_and_diagnostics(flows_env, straight):
    out_path, res = straight
    out = storage.open_output(out_path)
    assert res["complete"] and out.complete and res["solved"] == 8 and res["skipped"] == 0
    assert res["n_tiles"] == 2 * out.plan.n_tiles == 8
    x = recon(out_path)
    assert x.shape == (2, 1, 48, 40) and np.isfinite(x).all()
    ds = out.open_diagnostics()
    chi = ds["chi2_nu"].values
    assert np.isfinite(chi).all() and (ds["nfe"].values == STEPS).all()
    assert np.isfinite(ds["residual"].values).all()
    # diagnostics agree with the assembled reconstruction: the stored residual equals y - A(recon) wherever
    # neither blending (overlap) nor a boundary (halo) is within reach. (The tiny prior is random and flat,
    # so image quality is not judged here; the demo does that with the default prior.)
    import operators

    A = operators.get_operator(BLUR["name"], **BLUR["params"])
    y = flows_env["y_model"]
    # the stored residual is in the input's data units: the model-space residual / the intensity scale
    r_frame = (y - A(torch.from_numpy(2 * x - 1))).numpy() / out.intensity.scale
    r_diag = ds["residual"].values
    assert ds["residual"].attrs["units"].startswith("data units")
    m = out.plan.overlap + A.halo
    checked = 0
    for tile in out.plan:
        y0, y1, x0, x1 = tile.core
        sy, sx = slice(max(y0, 0) + m, min(y1, 48) - m), slice(max(x0, 0) + m, min(x1, 40) - m)
        np.testing.assert_allclose(r_diag[:, :, sy, sx], r_frame[:, :, sy, sx], atol=1e-5)
        checked += r_diag[:, :, sy, sx].size
    assert checked > 0
    assert np.all(chi > 0)
    # assembly is exact: inside a core, away from the blend ramps, recon (model space) = that tile's own solution
    st = staging(out_path)
    for tile in out.plan:
        (y0, y1, x0, x1), (by0, _, bx0, _) = tile.core, tile.blend
        o = out.plan.overlap
        sy, sx = slice(y0 + o, y1 - o), slice(x0 + o, x1 - o)
        own = st[:, tile.index, :, sy.start - by0:sy.stop - by0, sx.start - bx0:sx.stop - bx0]
        np.testing.assert_allclose(2 * x[:, :, sy, sx] - 1, own, atol=2e-6)
    # recon stores physical units: model = 2p - 1 (intensity range (0, 1) at ingest)
    assert out.intensity.to_dict()["low"] == 0.0


def test_tile_is_exactly_the_solver_on_that_tile(flows_env, straight):
    """Flow wiring is exact: tile (1, 3) equals DDiff run by hand on storage.read_tile with the tile's seed."""
    import ddiff
    import operators
    from ddiff.priors import load_prior

    out_path, _ = straight
    out = storage.open_output(out_path)
    frame, k = 1, 3
    inp = storage.read_tile(flows_env["input"], frame, k, out.plan)
    y = torch.from_numpy(inp.data)[None]
    assert y.shape[-1] % 2 == 0 and y.shape[-2] % 2 == 0  # no divisibility padding needed for this tile
    prior = load_prior(str(flows_env["prior"]))
    solver = ddiff.DDiff(prior, **ddiff.DDiff.auto(STEPS))  # the flows' default settings
    A = operators.get_operator(BLUR["name"], **BLUR["params"])
    g = torch.Generator().manual_seed(T.tile_seed(3, frame, k))
    x = solver.solve(y, A, operators.GaussianNoise(SIGMA), generator=[g]).x[0].numpy()
    iy, ix = inp.tile.inner
    bh, bw = inp.tile.blend_shape
    np.testing.assert_array_equal(staging(out_path)[frame, k, :, :bh, :bw], x[:, iy, ix])


def test_interrupted_run_resumes_to_identical_output(flows_env, straight):
    out = flows_env["dir"] / "resume.zarr"
    with pytest.raises(T.InjectedFailure):
        flows.reconstruct_stack(params(flows_env, out, fail_after_tiles=4))
    o = storage.open_output(out)
    assert o.ledger.count("solved") == 4 and not o.complete
    assert storage.RunLock.holder(out) is None  # the failed run released its lock
    res = flows.reconstruct_stack(params(flows_env, out))
    assert res["skipped"] == 4 and res["solved"] == 4 and storage.open_output(out).complete
    np.testing.assert_array_equal(recon(out), recon(straight[0]))
    np.testing.assert_array_equal(staging(out), staging(straight[0]))
    # a finished run re-run: nothing to do, nothing changes
    again = flows.reconstruct_stack(params(flows_env, out, artifacts=False))
    assert again["solved"] == 0 and again["skipped"] == 8


def test_concurrent_run_and_changed_config_are_refused(flows_env, straight):
    out = flows_env["dir"] / "locked.zarr"
    p = params(flows_env, out, artifacts=False)
    with pytest.raises(T.InjectedFailure):  # a first run creates the output and solves 2 tiles
        flows.reconstruct_stack(params(flows_env, out, artifacts=False, fail_after_tiles=2))
    with storage.RunLock(out):  # ... and another live run now holds the output's lock
        with pytest.raises(storage.LockError, match="locked by run"):
            flows.reconstruct_stack(p)
    assert storage.open_output(out).ledger.count("solved") == 2  # the refused run wrote nothing
    # a different configuration on an existing output: refused unless overwrite
    with pytest.raises(storage.ConfigMismatchError, match="different configuration"):
        flows.reconstruct_stack(params(flows_env, straight[0], seed=4, artifacts=False))
    assert storage.open_output(straight[0]).complete


def test_same_output_on_dask_local_cluster(flows_env, straight):
    """A run begun on local threads (3 tiles) and resumed on a real 2-worker dask.distributed.LocalCluster
    (through DaskTaskRunner(address=...), i.e. --dask-address) gives bit-identical output to the
    uninterrupted local run: a resumed mix of backends. (execution.dask_workers=N starts such a
    cluster inside the flow instead; same task runner class.)"""
    import distributed

    out = flows_env["dir"] / "dask.zarr"
    with pytest.raises(T.InjectedFailure):
        flows.reconstruct_stack(params(flows_env, out, artifacts=False, fail_after_tiles=3))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        res = flows.reconstruct_stack(params(flows_env, out, artifacts=False, execution={
            "batch_size": 3, "torch_threads": 1, "dask_address": cl.scheduler_address}))
    assert res["complete"] and res["skipped"] == 3 and res["solved"] == 5
    assert len(res["worker_pids"]) >= 1 and os.getpid() not in res["worker_pids"]  # really ran on the workers
    np.testing.assert_array_equal(recon(out), recon(straight[0]))
    np.testing.assert_array_equal(staging(out), staging(straight[0]))


def test_audit_flow_writes_dataset_and_report(flows_env, straight):
    import xarray as xr
    from zarr.storage import LocalStore

    res = flows.audit_reconstruction(flows.AuditParams(output_store=str(straight[0]), window=8))
    assert len(res["chi2_nu"]) == 2 and all(np.isfinite(res["chi2_nu"]))
    assert res["prior_filled_fraction"] is None and "not computed" in res["uncertainty"] and "--seeds" in res["uncertainty"]
    ds = xr.open_zarr(LocalStore(straight[0], read_only=True), group="audit", consolidated=False, zarr_format=3)
    assert ds["chi2_nu"].shape == (2,) and ds["tile_flagged"].shape == (2, 4) and ds["flag_map"].shape == (2, 48, 40)
    # the flags are also the OME-NGFF label image over the reconstruction (viewers overlay it)
    import zarr
    labels = zarr.open_group(straight[0], mode="r")["labels"]
    assert labels.attrs["ome"]["labels"] == ["audit_flags"]
    assert np.array_equal(labels["audit_flags/0"][:].astype(bool), ds["flag_map"].values)
    report = res["report"]
    text = open(report, encoding="utf-8").read()
    assert "Per sample" in text and "frame 1" in text


def test_mask_operator_tiles_follow_the_frame_mask():
    """Position-dependent operators: a tile's mask is the frame mask on its (reflect-padded) read window."""
    import operators
    from storage.tiling import TilePlan

    op = operators.get_operator("inpainting_random", prob=0.5, seed=1, image_size=(48, 40))
    plan = TilePlan((48, 40), tile=24, halo=2, overlap=4)
    frame_mask = op.mask.numpy()
    for tile in plan:
        top = T._tile_op(op, plan, tile, 1, (0, 0))
        (ys, xs), pads = plan.read_window(tile)
        np.testing.assert_array_equal(top.mask.numpy(), plan.pad(frame_mask[ys, xs], pads))
        if tile.read[0] >= 0 and tile.read[2] >= 0 and tile.read[1] <= 48 and tile.read[3] <= 40:
            y0, y1, x0, x1 = tile.read
            np.testing.assert_array_equal(top.mask.numpy(), frame_mask[y0:y1, x0:x1])


@pytest.mark.parametrize("operator, scale", [({"name": "inpainting_random", "params": {"prob": 0.5, "seed": 1}}, 1),
                                             ({"name": "super_resolution", "params": {"scale": 2}}, 2)])
def test_other_operator_families_run_end_to_end(flows_env, operator, scale):
    out = flows_env["dir"] / f"{operator['name']}.zarr"
    res = flows.reconstruct_stack(params(flows_env, out, operator=operator, solver={"name": "ddiff", "steps": 3},
                                         artifacts=False))
    assert res["complete"] and res["solved"] == res["n_tiles"]
    x = recon(out)
    assert x.shape == (2, 1, 48 * scale, 40 * scale) and np.isfinite(x).all()
    assert storage.open_output(out).manifest["scale"] == scale


GUARD_SCRIPT = """
import distributed

def worker_storage():
    import flows, storage  # a worker unpickling one of our tasks imports flows first
    return getattr(storage, "__file__", None)

if __name__ == "__main__":
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \\
            distributed.Client(cl) as client:
        print(list(client.run(worker_storage).values())[0])
"""


def test_dask_worker_imports_the_real_storage_package(tmp_path):
    """A Dask worker's scratch dir (on its sys.path) holds a spill folder named storage/; from a
    directory outside the checkout, `import storage` after `import flows` must be the real package."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "guard.py"
    script.write_text(GUARD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == str(Path(storage.__file__).resolve())


def test_gpu_guard_is_strict_and_holds_one_slot(prefect_harness):
    """CUDA sections hold a slot of the named global concurrency limit; a missing limit is an error
    (strict), never a silent free-for-all. CPU sections take no slot."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

    with pytest.raises(ConcurrencySlotAcquisitionError):
        with T._device_guard("cuda", "ddiff-test-missing-limit"):
            pass
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="ddiff-test-gpu", limit=1))
        with T._device_guard("cuda:0", "ddiff-test-gpu"):
            assert client.read_global_concurrency_limit_by_name("ddiff-test-gpu").active_slots == 1
        assert client.read_global_concurrency_limit_by_name("ddiff-test-gpu").active_slots == 0
        with T._device_guard("cpu", "ddiff-test-gpu"):
            assert client.read_global_concurrency_limit_by_name("ddiff-test-gpu").active_slots == 0


def test_injected_failure_is_not_retried_but_real_errors_are(prefect_harness):
    from prefect import flow, task

    from flows.batches import retryable

    calls = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retryable, persist_result=False)
    def fails(kind):
        calls.append(kind)
        raise (T.InjectedFailure if kind == "injected" else OSError)("boom")

    @flow(persist_result=False)
    def run(kind):
        return fails(kind)

    with pytest.raises(T.InjectedFailure):
        run("injected")
    assert calls == ["injected"]
    calls.clear()
    with pytest.raises(OSError):
        run("io")
    assert calls == ["io"] * 3


def test_bad_solver_keywords_fail_before_the_output_exists(flows_env):
    out = flows_env["dir"] / "bad_keywords.zarr"
    with pytest.raises(ValueError, match="gamma0 only apply to x_update='gradient'"):
        flows.reconstruct_stack(params(flows_env, out, solver={"name": "ddiff", "steps": 2,
                                                               "hyperparameters": {"gamma0": 2.0}}))
    assert not out.exists()  # nothing written: the corrected command just runs
