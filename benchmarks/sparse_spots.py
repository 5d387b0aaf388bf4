"""Sparse bright spots through widefield blur and a camera: are the restored peaks kept above the
ingest range (issue 28, item 3)?

Truth: a 20 e⁻ background with ``--spots`` Gaussian spots per frame (σ ``--width`` px, default 0.7:
narrower than the PSF) whose peaks are drawn in ``--peaks`` (default 300–900 e⁻); widefield Gaussian PSF (σ 1.56 px); a camera
(gain 2.5 e⁻/ADU, offset 100 ADU, read noise 3 e⁻, integer ADU). Ingested with the DEFAULT
intensity map (the 0.1/99.9th percentiles of the raw counts), reconstructed with the defaults
(DDiff self-calibrated, the shipped prior, ``--noise`` given), through the flows. Per spot: the
truth's peak, the reconstruction's peak (max in a 3×3 window) and that peak's noise — the spread
of the reconstructed peak over ``--seeds`` noise realisations of the same truth.

    .venv/bin/python benchmarks/sparse_spots.py [--frames 2] [--size 64] [--spots 6] [--seeds 3] [--steps 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, not benchmarks/

import numpy as np  # noqa: E402
import torch  # noqa: E402

import flows  # noqa: E402
import operators as O  # noqa: E402
import storage  # noqa: E402
from operators.noise_estimate import simulate_camera  # noqa: E402

GAIN, OFFSET, READ, BG = 2.5, 100.0, 3.0, 20.0  # e⁻/ADU, ADU, e⁻, background photo-electrons
OP = {"name": "microscopy_widefield", "params": {"pixel_size": 0.05, "psf": "gaussian", "kernel_size": 13}}


def phantom(frames: int, size: int, spots: int, seed: int, width: float, peaks: tuple) -> tuple[np.ndarray, list]:
    """Photo-electrons ``(frames, 1, size, size)`` and the spots ``[(frame, y, x)]`` (away from edges)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    e = np.full((frames, 1, size, size), BG)
    where = []
    for f in range(frames):
        for _ in range(spots):
            y, x = g.integers(8, size - 8, 2)
            e[f, 0] += g.uniform(*peaks) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width**2))
            where.append((f, int(y), int(x)))
    return e, where


def peak(img: np.ndarray, f: int, y: int, x: int) -> float:
    return float(img[f, 0, y - 1:y + 2, x - 1:x + 2].max())


def run(args) -> None:
    e, where = phantom(args.frames, args.size, args.spots, 0, args.width, tuple(args.peaks))
    A = O.get_operator(OP["name"], **OP["params"]).double()
    with torch.no_grad():
        lam = A(torch.from_numpy(e))
    truth_adu = OFFSET + e / GAIN  # the object in the camera's units (what a perfect deconvolution gives)
    recs, highs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(args.seeds):
            d = Path(tmp) / f"s{s}"
            d.mkdir()
            u = simulate_camera(lam, GAIN, OFFSET, READ, torch.Generator().manual_seed(s)).numpy().astype(np.uint16)
            np.save(d / "counts.npy", u)
            flows.ingest_stack(flows.IngestParams(source=str(d / "counts.npy"), store=str(d / "in.zarr"), axes="tcyx",
                                                  chunk=args.size), artifacts=False)
            highs.append(storage.open_stack(d / "in.zarr").intensity.high)
            p = flows.ReconstructParams(
                input_store=str(d / "in.zarr"), output_store=str(d / "out.zarr"), operator=OP,
                noise={"kind": "poisson_gaussian", "gain": GAIN, "offset": OFFSET, "read_noise": READ},
                solver={"steps": args.steps}, tile=args.size, overlap=0,
                execution={"batch_size": args.frames, "torch_threads": 2}, artifacts=False)
            flows.reconstruct_stack(p)
            recs.append(np.asarray(storage.open_output(p.output_store).recon()[:], np.float64).reshape(e.shape))
    rows = []
    for f, y, x in where:
        t = peak(truth_adu, f, y, x)
        r = np.array([peak(rc, f, y, x) for rc in recs])
        rows.append((f, y, x, t, r.mean(), r.std(ddof=1) if len(r) > 1 else float("nan")))
    print(f"ingest high (99.9th percentile of the raw counts) per seed: {[round(h, 1) for h in highs]} ADU; "
          f"truth max {truth_adu.max():.1f} ADU; reconstruction max per seed {[round(float(r.max()), 1) for r in recs]}")
    print("| frame | spot (y, x) | truth peak (ADU) | recon peak, mean of seeds (ADU) | sd over seeds | "
          "(recon − truth)/sd | recon / truth |")
    print("|---|---|---|---|---|---|---|")
    for f, y, x, t, m, sd in rows:
        print(f"| {f} | ({y}, {x}) | {t:.1f} | {m:.1f} | {sd:.1f} | {(m - t) / sd:+.2f} | {(m - OFFSET) / (t - OFFSET):.3f} |")
    z = np.array([(m - t) / sd for *_, t, m, sd in rows])
    ratio = np.array([(m - OFFSET) / (t - OFFSET) for *_, t, m, sd in rows])
    above = np.mean([m > h for (*_, m, _), h in zip(rows, [np.mean(highs)] * len(rows))])
    print(f"spots {len(rows)}: median (recon − offset)/(truth − offset) {np.median(ratio):.3f}, "
          f"|z| ≤ 2 for {np.mean(np.abs(z) <= 2):.0%}, median |z| {np.median(np.abs(z)):.2f}; "
          f"recon peaks above the ingest high: {above:.0%}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--spots", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width", type=float, default=0.7, help="σ of a spot in pixels (the PSF's is 1.56)")
    ap.add_argument("--peaks", type=float, nargs=2, default=(300, 900), help="range of the spots' peak photo-electrons")
    run(ap.parse_args())
