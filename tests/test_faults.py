"""Faults and bad input (issue 14), in process: the bad-input table with the exact line each gets
(before Prefect starts, nothing written), a failed start that leaves nothing so the corrected
command runs, consumers refusing a replaced input, the first storage error stopping the run
without retries, simultaneous starts resolved by the lock, and orphaned temporary folders
reclaimed only when their owner is gone. (Subprocess kills, disk-full and the Dask backend:
``test_faults_kill.py``; the table of all of it: ``docs/faults.md``.)"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import tiny_prior
from test_flows import params as flow_params

import flows
import storage
from flows.cli import main

STEPS = 3
COMMON = "--op-param kernel_size=7 --op-param std=1.0 --steps 3 --tile 24 --overlap 4 --no-progress"


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Real files for the bad-input table (no Prefect needed: every line comes from pre-flight)."""
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    np.save(d / "y.npy", rng.random((1, 1, 48, 40), dtype=np.float32))
    storage.ingest(d / "y.npy", d / "in.zarr", axes="tcyx", intensity=(0, 1))
    np.save(d / "rgb.npy", rng.random((1, 3, 48, 40), dtype=np.float32))
    storage.ingest(d / "rgb.npy", d / "rgb.zarr", axes="tcyx", intensity=(0, 1))
    tiny_prior(d / "tiny.safetensors")
    sd = load_file(str(d / "tiny.safetensors"))
    sd["extra.weight"] = sd.pop("out.2.weight")  # a checkpoint of another architecture
    meta = json.loads(__import__("safetensors").safe_open(str(d / "tiny.safetensors"), "pt").metadata()["ddiff_config"])
    save_file(sd, str(d / "wrongkey.safetensors"), metadata={"ddiff_config": json.dumps(meta)})
    (d / "garbage.safetensors").write_bytes(bytes(range(256)) * 16)
    import tifffile

    tifffile.imwrite(d / "tiff.npy", np.zeros((2, 16, 16), np.uint16))

    class Evil:  # a pickle that would run code when loaded without weights_only
        def __reduce__(self):
            return (os.system, ("touch " + str(d / "pwned"),))

    with open(d / "evil.pt", "wb") as fh:
        pickle.dump({"w": Evil()}, fh)
    return d


