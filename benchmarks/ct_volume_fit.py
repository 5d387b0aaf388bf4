"""A CT volume's data fit, slice by slice: one discrepancy constraint per slice (VolumeDDiff's default
for slice-wise operators) against one on the whole volume, and the slice-by-slice baseline.

Room: ``benchmarks`` — a script over ``ddiff`` and ``operators`` (Python API; the pipeline runs the same
solver on z-bricks of a sinogram store: ``ddiff reconstruct sino.zarr out.zarr --solver volume_ddiff``).

Data: ``--planes`` slices of ``--size``² cut from scikit-image's ``camera`` (rotated 20° × seed) along a
path drifting 0.6 / 0.4 px per slice; parallel-beam CT, ``--angles`` views over [0°, 180°) per slice;
Gaussian noise of 2 % of the sinogram's peak. Default prior, DDiff auto, ``--steps``.

Printed per seed and method: PSNR of the volume and χ²_ν of every slice (its own measurements,
``‖y_k − A x̂_k‖²/(m_k σ²)``; 1 ± √(2/m_k) under the noise model).

    OMP_NUM_THREADS=2 python benchmarks/ct_volume_fit.py          # 8 × 64², 24 views, 30 steps, seeds 0 and 1
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ddiff  # noqa: E402
import operators  # noqa: E402
from ddiff.priors.loading import load_prior  # noqa: E402
from operators.volume import SliceWise  # noqa: E402


class VolumeFit(ddiff.VolumeDDiff):
    """The ablation: one discrepancy constraint on the whole volume (DDiff's x-update on the 3-D operator)."""

    def data_step(self, operator, noise, y, v, gamma, last: bool = False):
        return ddiff.DDiff.data_step(self, operator, noise, y, v, gamma, last)


def phantom(planes: int, size: int, seed: int) -> torch.Tensor:
    """``(1, 1, Z, N, N)`` model-space volume."""
    from scipy import ndimage
    from skimage import data

    img = ndimage.zoom(data.camera().astype(np.float32)[100:300, 150:350] / 255.0, 2 * size / 200, order=1)
    img = ndimage.rotate(img, 20 * seed, reshape=False, mode="reflect")
    x = np.stack([ndimage.shift(img, (0.6 * z, 0.4 * z), order=3, mode="reflect")[10:10 + size, 15:15 + size]
                  for z in range(planes)])
    return torch.from_numpy(2 * x.astype(np.float32) - 1)[None, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--planes", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--angles", type=int, default=24)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    prior = load_prior("default")
    print(f"# CT volume {a.planes} x {a.size}², {a.angles} views, DDiff auto {a.steps} steps, default prior; "
          f"χ²_ν per slice (sd under the noise model {math.sqrt(2 / (a.angles * a.size)):.3f})")
    for seed in a.seeds:
        x = phantom(a.planes, a.size, seed)
        A = SliceWise(operators.get_operator("ct_parallel_beam", angles=a.angles))
        y = A(x)
        sigma = 0.02 * float(y.abs().max())
        y = y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
        noise = operators.GaussianNoise(sigma)
        methods = {"slice by slice": ddiff.SliceBySlice(ddiff.DDiff(prior, steps=a.steps)),
                   "volume, one constraint per slice (default)": ddiff.VolumeDDiff(prior, steps=a.steps),
                   "volume, one constraint on the volume": VolumeFit(prior, steps=a.steps)}
        for name, solver in methods.items():
            xh = solver.solve(y, A, noise, generator=[torch.Generator().manual_seed(5)]).x.clamp(-1, 1)
            with torch.no_grad():
                chi = ((y - A(xh))[0, 0] ** 2).flatten(1).mean(1) / sigma**2
            p = float(10 * torch.log10(4 / ((xh - x) ** 2).mean()))
            print(f"seed {seed} | {name:<42} | PSNR {p:6.2f} dB | χ²_ν per slice "
                  f"{' '.join(f'{float(c):.3f}' for c in chi)} | range {float(chi.min()):.3f}–{float(chi.max()):.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
