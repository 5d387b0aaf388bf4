"""One widefield z-stack through the real commands (issue 19): ``ddiff ingest`` (axes ZYX, voxel size
in µm) -> ``ddiff reconstruct --operator widefield3d`` (solved as bricks by the coupled volume
solver; interrupted with Ctrl-C after its first brick, then resumed by rerunning the same command)
-> ``ddiff audit`` (per plane and per brick, with the 3-D forward model); and the same stack through
today's 2-D path (slice by slice, ``--operator microscopy_widefield``: the in-focus widefield PSF of
the same optics) for comparison, same prior, same steps.

Room: ``benchmarks`` — a script; simulates the data (no downloads) and runs the ``ddiff`` console
command as a user would (one subprocess per command; :func:`modalities.ddiff`).

Data: ``benchmarks/volume.py``'s phantom — a held-out scikit-image picture seen through an affine map
that changes smoothly with z — ``--planes`` × ``--size``², blurred by ``Widefield3D`` (NA 1.0 water,
n 1.33, 520 nm, 100 nm pixels, 250 nm planes, 9 × 33 × 33 kernel) + Gaussian noise ``--sigma``
(model units; half that in the stored [0, 1] units the commands are given).

Printed: PSNR against the truth (whole volume, and per plane), the through-plane ratio
``‖D_z x̂‖ / ‖D_z x‖`` (1 ideal, > 1 flicker between planes), χ²_ν per plane under the TRUE 3-D model
(planes within halo_z of the ends and pixels within the halo of the edges left out, as the audit
does; the volume run's numbers are the audit's own, ``audit_volume/``), bricks flagged, the wall time
of every command, and whether the resumed output is byte-identical to an uninterrupted run.

    OMP_NUM_THREADS=2 nice python benchmarks/volume_cli.py --planes 16 --size 64 --steps 30

(On a loaded machine give the commands' temporary Prefect server time to start:
``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=600``.)
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))


def _script(name: str):
    """A sibling benchmark script as a module (its helpers are reused, not copied)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


OPTICS = {"na": 1.0, "wavelength": 0.52, "n_immersion": 1.33, "pixel_size": 0.1, "z_step": 0.25}