NCUDA = torch.cuda.device_count() if torch.cuda.is_available() else 0
#: (case, command line, the one line it must print) — {d}: the fixture folder. docs/faults.md lists them.
BAD_INPUTS = [
    ("tiff-named-npy", "ingest {d}/tiff.npy {d}/a.zarr",
     "{d}/tiff.npy: this is a TIFF file named .npy; rename it to .tif"),
    ("missing-source", "ingest {d}/nothing.tif {d}/a.zarr",
     "invalid parameters: source: Value error, source '{d}/nothing.tif' does not exist"),
    ("ingest-onto-store", "ingest {d}/y.npy {d}/in.zarr --axes tcyx",
     "{d}/in.zarr already holds an ingested stack; pass --overwrite to replace it or choose another path"),
    ("bad-axes", "ingest {d}/y.npy {d}/a.zarr --axes tyx",
     "{d}/y.npy: --axes tyx does not describe a 4-D array; use one letter per dimension from 'tczyx' including y "
     "and x, e.g. 'zyx', 'tcyx' or 'tzcyx'"),
    ("bad-intensity", "ingest {d}/y.npy {d}/a.zarr --intensity 0,x",
     "--intensity '0,x': give two numbers LOW,HIGH (e.g. 0,4095) or one of percentile, minmax, dtype"),
    ("sigma-0", "reconstruct {d}/in.zarr {d}/out.zarr --prior {d}/tiny.safetensors --sigma 0 " + COMMON,
     "--sigma must be > 0 for Gaussian noise"),
    ("unknown-hp", "reconstruct {d}/in.zarr {d}/out.zarr --prior {d}/tiny.safetensors --hp bogus=1 " + COMMON,
     "solver 'ddiff' has no setting 'bogus' (--hp bogus=...); its settings: steps, x_update, tau, max_inner, "
     "projection, gamma0, a, b, t_gamma, t0, noising, early_stop, rescale_step"),
    ("garbage-safetensors", "reconstruct {d}/in.zarr {d}/out.zarr --prior {d}/garbage.safetensors " + COMMON,
     "--prior {d}/garbage.safetensors: not a valid safetensors file (Error while deserializing header: header too "
     "large); the file is damaged, truncated or another format — re-download or re-export it"),
    ("wrong-key-checkpoint", "reconstruct {d}/in.zarr {d}/out.zarr --prior {d}/wrongkey.safetensors " + COMMON,
     "--prior {d}/wrongkey.safetensors: the checkpoint's tensors do not match its architecture (1 missing, 1 "
     "unexpected, 0 mis-shaped, e.g. out.2.weight); give a guided-diffusion ADM U-Net checkpoint with its config "
     "(safetensors metadata 'ddiff_config' or a sidecar <stem>.json), e.g. one written by `ddiff train --export`"),
    ("hostile-pickle", "reconstruct {d}/in.zarr {d}/out.zarr --prior {d}/evil.pt " + COMMON,
     "--prior {d}/evil.pt: refused to load — the file contains pickled objects that are not plain tensors "
     "(weights_only=True). Nothing from it was executed. If you trust its origin, convert it to safetensors in a "
     "sandbox first."),
    ("rgb-vs-1ch-prior", "reconstruct {d}/rgb.zarr {d}/out.zarr --prior {d}/tiny.safetensors " + COMMON,
     "--prior {d}/tiny.safetensors models 1-channel images but the input {d}/rgb.zarr has 3 channel(s); use a "
     "3-channel prior, or ingest the stack with 1 channel(s)"),
    ("op-param-not-a-number", "reconstruct {d}/in.zarr {d}/out.zarr --prior {d}/tiny.safetensors "
     "--op-param kernel_size=abc --no-progress",
     "--op-param kernel_size='abc': operator 'gaussian_blur' needs a number there (default 61), e.g. "
     "--op-param kernel_size=61"),
    ("op-param-unknown", "reconstruct {d}/in.zarr {d}/out.zarr --prior {d}/tiny.safetensors --op-param foo=1 " + COMMON,
     "operator 'gaussian_blur' has no keyword 'foo' (--op-param foo=...); its keywords: kernel_size, std"),
    ("absent-device", "reconstruct {d}/in.zarr {d}/out.zarr --prior {d}/tiny.safetensors --device cuda:99 " + COMMON,
     f"--device cuda:99: this machine has {NCUDA} CUDA device(s) visible to torch"
     f"{'' if NCUDA else ' (no GPU, or a CPU-only torch)'}; use --device cpu"
     + (f" or one of cuda:0..cuda:{NCUDA - 1}" if NCUDA else "")),
    ("missing-input-store", "reconstruct {d}/none.zarr {d}/out.zarr --prior {d}/tiny.safetensors " + COMMON,
     "invalid parameters: input_store: Value error, input store '{d}/none.zarr' does not exist or is not a Zarr "
     "store; run `ddiff ingest` first"),
    ("output-is-unrelated", "reconstruct {d}/in.zarr {d}/y.npy --prior {d}/tiny.safetensors " + COMMON,
     "{d}/y.npy already holds unrelated data; nothing was written. Choose a new output path (--overwrite never "
     "deletes data this package did not write)"),
]


