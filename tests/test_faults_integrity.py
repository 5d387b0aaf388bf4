"""What a store says is what ran (issue 27): frames without measurements are never reported as fine,
a resume decides what to run from the command (never from an edited manifest), and the failure
paths left by issue 14 (storage errors after the solve, oversized declared inputs, strict JSON
metadata). Bad-input lines: ``test_faults.py::BAD_INPUTS``; the table of all of it: ``docs/faults.md``."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from test_faults import params

import flows
import storage
from flows.audit_report import PRIOR_ONLY


@pytest.fixture(scope="module")
def holes(flows_env, tmp_path_factory):
    """A 3-frame stack: frame 1 masked out entirely (an all-False ``--mask`` plane), frame 2 all NaN
    ingested with ``nonfinite='mask'`` — two frames with no valid measurement — and a 16² hole in frame 0."""
    d = tmp_path_factory.mktemp("holes")
    y = np.load(flows_env["y"])  # (2, 1, 48, 40)
    y = np.concatenate([y, y[:1]]).astype(np.float32)
    y[2] = np.nan
    np.save(d / "y.npy", y)
    mask = np.ones((3, 48, 40), np.uint8)
    mask[1] = 0
    mask[0, 16:32, 16:32] = 0  # four 8² audit windows of frame 0 without a measurement
    np.save(d / "mask.npy", mask)
    storage.ingest(d / "y.npy", d / "in.zarr", axes="tcyx", intensity=(0, 1), nonfinite="mask", mask=d / "mask.npy")
    return {**flows_env, "input": d / "in.zarr", "dir": d}


def test_frames_without_measurements_are_flagged_prior_only_never_fine(holes):
    out = holes["dir"] / "out.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy "Mean of empty slice" from the summaries
        rec = flows.reconstruct_stack(params(holes, out, artifacts=True))
        aud = flows.audit_reconstruction(flows.AuditParams(output_store=str(out), window=8))
    assert rec["frames_prior_only"] == [1, 2] and rec["tiles_prior_only"] == 8  # 4 tiles per frame
    assert aud["frames_prior_only"] == [1, 2] and {1, 2} <= set(aud["frames_flagged"])
    assert {(t, k) for t in (1, 2) for k in range(4)} <= set(aud["tiles_flagged"])
    flag = np.asarray(storage.open_output(out).group()["audit/frame_flag"][:])
    assert flag[1] and flag[2]
    # windows: the hole's 4 cells of frame 0 and every cell (6 × 5) of frames 1, 2 are labelled prior only
    assert aud["windows_prior_only"] == {0: 4, 1: 30, 2: 30}
    label = np.asarray(storage.open_output(out).group()["labels/prior_only/0"][:])
    assert label.shape == (3, 48, 40) and label[0].sum() == 256 and label[0, 16:32, 16:32].all() and label[1:].all()
    report = open(aud["report"], encoding="utf-8").read()
    assert f"{PRIOR_ONLY}: 2 / 3" in report and f"**{PRIOR_ONLY} (< 16 valid values)**" in report
    from flows.run_report import frame_fit_rows, publish_verdict

    fit = frame_fit_rows(out)
    assert [r["note"] != "" for r in fit] == [False, True, True] and fit[1]["tile_chi2_nu_max"] is None
    verdict = publish_verdict(out, rec, aud, {}, 0.05)
    assert verdict.startswith("LOOK") and f"2 of 3 frames have {PRIOR_ONLY}" in verdict, verdict


def _edit(out, dotted: str, value):
    """Set ``attributes.ddiff.<dotted>`` in the output's root zarr.json (what a user or a tool could do)."""
    meta = out / "zarr.json"
    doc = json.loads(meta.read_text())
    node = doc["attributes"]["ddiff"]
    *parents, last = dotted.split(".")
    for k in parents:
        node = node[k]
    node[last] = value
    meta.write_text(json.dumps(doc))


