"""Volumes through the pipeline (issue 19): a widefield z-stack ingested with its voxel sizes,
reconstructed as bricks by the volume solver through the CLI, resumed after an interruption (same
bytes), and audited per plane and per brick with the 3-D forward model.

Data: 8 planes of 32 × 32 cut from scikit-image's ``camera`` along a path that drifts 0.6 / 0.4 px
per plane (structure varying smoothly in z), blurred by ``Widefield3D`` (NA 1.0 water, 520 nm,
100 nm pixels, 250 nm planes, 5 × 9 × 9 kernel: halo 4 px, halo_z 2 planes) + Gaussian noise
σ = 0.01 (stored units [0, 1]; 0.02 in model space). Embedded prior, 8 steps.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import flows
import operators
import storage
from flows import tiles as T
from flows.cli import main
from flows.volume_audit import brick_flags, remeasure, volume_statistics
from storage.bricks import ZPlan, reflect_index

Z, N, SIGMA = 8, 32, 0.01
OPTICS = dict(na=1.0, wavelength=0.52, n_immersion=1.33, pixel_size=0.1, z_step=0.25, size=(5, 9))
RECON = ["--operator", "widefield3d", "--op-param", "na=1.0", "--op-param", "n_immersion=1.33",
         "--op-param", "size=[5,9]", "--sigma", str(SIGMA), "--prior", "default", "--steps", "8",
         "--tile", "32", "--brick-z", "4", "--no-progress"]  # 2 bricks: z 0-3 and 4-7, each fitting all 8 planes


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - b) ** 2)))


@pytest.fixture(scope="module")
def zstack(tmp_path_factory, prefect_harness):
    from scipy import ndimage
    from skimage import data

    d = tmp_path_factory.mktemp("zstack")
    img = ndimage.zoom(data.camera().astype(np.float32)[100:300, 150:350] / 255.0, 0.5, order=1)
    x = np.stack([ndimage.shift(img, (0.6 * z, 0.4 * z), order=3, mode="reflect")[20:20 + N, 30:30 + N]
                  for z in range(Z)]).astype(np.float32)
    A = operators.Widefield3D(**OPTICS)
    with torch.no_grad():  # in model space (2·stored − 1), where the pipeline applies A
        ym = A(torch.from_numpy(2 * x - 1)[None, None])
    ym = ym + 2 * SIGMA * torch.randn(ym.shape, generator=torch.Generator().manual_seed(1))
    np.save(d / "y.npy", ((ym[0, 0].numpy() + 1) / 2).astype(np.float32))
    assert main(["ingest", str(d / "y.npy"), str(d / "in.zarr"), "--axes", "zyx", "--pixel-size", "0.1",
                 "--z-step", "0.25", "--intensity", "0,1", "--no-progress"]) == 0
    out = d / "out.zarr"
    assert main(["reconstruct", str(d / "in.zarr"), str(out), *RECON]) == 0
    return {"dir": d, "x": x, "y": np.load(d / "y.npy"), "input": d / "in.zarr", "out": out}


def test_zplan_reads_mirrored_context_and_partitions_planes():
    assert reflect_index(np.arange(-3, 11), 8).tolist() == [3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 7, 6, 5, 4]
    zp = ZPlan(8, 3, halo=2, overlap=1)
    assert [zp.core(j) for j in range(zp.n_chunks)] == [(0, 3), (3, 6), (6, 8)]
    assert zp.blend(1) == (2, 7) and zp.read(1).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 6]
    assert zp.read(0).tolist() == [2, 1, 0, 1, 2, 3, 4, 5] and zp.offset(0) == 2 and zp.offset(1) == 3


def test_volume_reconstructed_end_to_end_through_the_cli(zstack):
    out = storage.open_output(zstack["out"])
    cfg = out.manifest["config"]
    # the voxel sizes came from the store (µm), the volume solver from the operator
    assert cfg["operator"]["params"]["pixel_size"] == 0.1 and cfg["operator"]["params"]["z_step"] == 0.25
    assert cfg["solver"] == "volume_ddiff" and cfg["volume"]["zplan"] == {"planes": 8, "brick": 4, "halo": 2, "overlap": 4}
    assert out.complete and out.layout.axes == "zyx" and out.geometry[0] == {"z": 0.25, "y": 0.1, "x": 0.1}
    xh = out.recon()[:, 0]
    gain = _psnr(xh, zstack["x"]) - _psnr(zstack["y"], zstack["x"])
    assert gain > 2.0, gain  # deconvolved, not just copied (scratch run, 10 steps, one brick: +3.5 dB)
    chi = out.open_diagnostics()["chi2_nu"].values  # solver's per (plane, tile) fit on blend windows
    assert chi.shape == (Z, 1) and np.all((chi > 0.7) & (chi < 1.3)), chi


def test_interrupted_volume_run_resumes_to_the_same_bytes(zstack):
    resumed = zstack["dir"] / "resumed.zarr"
    a = flows.cli.build_parser().parse_args(["reconstruct", str(zstack["input"]), str(resumed), *RECON])
    p = flows.cli._reconstruct_params(a).model_copy(update={"fail_after_tiles": 5, "artifacts": False})
    with pytest.raises(T.InjectedFailure):
        flows.reconstruct_stack(p)
    o = storage.open_output(resumed)
    assert o.ledger.count("solved") == 5 and not o.complete  # a brick batch stopped half-written
    r = flows.reconstruct_stack(p.model_copy(update={"fail_after_tiles": None}))  # the same command again
    assert r["skipped"] == 5 and r["solved"] == Z - 5 and r["complete"]
    np.testing.assert_array_equal(storage.open_output(resumed).recon()[:], storage.open_output(zstack["out"]).recon()[:])
    assert storage.open_output(resumed).ledger.count("solved") == Z


def test_volume_audit_per_plane_and_per_brick(zstack):
    import xarray as xr
    from zarr.storage import LocalStore

    r = flows.audit_reconstruction(flows.AuditParams(output_store=str(zstack["out"]), window=8, artifacts=False))
    assert r["frames_flagged"] == [] and r["volume"]["bricks_flagged"] == []  # honest data: nothing flagged
    ds = xr.open_zarr(LocalStore(zstack["out"], read_only=True), group="audit_volume", consolidated=False,
                      zarr_format=3).load()
    assert dict(ds.sizes) == {"t": 1, "z": Z, "brick": 2, "tile": 1} and ds["z"].attrs["units"] == "micrometer"
    np.testing.assert_allclose(ds["z"].values, 0.25 * np.arange(Z))
    plane = ds["plane_chi2_nu"].values[0]
    # planes within halo_z = 2 of the stack's ends are not audited (light from planes never recorded)
    assert np.isnan(plane[[0, 1, 6, 7]]).all() and ds["plane_audited"].values[0].tolist() == [False] * 2 + [True] * 4 + [False] * 2
    assert np.all((plane[2:6] > 0.8) & (plane[2:6] < 1.2)), plane
    # the per-frame audit (audit/) holds the same per-plane numbers
    frames = xr.open_zarr(LocalStore(zstack["out"], read_only=True), group="audit", consolidated=False, zarr_format=3)
    np.testing.assert_allclose(frames["chi2_nu"].values, plane, rtol=1e-6)
    bc = ds["brick_chi2_nu"].values
    assert np.isfinite(bc).all() and np.all((bc > 0.7) & (bc < 1.3)), bc
    # a planted error in one brick's core (2 planes × 8 × 8 pixels, +5 σ) is flagged there and not in the other
    out = storage.open_output(zstack["out"])
    _, y, Ax, obs, noise = remeasure(out, storage.open_input(out), 0)
    y[4:6, :, 2:10, 2:10] += 5 * 2 * SIGMA
    zplan = ZPlan(**out.manifest["config"]["volume"]["zplan"])
    st = volume_statistics(y, Ax, obs, noise, zplan, out.plan)
    flags = brick_flags(st["brick"][3], 0.05, "sidak")
    assert np.argwhere(flags).tolist() == [[1, 0]], st["brick"][0]


def test_bad_volume_runs_are_one_line_and_write_nothing(zstack, tmp_path, capsys):
    # a store without recorded voxel sizes: widefield3d needs them (or the --op-param)
    np.save(tmp_path / "y.npy", zstack["y"])
    bare = tmp_path / "bare.zarr"
    storage.ingest(tmp_path / "y.npy", bare, axes="zyx", intensity=(0, 1))
    out = tmp_path / "out.zarr"
    assert main(["reconstruct", str(bare), str(out), *RECON]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no physical x step" in err[0] and "--pixel-size" in err[0], err
    # a solver with no volume form
    assert main(["reconstruct", str(zstack["input"]), str(out), *RECON, "--solver", "dps"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not solve volumes" in err[0], err
    assert not out.exists()


def test_noise_auto_on_a_zstack_estimates_sigma_from_its_planes(zstack):
    """``--noise auto`` on a volume store: σ from the planes (every z of the sampled frames), in the
    stored units, within 10 % of the simulated σ = 0.01 and recorded the way a run would."""
    from flows.noise import resolve_noise
    from flows.params import NoiseSpec

    spec, est = resolve_noise(NoiseSpec(kind="auto"), storage.open_stack(zstack["input"]))
    assert spec.kind == "gaussian" and est["kind"] == "gaussian"
    assert abs(spec.sigma / SIGMA - 1) < 0.1, (spec.sigma, est["sigma_se"])


# ---- a CT volume scanned slice by slice: a sinogram store whose frames are consecutive slices ----

# slow (203 s at load ~8; 244 s in issue 29): five CLI/flow runs on 8 × 64² sinograms (slices, volume,
# interrupted + resumed volume); the +0.25 dB volume-over-slices claim needs 64² slices and 10 steps
@pytest.mark.slow
def test_sinogram_slices_as_one_volume_couple_in_z_fit_each_slice_and_resume(prefect_harness, tmp_path, capsys):
    """`--solver volume_ddiff` on a sinogram store: z-bricks of 4 slices (+2 of context each side) with
    the through-plane coupling; beats the slice-by-slice default (measured +0.58 dB here, 8 × 64²,
    24 views, 10 steps; `benchmarks/ct_volume_fit.py`: +0.48 / +0.36 dB at 30 steps, seeds 0 / 1), every slice
    fitted to its own noise level (none above it), an interrupted run resumes to the same bytes."""
    from scipy import ndimage
    from skimage import data

    img = ndimage.zoom(data.camera().astype(np.float32)[100:300, 150:350] / 255.0, 0.64, order=1)
    x = np.stack([ndimage.shift(img, (0.6 * z, 0.4 * z), order=3, mode="reflect")[10:74, 15:79]
                  for z in range(8)]).astype(np.float32)
    sino = operators.get_operator("ct_parallel_beam", angles=24)(torch.from_numpy(x)[:, None]).numpy()[:, 0]
    sigma = 0.02 * float(sino.max())
    np.save(tmp_path / "s.npy", (sino + sigma * np.random.default_rng(0).standard_normal(sino.shape)).astype(np.float32))
    assert main(["ingest", str(tmp_path / "s.npy"), str(tmp_path / "s.zarr"), "--domain", "sinogram", "--angles", "24",
                 "--intensity", "0,1", "--no-progress"]) == 0
    common = [str(tmp_path / "s.zarr"), "--sigma", str(sigma), "--steps", "10", "--threads", "2", "--no-progress"]
    assert main(["reconstruct", common[0], str(tmp_path / "slices.zarr"), *common[1:]]) == 0
    assert main(["reconstruct", common[0], str(tmp_path / "vol.zarr"), *common[1:], "--solver", "volume_ddiff",
                 "--brick-z", "4"]) == 0
    got = {k: np.asarray(storage.open_output(tmp_path / f"{k}.zarr").recon()[:])[:, 0] for k in ("slices", "vol")}
    gain = _psnr(got["vol"], x) - _psnr(got["slices"], x)
    assert gain > 0.25, gain
    chi = np.asarray(storage.open_output(tmp_path / "vol.zarr").open_diagnostics()["chi2_nu"].values).ravel()
    assert np.all(chi < 1.01) and np.all(chi > 0.85), chi  # each slice's own measurements, at its own noise level
    p = flows.ReconstructParams(input_store=str(tmp_path / "s.zarr"), output_store=str(tmp_path / "resumed.zarr"),
                                noise={"sigma": sigma}, solver={"name": "volume_ddiff", "steps": 10}, brick_z=4,
                                execution={"torch_threads": 2}, artifacts=False, fail_after_tiles=4)
    with pytest.raises(Exception, match="interrupted deliberately"):
        flows.reconstruct_stack(p)
    assert storage.open_output(p.output_store).ledger.count("solved") == 4  # the first brick's core slices
    res = flows.reconstruct_stack(p.model_copy(update={"fail_after_tiles": None}))
    assert res["skipped"] == 4 and res["solved"] == 4
    assert np.asarray(storage.open_output(p.output_store).recon()[:]).tobytes() == \
        np.asarray(storage.open_output(tmp_path / "vol.zarr").recon()[:]).tobytes()
    capsys.readouterr()
    assert main(["reconstruct", *common[:1], str(tmp_path / "seeds.zarr"), *common[1:], "--solver", "volume_ddiff",
                 "--seeds", "2"]) == 2
    assert "seed spread maps of volumes are not built yet" in capsys.readouterr().err
