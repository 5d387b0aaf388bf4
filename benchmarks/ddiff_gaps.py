"""DDiff's gaps to the Bayes limit on the exact linear-Gaussian problems, the numbers that
tests/test_ddiff_auto.py holds: the self-calibrated default (100 steps), its 8-seed mean and the
paper's setting (1000 steps), solver seeds 1–3, with χ²_ν over the observed entries.

Room: ``benchmarks`` — a script.

    OMP_NUM_THREADS=1 python benchmarks/ddiff_gaps.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddiff import DDiff, SeedMean  # noqa: E402
from ddiff.metrics import psnr  # noqa: E402
from ddiff.problems import linear_gaussian_problem  # noqa: E402


def chi2_observed(P, x):
    obs = torch.broadcast_to(P.operator.mask.bool(), P.y.shape) if hasattr(P.operator, "mask") else torch.ones_like(P.y, dtype=torch.bool)
    return ((P.y - P.operator(x)) ** 2 * obs).flatten(1).sum(1) / (obs.flatten(1).sum(1) * P.noise.sigma**2)


def main() -> int:
    torch.set_num_threads(1)  # the problems' truths depend on the LAPACK thread count
    print("| problem | seed | auto − Bayes | auto-K8 − Bayes | paper − Bayes | χ²_ν auto mean (max) | χ²_ν K8 / Bayes |")
    print("|---|---|---|---|---|---|---|")
    for op in ("mask", "blur"):
        P = linear_gaussian_problem(op, size=16, draws=16)
        ref = psnr(P.posterior.mean, P.x).mean().item()
        task = {"mask": "inpainting_random", "blur": "gaussian_blur"}[op]
        for seed in (1, 2, 3):
            gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
            auto = DDiff(P.prior).solve(P.y, P.operator, P.noise, generator=gen())
            k8 = SeedMean(DDiff(P.prior), seeds=8).solve(P.y, P.operator, P.noise, generator=gen())
            paper = DDiff(P.prior, **DDiff.paper(task)).solve(P.y, P.operator, P.noise, generator=gen())
            gaps = [psnr(r.x, P.x).mean().item() - ref for r in (auto, k8, paper)]
            chi = chi2_observed(P, auto.x)
            print(f"| {op} | {seed} | {gaps[0]:+.2f} | {gaps[1]:+.2f} | {gaps[2]:+.2f} | {chi.mean():.3f} ({chi.max():.3f}) | "
                  f"{chi2_observed(P, k8.x).mean():.3f} / {chi2_observed(P, P.posterior.mean).mean():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
