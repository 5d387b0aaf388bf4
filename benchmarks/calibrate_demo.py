"""Make the shipped calibration record of ``ddiff demo --bounds`` (``ddiff/priors/weights/bounds_demo.json``).

Room: ``benchmarks`` — a script that runs the real commands (``ddiff ingest``, ``ddiff calibrate``).

References: ``--frames`` seeded ``--size``² crops of the TRAINING parts (left 75 %) of scikit-image's
pictures (``flows.sample_data``; the demo's frames come from the held-out right 25 %), physical units
``(x + 1)/2`` ingested with the range 0,1 as the demo does. Settings: the demo's — operator
``gaussian_blur`` 25 px std 2, σ 0.025 in the stored units (0.05 model), the embedded default prior, DDiff
auto (100 steps) — with ``--seeds`` K, tiles of ``--size`` (one tile per frame, as the demo with
``--bounds``), α = δ = 0.1, WSR, a quarter of the frames fitting the scale rule.

    OMP_NUM_THREADS=1 python benchmarks/calibrate_demo.py              # 56 frames 64², K = 2
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.calibration import SHIPPED  # noqa: E402
from flows.demo import DEMO_OPERATOR  # noqa: E402
from flows.sample_data import crops, sample_images  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=56)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--fit-fraction", type=float, default=0.25)
    ap.add_argument("--work", default="/tmp/ddiff_demo_calibration")
    ap.add_argument("--record", default=str(SHIPPED["demo"]))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    train, _, _ = sample_images()
    x = crops(train, a.frames, a.size, seed=25)  # (n, 1, s, s) model units, training region only
    np.save(work / "refs.npy", ((x + 1) / 2).astype(np.float32))
    ddiff = [sys.executable, "-m", "flows.cli"]
    ops = [f"--op-param={k}={v}" for k, v in DEMO_OPERATOR["params"].items()]
    cmds = [ddiff + ["ingest", str(work / "refs.npy"), str(work / "refs.zarr"), "--axes", "tcyx", "--intensity", "0,1",
                     "--chunk", str(a.size), "--overwrite", "--no-progress"],
            ddiff + ["calibrate", str(work / "refs.zarr"), a.record, "--operator", DEMO_OPERATOR["name"], *ops,
                     "--sigma", "0.025", "--seeds", str(a.seeds), "--tile", str(a.size), "--overlap", "8",
                     "--alpha", "0.1", "--delta", "0.1", "--fit-fraction", str(a.fit_fraction), "--threads", "1",
                     "--batch-size", "8", "--work-dir", str(work / "run"), "--overwrite", "--no-progress"]]
    for c in cmds:
        print("$", " ".join(c[2:]), flush=True)
        t = time.perf_counter()
        subprocess.run(c, check=True, cwd=ROOT)
        print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
