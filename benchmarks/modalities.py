"""Every modality through the real commands: ``ddiff ingest`` -> ``ddiff reconstruct`` (interrupted
with Ctrl-C after its first frame, then resumed by rerunning the same command) -> ``ddiff audit``.

Room: ``benchmarks`` — a script; simulates the data (no downloads), runs the ``ddiff`` console
command as a user would (one subprocess per command), and prints one table: PSNR of the
reconstruction and of the modality's classical baseline against the truth, per frame, χ²_ν per
frame, frames flagged by the audit, and whether the resumed output is byte-identical to an
uninterrupted run of the same command.

Modalities (truths in physical units [0, 1]; frames of ``--size`` pixels):

* ``ct``    Shepp–Logan variants; sparse-view sinograms (``size // 2`` angles over 180°), Gaussian
            noise 2 % of the peak; baseline FBP (ramp filter). Whole frames.
* ``mri``   held-out squares of scikit-image pictures; single-coil Cartesian k-space, 4× accelerated
            (variable-density lines), complex noise σ = 0.02; baseline zero-filled inverse FFT. Whole frames.
* ``sr``    the same pictures, ×2 bicubic downsampling, σ = 0.025; baseline bicubic upsampling. Tiles.
* ``astro`` held-out crops of hubble_deep_field, Moffat PSF (FWHM 3 px), σ = 0.01; baseline
            Richardson–Lucy at its best iteration count in {5, 10, 20, 40} (an oracle choice). Tiles.

    OMP_NUM_THREADS=2 nice python benchmarks/modalities.py --size 64 --frames 4 --steps 100
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _psnr(x: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """PSNR (dB) per frame of physical images in [0, 1] (clipped), data range 1."""
    mse = ((np.clip(x, 0, 1) - truth) ** 2).reshape(len(truth), -1).mean(1)
    return 10 * np.log10(1 / mse)


def _pictures(n: int, frames: int) -> np.ndarray:
    from skimage.transform import resize

    from flows.sample_data import sample_images

    _, held, _ = sample_images(("camera", "coins", "astronaut", "moon", "text", "page", "clock", "chelsea")[:frames])
    return np.stack([resize((h[: min(h.shape), : min(h.shape)] + 1) / 2, (n, n), anti_aliasing=True)
                     for h in held])[:, None].astype(np.float32)


def simulate(kind: str, n: int, frames: int, folder: Path) -> dict:
    """Write the source file of ``kind``; return the truth, the ingest options and the baseline."""
    import torch

    import operators
    from operators.fourier import fft2c

    g = np.random.default_rng(0)
    if kind == "ct":
        from skimage.data import shepp_logan_phantom
        from skimage.transform import iradon, resize

        base = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)
        truth = np.stack([np.rot90(base, k) if k < 4 else base.T for k in range(frames)])[:, None].copy()
        A = operators.get_operator("ct_parallel_beam", angles=n // 2)
        sino = A(torch.from_numpy(truth)).numpy()
        sigma = 0.02 * float(sino.max())
        sino = (sino + sigma * g.standard_normal(sino.shape)).astype(np.float32)
        np.save(folder / "sino.npy", sino[:, 0])
        theta = A.theta_deg.numpy()
        np.savetxt(folder / "angles.txt", theta)
        base_rec = np.stack([iradon(s[0].T.astype(np.float64), theta=theta, output_size=n, circle=True) for s in sino])
        return {"truth": truth, "source": "sino.npy", "ingest": ["--domain", "sinogram", "--angles",
                str(folder / "angles.txt")], "sigma": sigma, "baseline": base_rec[:, None], "baseline_name": "FBP"}
    if kind == "mri":
        truth = _pictures(n, frames)
        M = operators.get_operator("mri_cartesian", acceleration=4, image_size=n, seed=0)
        mask = M.mask().numpy().astype(bool)
        sigma = 0.02
        k = fft2c(torch.from_numpy(truth[:, 0]).to(torch.complex64)).numpy()
        k = ((k + sigma * (g.standard_normal(k.shape) + 1j * g.standard_normal(k.shape))) * mask).astype(np.complex64)
        np.save(folder / "kspace.npy", k)
        np.save(folder / "mask.npy", mask[:, 0])
        from operators.fourier import ifft2c

        zf = ifft2c(torch.from_numpy(k)).real.numpy()[:, None]
        return {"truth": truth, "source": "kspace.npy", "ingest": ["--domain", "kspace", "--sampling-mask", str(folder / "mask.npy")],
                "sigma": sigma, "baseline": zf, "baseline_name": "zero-filled IFFT"}
    if kind == "sr":
        from skimage.transform import resize

        truth = _pictures(n, frames)
        A = operators.get_operator("super_resolution", scale=2)
        sigma = 0.025
        y = (A(torch.from_numpy(2 * truth - 1)).numpy() + 1) / 2 + sigma * g.standard_normal((frames, 1, n // 2, n // 2))
        np.save(folder / "lowres.npy", y.astype(np.float32))
        bic = np.stack([resize(v[0], (n, n), order=3) for v in y])[:, None]
        return {"truth": truth, "source": "lowres.npy", "ingest": ["--axes", "tcyx", "--intensity", "0,1"],
                "sigma": sigma, "operator": ["--operator", "super_resolution", "--op-param", "scale=2"],
                "baseline": bic, "baseline_name": "bicubic"}
    if kind == "astro":
        from skimage.restoration import richardson_lucy

        from flows.sample_data import crops, sample_images

        _, held, _ = sample_images(("hubble_deep_field",))
        truth = (crops(held, frames, n, seed=0) + 1) / 2
        A = operators.get_operator("astro_psf", fwhm=3.0)
        sigma = 0.01
        y = (A(torch.from_numpy(2 * truth - 1)).numpy() + 1) / 2 + sigma * g.standard_normal(truth.shape)
        np.save(folder / "sky.npy", y.astype(np.float32))
        psf = A.kernel.numpy().squeeze()
        rls = [np.stack([richardson_lucy(np.clip(v[0], 1e-6, None), psf, num_iter=it, clip=False) for v in y])[:, None]
               for it in (5, 10, 20, 40)]
        best = max(rls, key=lambda r: _psnr(r, truth).mean())
        return {"truth": truth, "source": "sky.npy", "ingest": ["--axes", "tcyx", "--intensity", "0,1"],
                "sigma": sigma, "operator": ["--operator", "astro_psf", "--op-param", "fwhm=3.0"],
                "baseline": best, "baseline_name": "Richardson–Lucy (best iters)"}
    raise ValueError(kind)


def ddiff(*args: str, interrupt_after: int | None = None, ledger: Path | None = None) -> tuple[int, float, str]:
    """Run ``ddiff ARGS`` (the console command); with ``interrupt_after``, press Ctrl-C (SIGINT) once
    that many frames/tiles are in the output's ledger. Returns (exit code, seconds, its output on one line)."""
    cmd = [sys.executable, "-m", "flows.cli", *args, "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if interrupt_after is not None:
        while proc.poll() is None:
            if ledger is not None and len(list(ledger.glob("solved/t*/k*.json"))) >= interrupt_after:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.2)
    out, _ = proc.communicate()
    return proc.returncode, time.perf_counter() - t0, " ".join(out.split())  # rich wraps long lines


