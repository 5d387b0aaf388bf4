"""Faults from outside (issue 14), on real processes and stores: ``kill -9`` at seeded random points
of ingest and of the ``ddiff reconstruct`` command (with its own temporary Prefect server and a
Dask worker: nothing may outlive it; the rerun resumes to the bytes of an uninterrupted run),
and a disk that refuses writes (``RLIMIT_FSIZE``). (Bad input and in-process faults:
``test_faults.py``; a run begun on local threads and resumed on Dask workers:
``test_flows.py::test_same_output_on_dask_local_cluster``.)"""
from __future__ import annotations

import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SIGMA_DATA
from test_faults import params
from test_flows import recon, staging

import flows
import storage

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}  # a loaded machine starts the command's server slowly

INGEST = r"""
import sys, storage
storage.ingest(sys.argv[1], sys.argv[2], axes="tyx", chunk=16, block_bytes=1 << 14, intensity=(0, 1))
"""


def _wait(cond, timeout: float, what: str, proc=None):
    t_end = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first (rc {proc.returncode}): "
                                 f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        assert time.monotonic() < t_end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_kill9_during_ingest_leaves_nothing_and_the_next_run_reclaims(tmp_path):
    rng = random.Random(14)
    src, store = tmp_path / "stack.npy", tmp_path / "in.zarr"
    np.save(src, np.random.default_rng(0).random((96, 64, 64), dtype=np.float32))
    src_sha = storage.file_sha256(src)
    killed_mid = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", INGEST, str(src), str(store)], env=ENV,
                                stderr=subprocess.PIPE, text=True)
        tmp_of = lambda: [p for p in tmp_path.iterdir() if p.name.startswith(f".in.zarr.ingest-{proc.pid}@")]  # noqa: E731
        _wait(lambda: tmp_of() or proc.poll() is not None, 60, "the ingest to start writing")
        time.sleep(rng.uniform(0.0, 0.4))  # a random point of the ingest
        proc.kill()
        proc.wait()
        if store.exists():  # it finished before the kill: then it is complete
            assert storage.verify_stack(store)
            shutil.rmtree(store)
        elif tmp_of():
            killed_mid += 1  # absent, never half-written: the partial data is in the dead owner's folder
    assert killed_mid >= 2  # the kills really landed mid-ingest, leaving orphans of dead processes
    st = storage.ingest(src, store, axes="tyx", chunk=16, intensity=(0, 1))  # the next run on the target
    assert storage.verify_stack(st.path) and storage.file_sha256(src) == src_sha  # input never written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # every orphan reclaimed


def _cli(env, out, *extra, steps=3):
    return [sys.executable, "-m", "flows.cli", "reconstruct", str(env["input"]), str(out), "--prior", str(env["prior"]),
            "--op-param", "kernel_size=7", "--op-param", "std=1.0", "--sigma", str(SIGMA_DATA), "--steps", str(steps), "--tile",
            "24", "--overlap", "4", "--seed", "3", "--batch-size", "1", "--threads", "1", "--no-progress", *extra]


def _bytes(path):
    return recon(path), staging(path)