@pytest.mark.parametrize("case, argv, line", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_one_exact_line_and_writes_nothing(bad, capsys, case, argv, line):
    before = sorted(p.name for p in bad.iterdir())
    rc = main(argv.format(d=bad).split())
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["ddiff: error: " + line.format(d=bad)]
    assert sorted(p.name for p in bad.iterdir()) == before  # nothing written, no hidden leftovers
    assert not (bad / "pwned").exists()


def params(env, out, steps=STEPS, **kw):
    """test_flows' parameters, with small batches and few steps (fast; batches of 1 make 8 tasks)."""
    return flow_params(env, out, **{"solver": {"name": "ddiff", "steps": steps},
                                    "execution": {"batch_size": 1, "torch_threads": 1}, "artifacts": False, **kw})


def test_failed_start_leaves_nothing_and_the_corrected_command_runs(flows_env, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    args = ["reconstruct", str(flows_env["input"]), str(out), "--prior", str(flows_env["prior"]), *COMMON.split()]
    assert main([*args, "--sigma", "0"]) == 2 and not out.exists()
    # an error only a running flow meets (the injected failure before the first tile): the store it
    # created goes again, so a different, corrected configuration is not refused
    with pytest.raises(flows.tiles.InjectedFailure):
        flows.reconstruct_stack(params(flows_env, out, fail_after_tiles=0))
    assert not out.exists()
    # a start killed before its first tile leaves an unused store: the next configuration replaces it
    storage.create_output(out, flows_env["input"], storage.TilePlan((48, 40), tile=24, halo=4, overlap=4), {"x": 1})
    capsys.readouterr()
    assert main([*args, "--sigma", "0.05"]) == 0
    assert storage.open_output(out).complete


def test_consumers_refuse_a_replaced_input(flows_env, tmp_path, capsys):
    src, store, out = tmp_path / "y.npy", tmp_path / "in.zarr", tmp_path / "out.zarr"
    np.save(src, np.load(flows_env["y"]))
    storage.ingest(src, store, axes="tcyx", intensity=(0, 1))
    p = params(flows_env, out, input_store=str(store))
    res = flows.reconstruct_stack(p)
    # (and every task ran with the recorded torch thread count, not its thread's default of all CPUs)
    assert storage.open_output(out).manifest["config"]["torch_threads"] == 1 and res["worker_threads"] == [1]
    rec = storage.open_output(out).manifest["input"]["data_sha256"]
    other = tmp_path / "other.npy"
    np.save(other, np.load(flows_env["y"])[::-1].copy())  # the frames swapped: same shape, other data
    storage.ingest(other, store, axes="tcyx", intensity=(0, 1), overwrite=True)  # nightly reuse of one path
    now = storage.open_stack(store).meta["data_sha256"]
    line = (f"the input {store} changed since {out} was made from it (data_sha256 {rec[:12]}… -> {now[:12]}…; "
            "re-ingested?); restore that input, or rebuild the output from the new one (reconstruct with {fix}, or into a "
            "new output path)")
    assert main(["audit", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["ddiff: error: " + line.format(fix="--overwrite")]
    with pytest.raises(storage.InputChangedError, match="overwrite=True"):  # resume (Python spelling)
        flows.reconstruct_stack(p)
    with pytest.raises(storage.InputChangedError):
        storage.assemble_frame(out, 0)
    with pytest.raises(storage.InputChangedError):  # a re-ingest with another intensity map is a change too
        storage.ingest(src, store, axes="tcyx", intensity=(0, 2), overwrite=True)
        storage.open_input(out)
    storage.ingest(src, store, axes="tcyx", intensity=(0, 1), overwrite=True)  # the original again: accepted
    assert storage.open_input(out).meta["data_sha256"] == rec
    assert main(["audit", str(out), "--no-progress", "--window", "8"]) == 0


def test_first_storage_error_stops_the_run_without_retries(flows_env, tmp_path):
    import storage.output as so

    out, calls = tmp_path / "efbig.zarr", []

    def full(step):
        if step == "after_staging":
            calls.append(step)
            raise OSError(errno.EFBIG, "File too large")

    so._FAULT_HOOK = full
    try:
        with pytest.raises(storage.StorageWriteError) as e:
            flows.reconstruct_stack(params(flows_env, out, execution={"batch_size": 1, "torch_threads": 1,
                                                                       "retries": 2}))
    finally:
        so._FAULT_HOOK = None
    assert calls == ["after_staging"]  # one write failed: not retried, no other batch started (8 pending)
    assert re.fullmatch(rf"writing frame \d tile \d to {re.escape(str(out))} failed: File too large \[EFBIG\] — a "
                        r"file-size limit was hit \(ulimit -f, or the filesystem's limit\); fix that, then rerun the "
                        r"same command to resume", str(e.value)), str(e.value)
    assert storage.RunLock.holder(out) is None


RACE = r"""
import os, sys, time
import dask.array, xarray, storage  # imported before the start signal: both start at the same instant
d, rounds = sys.argv[1], int(sys.argv[2])
plan = storage.TilePlan((48, 40), tile=24, halo=4, overlap=4)


def both_done(r):  # a barrier on marker files: both processes have finished round r
    t = time.time()
    while len([f for f in os.listdir(d) if f.startswith(f"done{r}.")]) < 2 and time.time() - t < 120:
        time.sleep(0.001)


print("ready", flush=True)
sys.stdin.readline()
for r in range(rounds):
    if r:
        both_done(r - 1)
    try:
        out = storage.create_output(f"{d}/race{r}.zarr", f"{d}/in.zarr", plan, {"solver": "x"})
        lock = storage.RunLock(out.path).acquire()
        open(f"{d}/done{r}.{os.getpid()}", "w").close()
        both_done(r)  # hold the lock until the other start has met it
        lock.release()
        print("won", flush=True)
    except storage.LockError as exc:
        open(f"{d}/done{r}.{os.getpid()}", "w").close()
        print("lock:", exc, flush=True)
"""


def test_simultaneous_starts_resolve_through_the_lock(bad, tmp_path):
    """Two processes create and lock the same new output at the same instant, 3 times: each time one
    runs and the other gets the lock message — never "Directory not empty" or a half-made store."""
    storage.ingest(bad / "y.npy", tmp_path / "in.zarr", axes="tcyx", intensity=(0, 1))
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), "3"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]  # both imported: start together
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    lines = [o[0].splitlines() for o in outs]
    for r in range(3):
        assert sorted(ls[r].split(":")[0] for ls in lines) == ["lock", "won"]
        assert storage.open_output(tmp_path / f"race{r}.zarr").manifest["config"] == {"solver": "x"}
    assert "is locked by run" in [ln for ls in lines for ln in ls if ln.startswith("lock")][0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".race")]  # no temporary folder left


def test_orphaned_temporary_folders_are_reclaimed_only_when_their_owner_is_gone(bad, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "s.zarr"
    orphan = tmp_path / f".s.zarr.ingest-{dead.pid}@{storage.safety._host_tag()}-0123abcd"
    legacy = tmp_path / f".s.zarr.create-{dead.pid}-89abcdef"  # the name older versions used
    alive = tmp_path / f".s.zarr.ingest-{os.getpid()}@{storage.safety._host_tag()}-deadbeef"
    remote = tmp_path / f".s.zarr.ingest-{dead.pid}@00000000-01234567"  # another host's: its pid means nothing here
    other = tmp_path / f".t.zarr.ingest-{dead.pid}-01234567"  # another target's
    for p in (orphan, legacy, alive, remote, other):
        (p / "0").mkdir(parents=True)
    storage.ingest(bad / "y.npy", target, axes="tcyx", intensity=(0, 1))
    assert not orphan.exists() and not legacy.exists()
    assert alive.exists() and remote.exists() and other.exists()


def test_a_lock_that_cannot_be_released_never_hides_the_cause(tmp_path):
    with pytest.raises(ValueError, match="the run's own error"):
        with storage.RunLock(tmp_path / "o.zarr") as lock:
            lock.path.unlink()
            lock.path.mkdir()  # releasing will now fail (the lock path is a folder)
            raise ValueError("the run's own error")
    lock = storage.RunLock(tmp_path / "q.zarr").acquire()
    lock.path.unlink()
    lock.path.mkdir()
    with pytest.raises(OSError):  # without an error on its way out, a failed release is reported
        lock.release()


def test_python_spellings_become_cli_flags_on_the_command_line(tmp_path):
    """The storage layer speaks Python (``nonfinite='mask'``); the command line shows its own flags."""
    from flows.console import cli_spelling

    y = np.zeros((2, 8, 8), np.float32)
    y[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", y)
    with pytest.raises(storage.NonFiniteError) as e:
        storage.ingest(tmp_path / "nan.npy", tmp_path / "a.zarr")
    assert "pass nonfinite='mask'" in str(e.value) and not (tmp_path / "a.zarr").exists()
    assert cli_spelling(str(e.value)) == str(e.value).replace("nonfinite='mask'", "--nonfinite mask")
    assert cli_spelling("overlap=20 is too large for tile=32; pass overwrite=True, noise.sigma, execution.device='cpu'") \
        == "--overlap 20 is too large for --tile 32; pass --overwrite, --sigma, --device cpu"