def main(argv=None) -> None:
    import torch

    import storage
    from operators import Widefield3D

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--planes", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--sigma", type=float, default=0.02, help="noise σ in model units")
    ap.add_argument("--brick-z", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--no-byte-check", action="store_true", help="skip the uninterrupted reference run")
    a = ap.parse_args(argv)
    mod, vol = _script("modalities"), _script("volume")
    work = Path(a.work or tempfile.mkdtemp(prefix="ddiff-volume-cli-"))
    work.mkdir(parents=True, exist_ok=True)

    truth = vol.volumes("heldout", 1, a.planes, a.size, a.seed)  # (1, 1, Z, N, N) model space
    A = Widefield3D(**OPTICS, size=(9, 33))
    with torch.no_grad():
        y = A(truth) + a.sigma * torch.randn(truth.shape, generator=torch.Generator().manual_seed(a.seed + 1))
    np.save(work / "y.npy", ((y[0, 0].numpy() + 1) / 2).astype(np.float32))  # stored units [0, 1]
    sd = a.sigma / 2
    store = work / "in.zarr"
    common = ["--sigma", f"{sd:g}", "--steps", str(a.steps), "--tile", str(a.size), "--threads", "2"]
    volume = ["--operator", "widefield3d", *[f"--op-param={k}={v}" for k, v in OPTICS.items() if k not in
                                             ("pixel_size", "z_step")],
              "--op-param=size=[9,33]", "--brick-z", str(a.brick_z), "--batch-size", "1", *common]
    sbs = ["--operator", "microscopy_widefield", *[f"--op-param={k}={OPTICS[k]}" for k in ("na", "wavelength",
                                                                                          "pixel_size")],
           "--op-param=kernel_size=33", "--batch-size", "4", *common]
    times, cmds = {}, {}

    def run(name, *args, **kw):
        rc, sec, out = mod.ddiff(*args, **kw)
        cmds[name], times[name] = "ddiff " + " ".join(args), sec
        print(f"[{sec:7.1f}s rc {rc}] ddiff {' '.join(args)}\n    {out[-300:]}", flush=True)
        return rc

    assert run("ingest", "ingest", str(work / "y.npy"), str(store), "--axes", "ZYX", "--pixel-size", "0.1",
               "--z-step", "0.25", "--intensity", "0,1", "--overwrite") == 0
    out_v = work / "volume.zarr"
    rc = run("volume (interrupted)", "reconstruct", str(store), str(out_v), *volume, interrupt_after=1,
             ledger=out_v / "_ledger")
    if rc != 130:
        raise SystemExit(f"the interrupted run ended with rc {rc}, not 130 (Ctrl-C); see its output above")
    done_before = storage.open_output(out_v).ledger.count("solved")
    assert run("volume (resumed)", "reconstruct", str(store), str(out_v), *volume) == 0
    same = None
    if not a.no_byte_check:
        ref = work / "volume_uninterrupted.zarr"
        assert run("volume (uninterrupted)", "reconstruct", str(store), str(ref), *volume) == 0
        same = bool(np.array_equal(storage.open_output(ref).recon()[:], storage.open_output(out_v).recon()[:],
                                   equal_nan=True))
    out_s = work / "slices.zarr"
    assert run("slice by slice", "reconstruct", str(store), str(out_s), *sbs) == 0
    assert run("audit volume", "audit", str(out_v), "--window", "16") == 0
    assert run("audit slices", "audit", str(out_s), "--window", "16") == 0
    report(a, truth, y, A, out_v, out_s, times, cmds, rc, done_before, same, vol)


def _chi2_planes(xh, y, A, sigma: float) -> np.ndarray:
    """χ²_ν per plane of ``y`` against ``A(x̂)`` (model space), halo_z planes and halo pixels left out."""
    import torch

    with torch.no_grad():
        r = (y - A(xh.to(y.dtype)))[0, 0] / sigma
    h, hz = A.halo, A.halo_z
    chi = (r[:, h:-h, h:-h] ** 2).mean(dim=(1, 2)).double().numpy()
    chi[:hz], chi[len(chi) - hz:] = np.nan, np.nan
    return chi


def report(a, truth, y, A, out_v, out_s, times, cmds, rc_interrupt, done_before, same, vol) -> None:
    import torch
    import xarray as xr
    from zarr.storage import LocalStore

    import storage

    x01 = (truth[0, 0].numpy() + 1) / 2
    rows = {"measured (blurred, noisy)": (y[0, 0].numpy() + 1) / 2}
    for name, path in (("slice by slice (2-D path, in-focus PSF)", out_s), ("volume, coupled (bricks)", out_v)):
        rows[name] = storage.open_output(path).recon()[:, 0]
    audit = xr.open_zarr(LocalStore(out_v, read_only=True), group="audit_volume", consolidated=False,
                         zarr_format=3).load()
    print(f"\n{a.planes} planes × {a.size}², Widefield3D NA 1.0 water, 9×33×33 kernel, σ = {a.sigma} (model); "
          f"prior default, {a.steps} steps; brick_z {a.brick_z}; seed {a.seed}")
    print(f"{'':42s} {'PSNR':>6s} {'Δz ratio':>8s} {'χ²_ν (3-D model), audited planes':>34s}")
    for name, xh in rows.items():
        xm = torch.from_numpy(2 * np.asarray(xh, np.float32) - 1)[None, None]
        p = 10 * np.log10(1 / np.mean((np.clip(xh, 0, 1) - x01) ** 2))
        _, ratio = vol.through_plane(xm, truth)
        chi = _chi2_planes(xm, y, A, a.sigma)
        ok = np.isfinite(chi)
        print(f"{name:42s} {p:6.2f} {ratio:8.3f}   median {np.median(chi[ok]):.3f} range {chi[ok].min():.3f}–{chi[ok].max():.3f}")
    pc = audit["plane_chi2_nu"].values[0]
    print(f"\nvolume audit (ddiff audit, audit_volume/): per-plane χ²_ν {np.round(pc, 3).tolist()}")
    print(f"bricks flagged: {int(audit['brick_flag'].values.sum())} of {audit['brick_flag'].size}; "
          f"brick χ²_ν {np.round(audit['brick_chi2_nu'].values, 3).tolist()}")
    print(f"interrupt: Ctrl-C after the first brick (rc {rc_interrupt}, {done_before} plane-tiles in the ledger); "
          f"resumed output byte-identical to an uninterrupted run: {same}")
    print("wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
