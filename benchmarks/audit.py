"""Hallucination audit: calibration and detection tables, measured side by side.

Room: benchmarks — imports ``ddiff`` and ``operators`` (no flows).

Command line (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audit.py            # full tables (~3-4 min, 2 cores)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audit.py --quick    # fewer tiles and cells (~40 s)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audit.py --tiles 400 --alpha 0.01

What it measures (the ideal solver: the reconstruction is the ground truth, see ``docs/audit.md``):

1. *Calibration* — on clean tiles, the fraction flagged by the tile test (``p < α``) and by the
   region test (any window flagged, Šidák over disjoint windows), for Gaussian, Poisson and
   Poisson–Gaussian noise, against the nominal ``α``; the binomial standard error is printed.
2. *Detection* — for each operator (Gaussian blur, ×4 super-resolution, 70 % random inpainting,
   Poisson widefield microscopy) and each planted disk (contrast × radius): the false-flag rates on
   the clean tiles and the recall of the tile test (global χ²), of the region test (a flagged
   window overlaps the disk) and of either — side by side on the same tiles and noise.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import operators  # noqa: E402
from ddiff.audit import audit, detection_rates, smooth_field  # noqa: E402

TILE = 64
SIGMA = 0.05  # Gaussian noise, model units (the paper's σ_y)
GAIN = 100.0  # Poisson: counts per unit intensity (microscopy intensities in [0.5, 1.5])


def cases():
    """(label, operator, noise, truth offset): the four operators of issue 6."""
    g = operators.GaussianNoise(SIGMA)
    return [
        ("gaussian_blur (61, std 3), σ=0.05", operators.get_operator("gaussian_blur"), g, 0.0),
        ("super_resolution ×4, σ=0.05", operators.get_operator("super_resolution", scale=4), g, 0.0),
        ("inpainting_random 70%, σ=0.05", operators.get_operator("inpainting_random", prob=0.7, image_size=TILE), g, 0.0),
        (f"microscopy_widefield, Poisson gain {GAIN:g}", operators.get_operator("microscopy_widefield"),
         operators.PoissonNoise(gain=GAIN), 1.0),
    ]


def calibration(tiles: int, alphas, gen: torch.Generator) -> None:
    print(f"\n## Calibration: truth as reconstruction, {tiles} clean 32×32 tiles per row, window 8 px, Šidák")
    print("| operator | noise | counts/pixel | α | tile false-flag | region false-flag | ±1 s.e. |")
    print("|---|---|---|---|---|---|---|")
    g = operators.GaussianNoise(SIGMA)
    inpaint = operators.get_operator("inpainting_random", prob=0.7, image_size=32)
    blur = operators.get_operator("gaussian_blur")
    micro = operators.get_operator("microscopy_widefield")
    rows = [
        ("inpainting_random 70%", inpaint, g, 0.0, "—"),
        ("gaussian_blur", blur, g, 0.0, "—"),
        ("microscopy_widefield", micro, operators.PoissonNoise(gain=2.0), 1.0, "1–3"),
        ("microscopy_widefield", micro, operators.PoissonNoise(gain=GAIN), 1.0, "50–150"),
        ("microscopy_widefield", micro, operators.PoissonGaussianNoise(gain=2.0, sigma=0.05), 1.0, "1–3 + read"),
    ]
    for label, op, noise, offset, counts in rows:
        x = smooth_field((tiles, 1, 32, 32), generator=gen) + offset
        y = noise.sample(op(x), gen)
        for a in alphas:
            r = audit(x, y, op, noise, alpha=a, window=8)
            se = math.sqrt(a * (1 - a) / tiles)
            print(f"| {label} | {noise!r} | {counts} | {a:g} | {r.tile_flag.double().mean():.4f} | "
                  f"{r.region_any.double().mean():.4f} | {se:.4f} |", flush=True)


def detection(tiles: int, alpha: float, contrasts, radii, gen: torch.Generator) -> None:
    print(f"\n## Detection: {tiles} tiles {TILE}×{TILE} per cell, α = {alpha:g}, window 16 px, Šidák")
    print("| operator | contrast | radius px | false tile | false region | false any | "
          "recall tile (χ²) | recall region | recall any | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, op, noise, offset in cases():
        for c in contrasts:
            for rad in radii:
                truth = smooth_field((tiles, 1, TILE, TILE), generator=gen) + offset
                t0 = time.perf_counter()
                r = detection_rates(op, noise, truth, contrast=c, radius=rad, alpha=alpha, generator=gen)
                dt = time.perf_counter() - t0
                print(f"| {label} | {c:g} | {rad:g} | {r['false_tile']:.3f} | {r['false_region']:.3f} | "
                      f"{r['false_any']:.3f} | {r['recall_tile']:.3f} | {r['recall_region']:.3f} | "
                      f"{r['recall_any']:.3f} | {dt:.1f} |", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", type=int, default=200, help="tiles per detection cell (default 200)")
    ap.add_argument("--cal-tiles", type=int, default=2000, help="tiles per calibration row (default 2000)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true", help="100 tiles, fewer cells")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    gen = torch.Generator().manual_seed(args.seed)
    tiles, cal = (100, 1000) if args.quick else (args.tiles, args.cal_tiles)
    contrasts = (0.2, 0.3) if args.quick else (0.1, 0.2, 0.3, 0.5)
    radii = (4,) if args.quick else (2, 4, 8)
    t0 = time.perf_counter()
    calibration(cal, (0.01, 0.05, 0.1), gen)
    detection(tiles, args.alpha, contrasts, radii, gen)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s; seed {args.seed}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