def run(kind: str, a, work: Path) -> dict:
    import storage

    folder = work / kind
    folder.mkdir(parents=True, exist_ok=True)
    sim = simulate(kind, a.size, a.frames, folder)
    store, out, ref = folder / "in.zarr", folder / "out.zarr", folder / "uninterrupted.zarr"
    rc, t_ing, msg = ddiff("ingest", str(folder / sim["source"]), str(store), *sim["ingest"])
    if rc:
        raise SystemExit(f"{kind}: ingest failed: {msg}")
    rec = ["--noise", "gaussian", "--sigma", f"{sim['sigma']:.6g}", "--steps", str(a.steps), "--batch-size", "1", "--threads", str(a.threads),
           *sim.get("operator", []), *(["--tile", str(a.size // 4), "--overlap", str(a.size // 16)]
                                       if "operator" in sim else [])]
    rc1, t1, msg1 = ddiff("reconstruct", str(store), str(out), *rec, interrupt_after=1, ledger=out / "_ledger")
    rc2, t2, msg2 = ddiff("reconstruct", str(store), str(out), *rec)
    if rc2:
        raise SystemExit(f"{kind}: resumed reconstruct failed: {msg2}")
    identical = None
    if a.identity:
        rc3, _, msg3 = ddiff("reconstruct", str(store), str(ref), *rec)
        identical = storage.open_output(out).recon()[:].tobytes() == storage.open_output(ref).recon()[:].tobytes()
    rc4, t4, msg4 = ddiff("audit", str(out))
    o = storage.open_output(out)
    x = np.asarray(o.recon()[:])
    chi = np.asarray(o.open_diagnostics()["chi2_nu"].values)
    audit = o.group()["audit"]
    return {"kind": kind, "path": "frames" if storage.is_frame_output(o) else f"tiles ({o.plan.n_tiles}/frame)",
            "psnr": _psnr(x, sim["truth"]), "base": _psnr(sim["baseline"], sim["truth"]),
            "baseline": sim["baseline_name"], "chi_frame": np.asarray(audit["chi2_nu"][:]), "chi_tiles": chi,
            "flagged": int(np.asarray(audit["frame_flag"][:]).sum()), "interrupted": rc1 == 130,
            "resume": _counts(msg2), "identical": identical, "seconds": t1 + t2}


def _counts(line: str) -> str:
    """'2 solved, 1 resumed' from the reconstruct command's output."""
    import re

    m = re.search(r"(\d+) tiles solved, (\d+) resumed", line)
    return f"{m[1]} solved, {m[2]} resumed" if m else line[-60:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100, help="diffusion steps (the product default: 100)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modalities", default="ct,mri,sr,astro")
    ap.add_argument("--no-identity", dest="identity", action="store_false",
                    help="skip the uninterrupted reference run (byte-identity of the resumed output)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="ddiff-modalities-"))
    print(f"# modalities: {a.size} px, {a.frames} frames, {a.steps} steps, {a.threads} threads; work {work}\n")
    print("| modality | path | baseline | PSNR baseline (dB) | PSNR DDiff (dB) | Δ per frame | χ²_ν per frame "
          "(audit) | flagged | Ctrl-C + resume | identical bytes | reconstruct s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in a.modalities.split(","):
        r = run(kind, a, work)
        d = r["psnr"] - r["base"]
        print(f"| {kind} | {r['path']} | {r['baseline']} | {r['base'].mean():.2f} | {r['psnr'].mean():.2f} | "
              f"{' '.join(f'{v:+.2f}' for v in d)} | {' '.join(f'{v:.3f}' for v in r['chi_frame'])} | "
              f"{r['flagged']}/{len(d)} | {'yes' if r['interrupted'] else 'no'}: {r['resume']} | "
              f"{r['identical']} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
