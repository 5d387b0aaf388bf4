"""Does the seed spread of DDiff point at its errors in undersampled MRI? (whole-frame ``--seeds K``)

Room: ``benchmarks`` — a script over ``ddiff`` and ``operators`` (the Python API the whole-frame
flow calls: ``SeedMean(DDiff auto, K, keep_samples=True)`` on Cartesian k-space).

Data: the top square of each held-out picture (right 25 %), resized to ``--size``², physical [0, 1]
(model = 2·x − 1); Cartesian k-space (``mri_cartesian``, variable-density lines, seed 1) at each
acceleration R, complex Gaussian noise ``--sigma`` per real/imaginary part (model units). DDiff with
its defaults (discrepancy x-update) and ``--steps``, K = ``--seeds`` seeds per image.

Printed per (image, R): PSNR and χ²_ν of the seed mean (and the mean χ²_ν of the single seeds: the
data's verdict on what one run would have written), the upper decile (p90) of the per-pixel seed spread
and of the absolute error (model units), the Pearson correlation of spread and |error| over pixels,
and the fraction of pixels whose |error| exceeds 3 × their spread (where the spread under-warns);
then the same pooled over images per R.

    OMP_NUM_THREADS=2 python benchmarks/mri_seed_spread.py                # 32 px, K = 4, 100 steps
    OMP_NUM_THREADS=2 python benchmarks/mri_seed_spread.py --steps 10     # the cheap setting of the tests
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ddiff  # noqa: E402
import operators  # noqa: E402
from ddiff.metrics import chi2_reduced, psnr  # noqa: E402
from ddiff.priors.loading import load_prior  # noqa: E402
from flows.sample_data import sample_images  # noqa: E402


def crops(names, n: int) -> tuple[torch.Tensor, list[str]]:
    """``(B, 1, n, n)`` model-space crops of the held-out parts and the names that loaded."""
    from skimage.transform import resize

    _, held, used = sample_images(names)
    x = np.stack([resize(h[: min(h.shape), : min(h.shape)], (n, n), anti_aliasing=True) for h in held])
    return torch.from_numpy(x.astype(np.float32)).clamp(-1, 1)[:, None], used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--accelerations", type=float, nargs="+", default=[1, 4, 8])
    ap.add_argument("--sigma", type=float, default=0.04, help="noise sd per real/imag part, model units")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--images", nargs="+", default=["camera", "coins", "moon", "brick", "cell", "text"])
    ap.add_argument("--prior", default="default")
    a = ap.parse_args()
    torch.manual_seed(0)
    x0, names = crops(a.images, a.size)
    prior = load_prior(a.prior)
    print(f"# DDiff auto, {a.steps} steps, K = {a.seeds} seeds, {a.size} px, sigma {a.sigma} (model units), "
          f"prior {a.prior}; spread / error in model units ([-1, 1])")
    print(f"{'image':<8} {'R':>4} {'PSNR':>6} {'chi2_nu':>7} {'1 seed':>6} {'spread p90':>10} {'|err| p90':>10} {'corr':>6} {'err>3sd':>8}")
    for R in a.accelerations:
        A = operators.get_operator("mri_cartesian", acceleration=R, image_size=a.size, seed=1)
        g = torch.Generator().manual_seed(int(10 * R))
        y = A(x0)
        y = y + a.sigma * torch.complex(torch.randn(y.shape, generator=g), torch.randn(y.shape, generator=g))
        solver = ddiff.SeedMean(ddiff.DDiff(prior, steps=a.steps), a.seeds, keep_samples=True)
        res = solver.solve(y, A, operators.GaussianNoise(a.sigma), generator=torch.Generator().manual_seed(1))
        spread = res.samples.double().std(0)[:, 0]  # (B, H, W)
        with torch.no_grad():
            chi = chi2_reduced(y, A(res.x), a.sigma).double()  # (B,)
            chi1 = torch.stack([chi2_reduced(y, A(xk), a.sigma) for xk in res.samples]).double().mean(0)
        err = (res.x.double() - x0.double()).abs()[:, 0]
        rows = []
        for b, name in enumerate(names + ["(pooled)"]):
            s, e = (spread, err) if name == "(pooled)" else (spread[b], err[b])
            corr = float(np.corrcoef(s.flatten().numpy(), e.flatten().numpy())[0, 1])
            p = float(psnr(res.x.clamp(-1, 1), x0).mean() if name == "(pooled)" else psnr(res.x[b:b + 1].clamp(-1, 1), x0[b:b + 1])[0])
            c, c1 = (chi.mean(), chi1.mean()) if name == "(pooled)" else (chi[b], chi1[b])
            rows.append(f"{name:<8} {R:>4g} {p:>6.2f} {float(c):>7.3f} {float(c1):>6.3f} {float(s.quantile(0.9)):>10.4f} {float(e.quantile(0.9)):>10.4f} "
                        f"{corr:>6.2f} {float((e > 3 * s).double().mean()):>8.3f}")
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
