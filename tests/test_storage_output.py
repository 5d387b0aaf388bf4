"""Output stores: full runs, crash/rerun identity (exception and SIGKILL), concurrency, safety."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

import storage
import storage.output as so

FRAMES, H, W = 2, 40, 52
CONFIG = {"solver": "ddiff", "prior": "default", "steps": 20}


def fake_solve(data: np.ndarray, tile: storage.Tile, frame: int):
    """Deterministic stand-in for a solver: returns blend-window recon, diagnostics, residual.

    Each tile adds its own smooth offset, so neighbouring tiles disagree in their overlaps and
    the blend really mixes different values."""
    iy, ix = tile.inner
    y = data[:, iy, ix]
    yy, xx = np.meshgrid(np.arange(y.shape[1]), np.arange(y.shape[2]), indexing="ij")
    x = y + 0.05 * np.sin(0.3 * (tile.index + 1) + 0.1 * yy + 0.07 * xx * (frame + 1))
    resid = data - np.pad(x, [(0, 0), (iy.start, data.shape[1] - iy.stop), (ix.start, data.shape[2] - ix.stop)])
    diag = {"chi2_nu": float(np.mean((y - x) ** 2)), "nll": float(np.sum((y - x) ** 2)),
            "residual_norm": float(np.linalg.norm(y - x)), "residual_rms": float(np.sqrt(np.mean((y - x) ** 2))),
            "nfe": 10 * frame + tile.index, "seconds": 0.25}
    return x.astype(np.float32), diag, resid


def run(in_store, out_path, plan, config=CONFIG, run_id=None, scale=1, workers=1):
    """The sequence a flow performs, through descriptors only; skips what the ledger says is done."""
    out = storage.create_output(out_path, in_store, plan, config, prior_sha256="ab" * 32, scale=scale)
    with storage.RunLock(out_path, run_id=run_id) as lock:
        def one(ft):
            frame, k = ft
            inp = storage.read_tile(in_store, frame, k, plan)
            x, diag, resid = fake_solve(inp.data, inp.tile, frame)
            if scale > 1:
                x = np.kron(x, np.ones((1, scale, scale), np.float32))
            storage.write_tile_result(out_path, frame, k, x, diag, resid, run_id=lock.run_id)
        todo = out.ledger.pending("solved")
        if workers > 1:
            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(one, todo))
        else:
            for ft in todo:
                one(ft)
        for frame in range(out.n_frames):
            storage.assemble_frame(out_path, frame, run_id=lock.run_id)
        storage.finalize(out_path, run_id=lock.run_id)
    return storage.open_output(out_path)


def snapshot(out_path):
    g = zarr.open_group(out_path, mode="r")
    ds = storage.open_output(out_path).open_diagnostics().load()
    out = storage.open_output(out_path)
    snap = {f"recon{lv}": out.recon(lv)[:] for lv in range(out.levels)}
    snap["recon"], snap["contrib"] = snap["recon0"], g["staging/contrib"][:]
    snap.update({f"diag/{k}": v.values for k, v in ds.data_vars.items()})
    return snap


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def tree_hash(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    rng = np.random.default_rng(0)
    src = rng.integers(0, 4096, (FRAMES, H, W), dtype=np.uint16)
    np.save(d / "src.npy", src)
    in_store = d / "in.zarr"
    storage.ingest(d / "src.npy", in_store, chunk=16)
    plan = storage.TilePlan((H, W), tile=16, halo=3, overlap=4)
    before = tree_hash(in_store)
    run(in_store, d / "ref.zarr", plan)
    return {"dir": d, "src": src, "in": in_store, "plan": plan, "ref": snapshot(d / "ref.zarr"),
            "in_hash_before": before}


def test_full_run_outputs(env):
    d, plan = env["dir"], env["plan"]
    out = storage.open_output(d / "ref.zarr")
    assert out.complete and out.ledger.count("solved") == FRAMES * plan.n_tiles
    assert tree_hash(env["in"]) == env["in_hash_before"]  # input bytes untouched by the run
    recon = env["ref"]["recon"]
    assert recon.shape == (FRAMES, 1, H, W) and np.isfinite(recon).all()
    # blend of the exact per-tile solutions, mapped back to input units (independent recomputation)
    st = storage.open_stack(env["in"])
    for frame in range(FRAMES):
        acc = np.zeros((1, H, W))
        for t in plan:
            inp = storage.read_tile(st, frame, t, plan)
            x, _, _ = fake_solve(inp.data, t, frame)
            y0, y1, x0, x1 = t.blend
            acc[:, y0:y1, x0:x1] += plan.weights(t) * x
        expect = st.from_model(acc)
        assert np.allclose(recon[frame], expect, rtol=1e-6, atol=1e-3)
        # within 0.05 model units of the input (the fake solver's perturbation), in physical units
        assert np.abs(recon[frame, 0] - env["src"][frame]).max() <= 0.0501 / st.intensity.scale
    ds = out.open_diagnostics()
    assert ds.attrs["solver"] == "ddiff" and ds.attrs["prior"] == "default"
    assert ds.attrs["config_hash"] == out.manifest["config_hash"]
    assert np.array_equal(ds.nfe.values, [[10 * f + k for k in range(plan.n_tiles)] for f in range(FRAMES)])
    assert np.isfinite(ds.residual.values).all() and ds.residual.dims == ("frame", "c", "y", "x")
    assert np.array_equal(ds.core_box.values, [t.core for t in plan])


def test_ome_output_validates(env):
    ome_image = pytest.importorskip("ome_zarr_models.v05.image")
    img = ome_image.Image.from_zarr(zarr.open_group(env["dir"] / "ref.zarr", mode="r"))  # the root is the image
    assert [a.name for a in img.attributes.ome.multiscales[0].axes] == ["t", "y", "x"]


def test_identity_solve_reproduces_input_without_seams(env, tmp_path):
    """With every tile returning its measurement, the blend must give the input back exactly
    (up to float32 rounding): any seam or weight error would show up at tile boundaries."""
    plan = env["plan"]
    out = storage.create_output(tmp_path / "id.zarr", env["in"], plan, {"solver": "identity"})
    with storage.RunLock(out.path) as lock:
        for frame, k in out.ledger.pending():
            inp = storage.read_tile(env["in"], frame, k, plan)
            storage.write_tile_result(out.path, frame, k, inp.data, run_id=lock.run_id)  # read-window shape
        for frame in range(FRAMES):
            storage.assemble_frame(out.path, frame, run_id=lock.run_id)
    recon = out.recon()[:][:, 0]
    tol = 4 * np.finfo(np.float32).eps * 4096  # float32 round trip through model space
    assert np.abs(recon - env["src"]).max() <= tol


@pytest.mark.parametrize("step", ["after_staging", "after_residual", "before_mark", "before_assembled_mark"])
def test_crash_mid_tile_then_rerun_is_identical(env, tmp_path, step):
    out_path = tmp_path / "crash.zarr"
    calls = {"n": 0}

    def boom(where):
        if where == step:
            calls["n"] += 1
            if calls["n"] == 7:
                raise RuntimeError(f"injected crash at {where}")

    so._FAULT_HOOK = boom
    try:
        with pytest.raises(RuntimeError, match="injected crash"):
            run(env["in"], out_path, env["plan"])
    finally:
        so._FAULT_HOOK = None
    out = storage.open_output(out_path)
    led = out.ledger
    if step == "before_assembled_mark":
        assert led.count("solved") == FRAMES * env["plan"].n_tiles and led.count("assembled") == 6
    else:
        # the crashed tile (7th in order) is not marked; exactly the 6 before it are
        assert led.count("solved") == 6 and not led.is_done(0, 6) and all(led.is_done(0, k) for k in range(6))
        # every tile marked done has its full staged data (recorded checksum matches the bytes)
        contrib = out.group()["staging/contrib"]
        for k in range(6):
            bh, bw = env["plan"][k].blend_shape
            data = contrib[0, k, :, :bh, :bw]
            assert hashlib.sha256(data.tobytes()).hexdigest() == led.record(0, k)["recon_sha256"]
    assert not out.complete and storage.RunLock.holder(out_path) is None  # lock released on error
    run(env["in"], out_path, env["plan"])
    assert_same(snapshot(out_path), env["ref"])


KILL_SCRIPT = r"""
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("t", sys.argv[1]); t = importlib.util.module_from_spec(spec)
spec.loader.exec_module(t)
import storage, storage.output as so
from pathlib import Path
n = {"k": 0}
def die(where):
    if where == "after_residual":
        n["k"] += 1
        if n["k"] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
