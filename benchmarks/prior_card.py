"""Denoising PSNR of the default prior's Tweedie denoiser vs TV (Chambolle), on held-out crops.

Room: ``benchmarks`` — a script; uses ``ddiff`` and scikit-image.

Protocol (model space ``[−1, 1]``): clean 64×64 crops ``x`` are cut on a fixed grid from the
held-out RIGHT 25 % of each scikit-image picture (never seen in training); ``y = x + σ n``,
``n ~ N(0, I)`` with a fixed seed. The prior denoises with one network call: ``ᾱ = 1/(1 + σ²)``
makes ``x_t = √ᾱ y`` a valid diffusion state (``x_t = √ᾱ x + √(1−ᾱ) n``) at the fractional
index ``t`` where the schedule's ``ᾱ_t`` (log-linearly interpolated) equals ``ᾱ``; Tweedie gives
``x̂ = (x_t − √(1−ᾱ) ε̂)/√ᾱ = y − σ ε̂``, clipped to ``[−1, 1]``. The baseline is
``skimage.restoration.denoise_tv_chambolle`` with its weight tuned per σ (grid search maximising
mean PSNR) on random crops of the TRAINING part. PSNR via ``ddiff.metrics.psnr`` (range 2 in
model space). Prints a markdown table.

    OMP_NUM_THREADS=2 python benchmarks/prior_card.py [--prior default|path] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddiff.metrics import psnr  # noqa: E402
from ddiff.priors import load_prior  # noqa: E402
from flows.sample_data import sample_images  # noqa: E402

SIGMAS = (0.1, 0.2, 0.4)


def heldout_crops(crop: int = 64, per_image: int = 8) -> torch.Tensor:
    """Non-overlapping crops on a grid of each held-out strip, at most ``per_image`` per image
    (evenly spread), as ``(N, 1, crop, crop)`` in ``[−1, 1]``."""
    _, held, _ = sample_images()
    out = []
    for im in held:
        h, w = im.shape
        pos = [(r, c) for r in range(0, h - crop + 1, crop) for c in range(0, w - crop + 1, crop)]
        if not pos:
            continue
        pick = np.linspace(0, len(pos) - 1, min(per_image, len(pos))).round().astype(int)
        out += [im[pos[i][0]:pos[i][0] + crop, pos[i][1]:pos[i][1] + crop] for i in sorted(set(pick))]
    return torch.from_numpy(np.stack(out))[:, None]


def training_crops(n: int = 48, crop: int = 64, seed: int = 1) -> torch.Tensor:
    from ddiff.training import CropSampler

    train, _, _ = sample_images()
    usable = [im for im in train if min(im.shape) >= crop]
    return CropSampler(usable, crop, weighting="image")(torch.Generator().manual_seed(seed), n)


def fractional_t_for_abar(prior, abar: float) -> float:
    """Fractional original index where log ᾱ_t (linearly interpolated) equals ``log abar``."""
    la = torch.log(prior.schedule.alpha_bar).numpy()  # decreasing
    return float(np.interp(-np.log(abar), -la, np.arange(len(la))))


@torch.no_grad()
def tweedie_denoise(prior, y: torch.Tensor, sigma: float, batch: int = 32) -> torch.Tensor:
    abar = 1.0 / (1.0 + sigma**2)
    t = fractional_t_for_abar(prior, abar)
    outs = []
    for yb in y.split(batch):
        x_t = np.sqrt(abar) * yb
        eps = prior.eps(x_t, t)
        outs.append(((x_t - np.sqrt(1 - abar) * eps) / np.sqrt(abar)).clamp(-1, 1))
    return torch.cat(outs)


def tv_denoise(y: torch.Tensor, weight: float) -> torch.Tensor:
    from skimage.restoration import denoise_tv_chambolle

    return torch.stack([torch.from_numpy(denoise_tv_chambolle(im[0].numpy().astype(np.float64), weight=weight))
                        .float()[None] for im in y]).clamp(-1, 1)


def noisy(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return x + sigma * torch.randn(x.shape, generator=g)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default="default", help="'default' or a checkpoint path (.safetensors/.pt)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    t0 = time.time()
    prior = load_prior(args.prior) if args.prior == "default" or not args.prior.endswith("ema.safetensors") else None
    if prior is None:  # a training checkpoint directory's EMA file: config sits next to it
        meta = json.loads((Path(args.prior).parent / "config.json").read_text())
        prior = load_prior(args.prior, preset=meta["model"])
    x_held = heldout_crops()
    x_train = training_crops()
    weights = np.geomspace(0.01, 2.0, 18)
    rows = []
    for i, sigma in enumerate(SIGMAS):
        y_tr = noisy(x_train, sigma, seed=100 + i)
        tv_scores = [float(psnr(tv_denoise(y_tr, w), x_train).mean()) for w in weights]
        w_best = float(weights[int(np.argmax(tv_scores))])
        y = noisy(x_held, sigma, seed=200 + i)
        p_noisy = psnr(y.clamp(-1, 1), x_held)
        p_tv = psnr(tv_denoise(y, w_best), x_held)
        p_prior = psnr(tweedie_denoise(prior, y, sigma), x_held)
        rows.append(dict(sigma=sigma, n=len(x_held), tv_weight=w_best, psnr_noisy=float(p_noisy.mean()),
                         psnr_tv=float(p_tv.mean()), psnr_prior=float(p_prior.mean()),
                         prior_wins_frac=float((p_prior > p_tv).float().mean())))
    print(f"held-out crops: {len(x_held)} (64x64, right 25% of each image); TV weight tuned on "
          f"{len(x_train)} training crops; prior={args.prior}; {time.time() - t0:.0f} s")
    print("| σ (model space) | noisy PSNR | TV (Chambolle) PSNR | TV weight | default prior (Tweedie) PSNR | prior − TV | crops where prior wins |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sigma']} | {r['psnr_noisy']:.2f} | {r['psnr_tv']:.2f} | {r['tv_weight']:.3f} | "
              f"{r['psnr_prior']:.2f} | {r['psnr_prior'] - r['psnr_tv']:+.2f} | {100 * r['prior_wins_frac']:.0f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return {"rows": rows}


if __name__ == "__main__":
    main()