def test_kill9_of_the_command_leaves_no_process_and_resumes_identically(flows_env, tmp_path):
    """``ddiff reconstruct --dask-workers 1`` with no PREFECT_API_URL (its own temporary server), killed
    with SIGKILL at a random point after its first tile: its server, Dask worker and every other
    child are gone, and the rerun finishes to the bytes of an uninterrupted run."""
    import psutil

    out = tmp_path / "killed.zarr"
    env = {k: v for k, v in ENV.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.Popen(_cli(flows_env, out, "--dask-workers", "1", steps=8), env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    solved = lambda: out.is_dir() and storage.open_output(out).ledger.count("solved") >= 1  # noqa: E731
    _wait(solved, 240, "the first solved tile", proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(c.cmdline()) for c in children)  # its temporary server ...
    assert sum("uvicorn" in " ".join(c.cmdline()) for c in children) == 1  # ... the only one (workers share it)
    time.sleep(random.Random(3).uniform(0.0, 0.3))
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
    assert storage.RunLock.holder(out)["pid"] == proc.pid  # a stale lock: the rerun breaks it
    res = flows.reconstruct_stack(params(flows_env, out, steps=8))
    assert res["complete"] and res["skipped"] >= 1
    ref = flows.reconstruct_stack(params(flows_env, tmp_path / "ref.zarr", steps=8))
    assert ref["skipped"] == 0
    for a, b in zip(_bytes(out), _bytes(tmp_path / "ref.zarr")):
        np.testing.assert_array_equal(a, b)
    # the torch thread count is part of the configuration: another count does not mix into this output
    with pytest.raises(storage.ConfigMismatchError, match="torch_threads 1 -> 2"):
        flows.reconstruct_stack(params(flows_env, out, steps=8, execution={"batch_size": 1, "torch_threads": 2}))


def test_a_full_disk_fails_in_one_line_naming_the_store_and_the_cause(flows_env, tmp_path):
    """Writes above 48 KiB fail (RLIMIT_FSIZE, as a full disk would): the store's metadata fits, the first
    tile (a 160² core) does not. The command stops there with one line naming the store and the
    cause, releases its lock, and the rerun (limit lifted) completes."""
    from prefect.settings import PREFECT_API_URL

    np.save(tmp_path / "big.npy", np.random.default_rng(0).random((1, 160, 160), dtype=np.float32))
    storage.ingest(tmp_path / "big.npy", tmp_path / "in.zarr", axes="tyx", intensity=(0, 1))
    env_big = {**flows_env, "input": tmp_path / "in.zarr"}
    out = tmp_path / "full.zarr"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 10, 48 << 10))

    env = {**ENV, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the test harness's server
    r = subprocess.run(_cli(env_big, out, "--tile", "160"), env=env, preexec_fn=limit, capture_output=True,
                       text=True, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr[-3000:]
    assert err[0] == (f"ddiff: error: writing frame 0 tile 0 to {out.resolve()} failed: File too large [EFBIG] — a "
                      "file-size limit was hit (ulimit -f, or the filesystem's limit); fix that, then rerun the same "
                      "command to resume"), err[0]
    assert not out.exists() or storage.RunLock.holder(out) is None
    res = flows.reconstruct_stack(params(env_big, out, tile=160))
    assert res["complete"]


def test_a_lost_prefect_api_stops_the_command_in_one_line_with_the_resume_command(flows_env, tmp_path):
    """The Prefect server dies mid-run (its uvicorn process killed after the first solved tile): the
    command says so in ONE line — what is kept and the resume command — within seconds of the
    watchdog's window (here 4 s; default 20 s), instead of retrying for minutes and dumping its event
    workers' tracebacks (issue 27: 492 s, 4.9 KB of stderr)."""
    import psutil

    out = tmp_path / "lost.zarr"
    env = {k: v for k, v in ENV.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), DDIFF_API_PROBE_S="1", DDIFF_API_LOST_AFTER_S="4")
    proc = subprocess.Popen(_cli(flows_env, out, steps=400), env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    solved = lambda: out.is_dir() and storage.open_output(out).ledger.count("solved") >= 1  # noqa: E731
    _wait(solved, 240, "the first solved tile", proc)
    server = [c for c in psutil.Process(proc.pid).children(recursive=True) if "uvicorn" in " ".join(c.cmdline())]
    assert len(server) == 1
    server[0].kill()
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    seconds = time.monotonic() - t0
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and len(err) < 1500, err[-3000:]
    assert lines[0].startswith("ddiff: error: lost the Prefect API at http://127.0.0.1:"), lines
    assert f"tiles are solved and kept in {out}" in lines[0] and "resume with: ddiff reconstruct " in lines[0], lines
    assert seconds < 60, seconds
    assert storage.open_output(out).ledger.count("solved") < 8  # it stopped mid-run (8 tiles in all)
    # the printed command is the same configuration: it resumes this output (nothing refused or redone)
    import shlex

    from flows.checks import check_reconstruct
    from flows.cli import _reconstruct_params, build_parser

    cmd = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert cmd[:2] == ["ddiff", "reconstruct"]
    assert check_reconstruct(_reconstruct_params(build_parser().parse_args(cmd[1:]))).action == "resume"