#: manifest fields that change what a resumed run would compute, and an edited value for each
EDITS = [("config.prior_path", "{other}"), ("config.prior", "default"), ("config.seed", 4),
         ("config.hyperparameters.steps", 5), ("config.noise.sigma", 0.5), ("config.operator.params.std", 2.0),
         ("config.operator.name", "inpainting"), ("config.torch_threads", 2), ("config.dtype", "fp64"),
         ("config.batch_size", 7), ("prior_sha256", "0" * 64), ("plan.tile", 16), ("plan.overlap", 2), ("scale", 2),
         ("input.data_sha256", "0" * 64), ("input.path", "{other}"), ("input.intensity.high", 2.0),
         ("recon.levels", 5), ("config_hash", "0" * 64)]


def test_a_resume_decides_from_the_command_and_refuses_an_edited_manifest(flows_env, tmp_path, capsys):
    """A partial output whose manifest was edited — any field that changes what runs — is refused by the
    resume in one line naming the field; restored, the same command resumes. The prior's bytes on disk
    are checked too (a replaced checkpoint under the same name is refused, naming prior_sha256)."""
    import shutil

    from conftest import tiny_prior
    from flows.checks import check_reconstruct
    from flows.cli import main

    from test_faults import COMMON

    prior, other = tmp_path / "prior.safetensors", tiny_prior(tmp_path / "other.safetensors", seed=1)
    shutil.copy(flows_env["prior"], prior)
    out = tmp_path / "out.zarr"
    p = params(flows_env, out, prior=str(prior))
    with pytest.raises(flows.tiles.InjectedFailure):
        flows.reconstruct_stack(params(flows_env, out, prior=str(prior), fail_after_tiles=2))
    assert storage.open_output(out).ledger.count("solved") >= 2
    original = (out / "zarr.json").read_text()
    for field, value in EDITS:
        _edit(out, field, value.format(other=other) if isinstance(value, str) else value)
        with pytest.raises(storage.ConfigMismatchError) as e:
            check_reconstruct(p)
        assert field in str(e.value) and "\n" not in str(e.value), (field, str(e.value))
        (out / "zarr.json").write_text(original)
    # the flow itself (not only the pre-flight) refuses, and the command says it in one line
    _edit(out, "config.prior_path", str(other))
    with pytest.raises(storage.ConfigMismatchError, match="config.prior_path"):
        flows.reconstruct_stack(p)
    argv = ["reconstruct", str(flows_env["input"]), str(out), "--prior", str(prior), "--sigma", str(p.noise.sigma),
            "--seed", "3", "--batch-size", "1", "--threads", "1", *COMMON.split()]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ddiff: error: cannot resume {out}: its manifest does not match this command (config.prior_path: "
                   f"the store has '{other}', this command '{prior.resolve()}'); the manifest was edited or damaged, so "
                   "the tiles in it cannot be trusted to continue this run — pass --overwrite to rebuild it, or choose "
                   "another output path"], err
    (out / "zarr.json").write_text(original)
    shutil.copy(other, prior)  # another checkpoint under the same name: its SHA-256 on disk differs
    with pytest.raises(storage.ConfigMismatchError, match="prior_sha256"):
        check_reconstruct(p)
    shutil.copy(flows_env["prior"], prior)
    assert flows.reconstruct_stack(p)["complete"]  # restored: the same command resumes
    # after the run, the audit refuses a manifest whose fields no longer hash to its config_hash
    _edit(out, "config.noise.sigma", 0.5)
    with pytest.raises(storage.ConfigMismatchError, match="edited or damaged after the run"):
        flows.checks.check_audit(str(out))
    # a truncated manifest is called damaged, not "unrelated data"
    (out / "zarr.json").write_text(original[: len(original) // 2])
    with pytest.raises(storage.StorageError, match=r"manifest .*zarr.json is damaged \(it is truncated or not JSON"):
        check_reconstruct(p)
    with pytest.raises(storage.StorageError, match="is damaged"):
        storage.open_output(out)


@pytest.fixture(scope="module")
def bad27(prefect_harness, tmp_path_factory):
    """Real files for the issue-27 bad-input table (a few lines come from inside the ingest flow, so
    Prefect's test harness serves them)."""
    import pickle

    from conftest import tiny_prior

    d = tmp_path_factory.mktemp("bad27")
    rng = np.random.default_rng(27)
    np.save(d / "y.npy", rng.random((2, 32, 32), dtype=np.float32))
    adu = (98 + 56 * rng.random((2, 32, 32))).astype(np.float32)
    adu[0, 0, 0] = 98.0  # camera data, 98-154 ADU
    np.save(d / "adu.npy", adu)
    storage.ingest(d / "adu.npy", d / "adu.zarr", intensity=(0, 4095))
    np.save(d / "const.npy", np.full((2, 32, 32), 5.0, np.float32))
    storage.ingest(d / "const.npy", d / "const.zarr", intensity=(0, 10))
    np.save(d / "small.npy", rng.random((2, 8, 8), dtype=np.float32))
    storage.ingest(d / "small.npy", d / "small.zarr", intensity=(0, 1))
    np.save(d / "mask0.npy", np.zeros((32, 32), np.uint8))
    with open(d / "maskobj.npy", "wb") as fh:  # an object array: loading it would need pickle
        np.save(fh, np.array([[None] * 32] * 32, dtype=object), allow_pickle=True)
    np.save(d / "maskstr.npy", np.full((32, 32), "a"))
    np.save(d / "maskc.npy", np.ones((32, 32), np.complex64))
    np.save(d / "bad1.npy", np.ones((32, 32), np.uint8))
    np.save(d / "sino.npy", rng.random((1, 31, 24), dtype=np.float32))
    angles = np.arange(31) * 6.0
    angles[3] = np.nan
    np.savetxt(d / "angles.txt", angles)
    flows.ingest_stack(flows.IngestParams(source=str(d / "sino.npy"), store=str(d / "s.zarr"), domain="sinogram",
                                          angles="0:186:6", intensity=[0, 1]), artifacts=False)
    sino = rng.random((2, 31, 24), dtype=np.float32)
    sino[1] = np.nan  # a lost frame, kept out of the likelihood at ingest
    np.save(d / "sino_nan.npy", sino)
    flows.ingest_stack(flows.IngestParams(source=str(d / "sino_nan.npy"), store=str(d / "s_nan.zarr"), domain="sinogram",
                                          angles="0:186:6", intensity=[0, 1], nonfinite="mask"), artifacts=False)
    np.save(d / "kreal.npy", rng.random((1, 32, 32), dtype=np.float32))
    tiny_prior(d / "tiny.safetensors")
    with open(d / "evil.pt", "wb") as fh:
        pickle.dump({"w": _Evil(str(d / "pwned"))}, fh)
    return d


class _Evil:  # a pickle that would run code when loaded without weights_only
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, ("touch " + self.path,))


R = "--prior {d}/tiny.safetensors --op-param kernel_size=7 --op-param std=1.0 --steps 2 --tile 32 --overlap 4 --no-progress"
SAT = "give a finite level in data units (e.g. 4095), 'dtype' (default: the integer type's maximum) or 'none' (no saturation check)"
#: (case, command, the one line it prints) — issue 27's items 7 and 8; docs/faults.md lists them.
BAD_INPUTS_27 = [
    ("saturation-not-a-number", "ingest {d}/y.npy {d}/a.zarr --saturation x", "--saturation x: " + SAT),
    ("saturation-nan", "ingest {d}/y.npy {d}/a.zarr --saturation nan", "--saturation nan: " + SAT),
    ("saturation-inf", "ingest {d}/y.npy {d}/a.zarr --saturation inf", "--saturation inf: " + SAT),
    ("saturation-below-the-data", "ingest {d}/y.npy {d}/a.zarr --saturation -5",
     "{d}/y.npy: none of its 2048 entries is a valid measurement (2048 at or above --saturation -5); nothing was "
     "written — give a saturation level above the signal (--saturation none: no check)"),
    ("mask-all-false", "ingest {d}/y.npy {d}/a.zarr --mask {d}/mask0.npy",
     "--mask file {d}/mask0.npy has no non-zero entry: it marks every pixel invalid (non-zero = valid); nothing would "
     "be left to measure — check the file (inverted?)"),
    ("bad-pixels-all", "ingest {d}/y.npy {d}/a.zarr --bad-pixels {d}/bad1.npy",
     "--bad-pixels file {d}/bad1.npy marks every pixel bad (non-zero = bad); nothing would be left to measure — check "
     "the file (inverted?)"),
    ("mask-object-dtype", "ingest {d}/y.npy {d}/a.zarr --mask {d}/maskobj.npy",
     "--mask file {d}/maskobj.npy cannot be read as an image (Object arrays cannot be loaded when allow_pickle=False); "
     "save it as a bool or integer array (non-zero = valid)"),
    ("mask-strings", "ingest {d}/y.npy {d}/a.zarr --mask {d}/maskstr.npy",
     "--mask file {d}/maskstr.npy holds <U1 values; give a bool or integer array (non-zero = valid)"),
    ("mask-complex", "ingest {d}/y.npy {d}/a.zarr --mask {d}/maskc.npy",
     "--mask file {d}/maskc.npy holds complex64 values; give a bool or integer array (non-zero = valid)"),
    ("angles-not-a-number", "ingest {d}/sino.npy {d}/a.zarr --domain sinogram --angles 0:180:x",
     "--angles '0:180:x': use START:STOP:STEP in degrees, e.g. 0:180:3"),
    ("angles-with-a-nan", "ingest {d}/sino.npy {d}/a.zarr --domain sinogram --angles {d}/angles.txt",
     "--angles {d}/angles.txt: 1 of its 31 angles are not numbers (NaN/Inf, first at index 3); give one finite angle "
     "in degrees per sinogram row"),
    ("kspace-real", "ingest {d}/kreal.npy {d}/a.zarr --domain kspace",
     "{d}/kreal.npy: k-space must be complex, but it holds real float32 values; store the complex samples, e.g. "
     "np.save('k.npy', (re + 1j * im).astype(np.complex64)) (magnitudes alone are --domain fourier_magnitude)"),
    ("offset-above-the-data", "reconstruct {d}/adu.zarr {d}/o.zarr --noise poisson_gaussian --gain 1 --offset 1000 "
     "--read-noise 2 " + R,
     "--offset = 1000 ADU is above the data: 100% of the values lie more than 12 e⁻ (6 read-noise σ) below it (lowest "
     "value 98 ADU). The black level must not exceed the dark pixels — check --offset (or leave it out to estimate it) "
     "and that --gain is in e⁻/ADU"),
    ("noise-auto-on-a-constant-stack", "reconstruct {d}/const.zarr {d}/o.zarr " + R,
     "noise kind 'auto': σ cannot be estimated from {d}/const.zarr — its sampled frames have no pixel-to-pixel "
     "variation (estimate 0; a constant or synthetic stack?); give the noise level in the data's units: --sigma S"),
    ("overlap-larger-than-the-frame", "reconstruct {d}/small.zarr {d}/o.zarr --prior {d}/tiny.safetensors --sigma 0.1 "
     "--no-progress",
     "--overlap 16 is too large for the 8×8 frames of {d}/small.zarr: need 2*overlap <= min(tile, frame height, frame "
     "width); pass --overlap 4 or less"),
    ("seeds-0", "reconstruct {d}/adu.zarr {d}/o.zarr --sigma 1 --seeds 0 " + R,
     "--seeds 0: give K >= 2 to solve each tile K times (their mean, and the seed spread kept as uncertainty), or "
     "leave it out for one seed"),
    ("seeds-negative", "reconstruct {d}/adu.zarr {d}/o.zarr --sigma 1 --seeds -3 " + R,
     "--seeds -3: give K >= 2 to solve each tile K times (their mean, and the seed spread kept as uncertainty), or "
     "leave it out for one seed"),
    ("max-size", "ingest {d}/y.npy {d}/a.zarr --max-size 1K",
     "{d}/y.npy: declares 2 × 32 × 32 float32 = 8 KiB uncompressed, more than --max-size 1K (1 KiB); nothing was "
     "written. Check the file's header (damaged or sparse?), or pass --max-size a larger size if that size is meant"),
    ("max-size-not-a-size", "ingest {d}/y.npy {d}/a.zarr --max-size lots",
     "--max-size lots: give a size like 500G, 2TiB or a number of bytes"),
    ("masked-measurements-of-a-global-operator", "reconstruct {d}/s_nan.zarr {d}/o.zarr --sigma 0.1 --prior "
     "{d}/tiny.safetensors --no-progress",
     "{d}/s_nan.zarr: 744 of its sinogram measurements are masked (NaN/Inf ingested with --nonfinite mask); whole-frame "
     "reconstruction cannot leave measurements out yet — repair or drop those frames and ingest again"),
    ("operator-on-a-sinogram", "reconstruct {d}/s.zarr {d}/o.zarr --operator gaussian_blur --sigma 0.1 --prior "
     "{d}/tiny.safetensors --no-progress",
     "{d}/s.zarr holds sinogram measurements of `ct_parallel_beam` (geometry recorded at ingest); drop --operator "
     "gaussian_blur: the store's operator is used"),
]


@pytest.mark.parametrize("case, argv, line", BAD_INPUTS_27, ids=[c[0] for c in BAD_INPUTS_27])
def test_issue27_bad_input_gets_one_exact_line_and_writes_nothing(bad27, capsys, case, argv, line):
    from flows.cli import main

    before = sorted(p.name for p in bad27.iterdir())
    rc = main(argv.format(d=bad27).split())
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["ddiff: error: " + line.format(d=bad27)], err
    assert sorted(p.name for p in bad27.iterdir()) == before  # nothing written, no hidden leftovers


def test_metadata_is_strict_json_and_a_refused_init_leaves_no_folder(bad27, capsys):
    from flows.cli import main

    d = bad27
    with pytest.raises(storage.StorageError, match=r"saturation=nan: give a finite level"):
        storage.ingest(d / "y.npy", d / "a.zarr", saturation=float("nan"))
    st = storage.open_stack(d / "adu.zarr")
    with pytest.raises(storage.StorageError, match=r"^config.hyperparameters.tau is nan: the store's metadata must be "
                                                   r"strict JSON \(no NaN/Infinity"):
        storage.create_output(d / "o.zarr", st, storage.TilePlan(st.frame_shape, tile=32, halo=4, overlap=4),
                              {"hyperparameters": {"tau": float("nan")}})
    assert not (d / "o.zarr").exists()
    for store in ("adu.zarr", "s.zarr"):  # every stored manifest parses with a strict reader
        json.loads((d / store / "zarr.json").read_text(), parse_constant=lambda c: pytest.fail(f"{store}: {c}"))
    capsys.readouterr()
    assert main(["train", str(d / "adu.zarr"), str(d / "run"), "--init", str(d / "evil.pt"), "--steps", "1",
                 "--crop", "16", "--batch-size", "1", "--no-progress"]) == 2
    assert "refused to load" in capsys.readouterr().err and not (d / "run").exists() and not (d / "pwned").exists()


def test_storage_errors_after_the_solve_name_the_store_like_create_and_solve(flows_env, tmp_path):
    """A disk that refuses writes (RLIMIT_FSIZE 0, as a full disk would) during assembly, the pyramid,
    a label image and the audit dataset: each stage fails with the same one-line StorageWriteError
    as the create and solve stages (what, the store, errno, the fix), which the command exits 2 with."""
    import resource
    import shutil

    out = tmp_path / "out.zarr"
    flows.reconstruct_stack(params(flows_env, out))
    o = storage.open_output(out)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def refused(call) -> str:
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
        try:
            with pytest.raises(storage.StorageWriteError) as e:
                call()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        return str(e.value)

    tail = f"to {out}" + r"( \(.*\))? failed: File too large \[EFBIG\] — a file-size limit was hit \(ulimit -f, or " \
           r"the filesystem's limit\); fix that, then rerun the same command to resume"
    with storage.RunLock(out) as lock:
        shutil.rmtree(out / "_ledger" / "assembled" / "t000000")  # frame 0 to assemble again
        msg = refused(lambda: storage.assemble_frame(out, 0, run_id=lock.run_id))
        assert __import__("re").fullmatch(r"writing the assembled frame 0 \(core 0\) " + tail, msg), msg
        storage.assemble_frame(out, 0, run_id=lock.run_id)
        shutil.rmtree(out / "_ledger" / "pyramid" / "t000000")
        msg = refused(lambda: storage.assemble_frame(out, 0, run_id=lock.run_id))
        assert __import__("re").fullmatch(r"writing the pyramid levels of frame 0 " + tail, msg), msg
        flag = np.ones(o.recon().shape[-2:], bool)
        msg = refused(lambda: storage.write_flag_label(out, "audit_flags", 1, flag, run_id=lock.run_id))
        assert __import__("re").fullmatch(r"writing frame 1 of the label image labels/audit_flags " + tail, msg), msg
        msg = refused(lambda: storage.create_audit(o, maps=True))
        assert __import__("re").fullmatch(r"writing the audit dataset \(audit/\) " + tail, msg), msg
    msg = refused(lambda: storage.RunLock(out).acquire())
    assert __import__("re").fullmatch(r"writing the run lock " + tail, msg) and storage.RunLock.holder(out) is None


def _sparse_tiff(path, w=4_000_000, h=4_000_000):
    """A 122-byte uint16 TIFF declaring w × h pixels in one strip of StripByteCounts 0 (29 TiB declared)."""
    import struct

    tags = [(256, 4, w), (257, 4, h), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1), (278, 4, h),
            (279, 4, 0)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", t, typ, 1) + (struct.pack("<HH", v, 0) if typ == 3 else struct.pack("<I", v))
        for t, typ, v in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd)
    return path


