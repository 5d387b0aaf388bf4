"""The ``ddiff`` command line: help for every command, one-line errors with exit code 2, and a real
ingest -> reconstruct -> audit round trip through the CLI (tiny prior, Prefect test harness)."""
from __future__ import annotations

import numpy as np
import pytest

from flows.cli import main

COMMANDS = ["demo", "ingest", "reconstruct", "audit", "calibrate", "train", "bench"]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert f"usage: ddiff {cmd}" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    rc = main(["reconstruct", str(tmp_path / "missing.zarr"), str(tmp_path / "out.zarr"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("ddiff: error:") and "ddiff ingest" in err[0]
    rc = main(["ingest", str(tmp_path / "nothing.tif"), str(tmp_path / "in.zarr"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0]
    rc = main(["calibrate", str(tmp_path / "refs.zarr"), str(tmp_path / "rec.json"), "--sigma", "0.02", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "ddiff ingest" in err[0] and not (tmp_path / "rec.json").exists()


def test_cli_round_trip(flows_env, tmp_path, capsys):
    src = tmp_path / "y.npy"
    np.save(src, np.load(flows_env["y"]))
    store, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    assert main(["ingest", str(src), str(store), "--axes", "tcyx", "--intensity", "0,1", "--no-progress"]) == 0
    common = ["--prior", str(flows_env["prior"]), "--operator", "gaussian_blur", "--op-param", "kernel_size=7",
              "--op-param", "std=1.0", "--steps", "4", "--tile", "24", "--overlap", "4", "--no-progress"]
    # on a local Dask cluster the flow starts itself (--dask-workers), as a user would
    assert main(["reconstruct", str(store), str(out), *common, "--dask-workers", "2"]) == 0
    assert "done" in capsys.readouterr().out
    assert main(["audit", str(out), "--window", "8", "--no-progress"]) == 0
    assert (tmp_path / "out.zarr.audit" / "audit_report.md").is_file()
    # same output, different configuration: refused in one line, nothing replaced
    capsys.readouterr()
    assert main(["reconstruct", str(store), str(out), *common, "--seed", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different configuration" in err[0] and "pass --overwrite" in err[0]