so._FAULT_HOOK = die
plan = storage.TilePlan((t.H, t.W), tile=16, halo=3, overlap=4)
t.run(Path(sys.argv[2]), Path(sys.argv[3]), plan)
"""


def test_sigkill_leaves_stale_lock_and_rerun_recovers(env, tmp_path):
    out_path = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, __file__, str(env["in"]), str(out_path)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    holder = storage.RunLock.holder(out_path)
    assert holder is not None and holder["pid"] == proc.pid  # the killed run's lock is left behind
    assert storage.open_output(out_path).ledger.count("solved") == 4
    run(env["in"], out_path, env["plan"])  # stale lock (dead pid, this host) is broken automatically
    assert_same(snapshot(out_path), env["ref"])


def test_parallel_writers_match_sequential(env, tmp_path):
    run(env["in"], tmp_path / "par.zarr", env["plan"], workers=4)
    assert_same(snapshot(tmp_path / "par.zarr"), env["ref"])
    assert tree_hash(env["in"]) == env["in_hash_before"]


def test_super_resolution_scale(env, tmp_path):
    out = run(env["in"], tmp_path / "sr.zarr", env["plan"], scale=2)
    recon = out.recon()[:]
    assert recon.shape == (FRAMES, 1, 2 * H, 2 * W) and out.group()["0"].chunks == (1, 32, 32)
    # independent recomputation: kron-upsampled tile solutions blended with the fine-grid weights
    plan, fine = env["plan"], env["plan"].scaled(2)
    st = storage.open_stack(env["in"])
    for frame in range(FRAMES):
        acc = np.zeros((1, 2 * H, 2 * W))
        for t, tf in zip(plan, fine):
            x, _, _ = fake_solve(storage.read_tile(st, frame, t, plan).data, t, frame)
            y0, y1, x0, x1 = tf.blend
            acc[:, y0:y1, x0:x1] += fine.weights(tf) * np.kron(x, np.ones((1, 2, 2)))
        assert np.allclose(recon[frame], st.from_model(acc), rtol=1e-6, atol=1e-3)
    # on tile interiors (weight 1) the fine result is the upsampled coarse one
    core = plan[5].core
    sl = (slice(None), 0, slice(2 * core[0] + 8, 2 * core[1] - 8), slice(2 * core[2] + 8, 2 * core[3] - 8))
    assert np.allclose(recon[sl], np.kron(env["ref"]["recon"], np.ones((1, 1, 2, 2)))[sl], rtol=1e-6, atol=1e-3)
    ms = zarr.open_group(tmp_path / "sr.zarr", mode="r").attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]


def test_config_mismatch_overwrite_and_unrelated(env, tmp_path):
    p = tmp_path / "o.zarr"
    first = storage.create_output(p, env["in"], env["plan"], CONFIG)
    again = storage.create_output(p, env["in"], env["plan"], dict(CONFIG))
    assert again.manifest["config_hash"] == first.manifest["config_hash"]  # resume, not recreate
    with pytest.raises(storage.ConfigMismatchError, match="different configuration"):
        storage.create_output(p, env["in"], env["plan"], {**CONFIG, "steps": 50})
    other_plan = storage.TilePlan((H, W), tile=16, halo=3, overlap=2)
    with pytest.raises(storage.ConfigMismatchError):
        storage.create_output(p, env["in"], other_plan, CONFIG)
    with storage.RunLock(p):
        with pytest.raises(storage.LockError):
            storage.create_output(p, env["in"], env["plan"], {**CONFIG, "steps": 50}, overwrite=True)
    assert storage.open_output(p).manifest["config_hash"] == first.manifest["config_hash"]  # untouched
    new = storage.create_output(p, env["in"], env["plan"], {**CONFIG, "steps": 50}, overwrite=True)
    assert new.manifest["config"]["steps"] == 50
    assert new.manifest["prior_sha256"] is None and new.manifest["version"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    for ow in (False, True):
        with pytest.raises(storage.StoreExistsError, match="unrelated"):
            storage.create_output(busy, env["in"], env["plan"], CONFIG, overwrite=ow)
    assert os.listdir(busy) == ["notes.txt"]
    assert not any(q.name.startswith(".busy.") for q in tmp_path.iterdir())


def test_locks(env, tmp_path):
    p = tmp_path / "l.zarr"
    storage.create_output(p, env["in"], env["plan"], CONFIG)
    x = np.zeros((1,) + env["plan"][0].blend_shape, np.float32)
    with pytest.raises(storage.LockError, match="needs the run lock"):
        storage.write_tile_result(p, 0, 0, x)
    with storage.RunLock(p, run_id="A") as a:
        assert a.run_id == "A"
        with pytest.raises(storage.LockError, match="locked by run A"):
            storage.RunLock(p, run_id="B").acquire()
        with pytest.raises(storage.LockError, match="not by B"):
            storage.write_tile_result(p, 0, 0, x, run_id="B")
        with pytest.raises(storage.StorageError, match="NaN"):
            storage.write_tile_result(p, 0, 0, x + np.nan, run_id="A")
        with pytest.raises(storage.StorageError, match="shape"):
            storage.write_tile_result(p, 0, 0, x[:, 1:], run_id="A")
        with pytest.raises(storage.StorageError, match="not solved yet"):
            storage.assemble_tile(p, 0, 0, run_id="A")
        assert storage.open_output(p).ledger.count("solved") == 0
    assert storage.RunLock.holder(p) is None
    # a lock left by a dead process on this host is stale and gets broken
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import json, socket
    (p / ".ddiff.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "run_id": "old"}))
    with storage.RunLock(p) as lock:
        assert storage.RunLock.holder(p)["run_id"] == lock.run_id
    # ... but one from another host is not
    (p / ".ddiff.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "run_id": "remote"}))
    with pytest.raises(storage.LockError, match="delete"):
        storage.RunLock(p).acquire()


def test_safe_subpath(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    assert storage.safe_subpath(root, "a/b/c.json") == (root / "a/b/c.json").resolve()
    for bad in ("../x", "a/../../x", "/etc/passwd", "a/../../../"):
        with pytest.raises(storage.StorageError):
            storage.safe_subpath(root, bad)
    os.symlink(tmp_path, root / "link")
    with pytest.raises(storage.StorageError, match="outside"):
        storage.safe_subpath(root, "link/secret")


def test_atomic_directory_swaps_whole_folders_and_cleans_up(tmp_path):
    from storage.safety import atomic_directory

    target = tmp_path / "s.zarr"
    target.mkdir()  # an empty folder is replaced without replace_old
    with atomic_directory(target, replace_old=False, label="t") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".s.zarr.t-") and not tmp.exists()
        tmp.mkdir()
        (tmp / "v").write_text("1")
    assert (target / "v").read_text() == "1"
    with pytest.raises(RuntimeError, match="boom"):  # a failed build leaves the old store untouched
        with atomic_directory(target, replace_old=True) as tmp:
            tmp.mkdir()
            (tmp / "v").write_text("2")
            raise RuntimeError("boom")
    assert (target / "v").read_text() == "1"
    with atomic_directory(target, replace_old=True) as tmp:
        tmp.mkdir()
        (tmp / "v").write_text("3")
    assert (target / "v").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # no temp or old folder left


def _dask_tile_task(in_store: str, out_path: str, frame: int, k: int, run_id: str) -> tuple[int, int]:
    """What a Prefect/Dask task does: receives descriptors only, opens the stores itself."""
    plan = storage.open_output(out_path).plan
    inp = storage.read_tile(in_store, frame, k, plan)
    x, diag, resid = fake_solve(inp.data, inp.tile, frame)
    storage.write_tile_result(out_path, frame, k, x, diag, resid, run_id=run_id)
    return frame, k


def test_dask_localcluster_processes_match_sequential(env, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    # Dask puts each worker's local directory on sys.path, and that directory has a `storage/`
    # spill folder: with an editable install, `import storage` in a worker would find that empty
    # namespace folder instead of this package. Putting the repository on sys.path (which the
    # spawned workers copy) makes the real, regular package win. Flows that use Dask workers
    # need the same (or a non-editable install).
    monkeypatch.syspath_prepend(str(Path(storage.__file__).resolve().parents[1]))
    out_path = tmp_path / "dask.zarr"
    out = storage.create_output(out_path, env["in"], env["plan"], CONFIG, prior_sha256="ab" * 32)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            distributed.Client(cl) as client, storage.RunLock(out_path) as lock:
        todo = out.ledger.pending()
        futs = [client.submit(_dask_tile_task, str(env["in"]), str(out_path), f, k, lock.run_id, pure=False)
                for f, k in todo]
        assert sorted(client.gather(futs)) == sorted(todo)
        asm = [client.submit(storage.assemble_frame, str(out_path), f, run_id=lock.run_id, pure=False)
               for f in range(FRAMES)]
        client.gather(asm)
        storage.finalize(out_path, run_id=lock.run_id)
    assert_same(snapshot(out_path), env["ref"])