def test_a_declared_size_beyond_the_disk_is_refused_before_writing(tmp_path, capsys):
    """A sparse TIFF declaring 4·10⁶ × 4·10⁶ pixels (a 122-byte file) is refused in one line, in
    about a second, before any folder exists — from the command line and from Python."""
    import re
    import time

    from flows.cli import main

    src = _sparse_tiff(tmp_path / "huge.tif")
    t0 = time.perf_counter()
    assert main(["ingest", str(src), str(tmp_path / "h.zarr"), "--no-progress"]) == 2
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(
        rf"ddiff: error: {re.escape(str(src))}: declares 4000000 × 4000000 uint16 = 29.1 TiB uncompressed, more than "
        rf"the [0-9.]+ [KMGT]iB free on the disk of {re.escape(str(tmp_path))}; nothing was written\. Check the file's "
        r"header \(damaged or sparse\?\), free space or choose a store on a larger disk, or pass --max-size a larger "
        r"size if the data compresses that well", err[0]), err
    with pytest.raises(storage.StorageError, match="29.1 TiB uncompressed"):
        storage.ingest(src, tmp_path / "h.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.tif"] and seconds < 30, seconds


def test_the_python_spellings_the_issue_found_are_flags_on_the_command_line():
    from flows.console import cli_spelling

    assert cli_spelling("noise.offset = 5 and noise.read_noise = 2; brick_z=8, overlap_z=2; saturation=-5; "
                        "max_size=1K; pass max_size= a larger size; give a store written by `ddiff ingest` "
                        "(storage.ingest)") == (
        "--offset = 5 and --read-noise = 2; --brick-z 8, --overlap-z 2; --saturation -5; --max-size 1K; pass "
        "--max-size a larger size; give a store written by `ddiff ingest`")
