"""Every solver against the exact Bayes answer on linear-Gaussian problems.

Run:  python benchmarks/exact_prior.py [--draws 16] [--steps 1000] [--quick]

16×16 single-channel images from a Gaussian prior with a squared-exponential covariance
(std 0.3, length 2 px), measured through a 30 %-observed random mask or a 7×7 Gaussian blur
(std 1.5) with σ_y = 0.05. The exact posterior mean is the Bayes limit in PSNR; one exact
posterior sample is the reference for a posterior *sampler*. Prints the whole hyperparameter grid
of every solver — nothing is hidden; the best row per solver is marked with ``*``.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path and benchmarks/operators.py would shadow the
# `operators` package; drop that entry.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from ddiff import DAPS, DPS, DDiff, DDiffHQS, DiffPIR, DiffPnPADMM, DiffPnPHQS  # noqa: E402
from ddiff.metrics import psnr  # noqa: E402
from ddiff.problems import linear_gaussian_problem  # noqa: E402


def grid(steps: int, quick: bool):
    g0s = [2, 5, 10] if quick else [1, 2, 5, 10, 20]
    for cls in (DDiff, DDiffHQS):
        for g0, noising, t0 in itertools.product(g0s, ("ancestral", "fresh"), (50, 500)):
            yield cls, dict(steps=steps, gamma0=g0, noising=noising, t0=t0)
    for cls in (DiffPnPADMM, DiffPnPHQS):
        for g0 in g0s:
            yield cls, dict(steps=steps, gamma0=g0)
    for zeta in ([0.3, 1.0] if quick else [0.1, 0.3, 1.0, 3.0]):
        yield DPS, dict(steps=steps, zeta=zeta)
    for lam, zeta in itertools.product([1.0, 7.0], [0.3, 1.0]):
        yield DiffPIR, dict(steps=100, lambda_=lam, zeta=zeta)
    for lr in ([1e-4] if quick else [1e-5, 1e-4]):
        yield DAPS, dict(annealing_steps=200 if not quick else 50, ode_steps=5, mcmc_steps=100, lr=lr)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="smaller grid, 50 DAPS annealing steps")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for op in ("mask", "blur"):
        P = linear_gaussian_problem(op, draws=args.draws)
        ref_mean = psnr(P.posterior.mean, P.x).mean().item()
        ref_sample = psnr(P.posterior.sample(torch.Generator().manual_seed(1)), P.x).mean().item()
        print(f"\n## operator: {op}   posterior mean {ref_mean:.2f} dB (Bayes limit)   "
              f"exact posterior sample {ref_sample:.2f} dB")
        print(f"{'solver':<12} {'hyperparameters':<58} {'PSNR':>6} {'Δmean':>6} {'NFE':>5} {'s':>6}")
        rows = []
        for cls, kw in grid(args.steps, args.quick):
            t = time.perf_counter()
            r = cls(P.prior, **kw).solve(P.y, P.operator, P.noise, generator=torch.Generator().manual_seed(1))
            rows.append((cls.__name__, kw, psnr(r.x, P.x).mean().item(), r.nfe, time.perf_counter() - t))
        best = {}
        for name, kw, p, nfe, s in rows:
            best[name] = max(best.get(name, -1e9), p)
        for name, kw, p, nfe, s in rows:
            hp = ", ".join(f"{k}={v}" for k, v in kw.items() if k != "steps")
            mark = "*" if p == best[name] else " "
            print(f"{name:<12} {hp:<58} {p:6.2f} {p - ref_mean:6.2f} {nfe:5d} {s:6.1f} {mark}")


if __name__ == "__main__":
    main()
