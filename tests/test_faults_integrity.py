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
    ingested with ``nonfinite='mask'`` — two frames with no valid measurement."""
    d = tmp_path_factory.mktemp("holes")
    y = np.load(flows_env["y"])  # (2, 1, 48, 40)
    y = np.concatenate([y, y[:1]]).astype(np.float32)
    y[2] = np.nan
    np.save(d / "y.npy", y)
    mask = np.ones((3, 48, 40), np.uint8)
    mask[1] = 0
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
