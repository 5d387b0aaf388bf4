"""Every solver against the exact Bayes answer on linear-Gaussian problems.

Run:  python benchmarks/exact_prior.py [--draws 16] [--steps 1000] [--quick]
      python benchmarks/exact_prior.py --reference [--draws 8] [--seeds 5]

16×16 single-channel images from a Gaussian prior with a squared-exponential covariance
(std 0.3, length 2 px), measured through a 30 %-observed random mask or a 7×7 Gaussian blur
(std 1.5) with σ_y = 0.05. The exact posterior mean is the Bayes limit in PSNR; one exact
posterior sample is the reference for a posterior *sampler*. Prints the whole hyperparameter grid
of every solver — nothing is hidden; the best row per solver is marked with ``*``.

``--reference`` instead runs each baseline with its reference setting for the matching paper task
(``DPS.reference``, ``DiffPIR.reference``, ``DAPS.reference``: mask → ``inpainting_random``, blur →
``gaussian_blur``; :func:`ddiff.problems.reference_accuracy`, 8 images) on ``--seeds`` problems and
on ``--seeds`` solver seeds of problem 0, and prints PSNR, the Bayes limit and the gap per run with
their mean and spread — the numbers ``tests/test_solvers_exact.py`` holds the baselines to.
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

from ddiff import DAPS, DPS, DDiff, DDiffHQS, DiffPIR, DiffPnPADMM, DiffPnPHQS, SeedMean  # noqa: E402
from ddiff.metrics import psnr  # noqa: E402
from ddiff.problems import REFERENCE_TASK, linear_gaussian_problem, reference_accuracy  # noqa: E402


def grid(steps: int, quick: bool):
    g0s = [2, 5, 10] if quick else [1, 2, 5, 10, 20]
    for cls in (DDiff, DDiffHQS):
        for g0, noising, t0 in itertools.product(g0s, ("ancestral", "fresh"), (50, 500)):
            yield cls, dict(steps=steps, x_update="gradient", gamma0=g0, noising=noising, t0=t0)
    for cls in (DiffPnPADMM, DiffPnPHQS):
        for g0 in g0s:
            yield cls, dict(steps=steps, x_update="gradient", gamma0=g0)
    # the self-calibrated default (no step size): one sample, and the K-seed mean (SeedMean)
    for n, seeds in ((100, 1), (steps, 1), (100, 8), (100, 16), (steps, 16)):
        yield "DDiff-auto", dict(steps=n, seeds=seeds)
    for zeta in ([0.3, 1.0] if quick else [0.1, 0.3, 1.0, 3.0]):
        yield DPS, dict(steps=steps, zeta=zeta)
    for lam, zeta in itertools.product([1.0, 7.0], [0.3, 1.0]):
        yield DiffPIR, dict(steps=100, lambda_=lam, zeta=zeta)
    for lr in ([1e-4] if quick else [1e-5, 1e-4]):
        yield DAPS, dict(annealing_steps=200 if not quick else 50, ode_steps=5, mcmc_steps=100, lr=lr)


def reference_table(draws: int, seeds: int) -> None:
    """Each baseline at its reference setting: over problem seeds (solver seed ``s + 1``), then over
    solver seeds ``1..seeds`` on problem 0 (the spread the tests' tolerances come from). One thread:
    the problems' truths are drawn through ``eigh`` of the prior covariance, whose basis inside its
    degenerate eigenspaces (and hence the draws) depends on the LAPACK thread count."""
    torch.set_num_threads(1)
    print(f"{'operator':<8} {'solver':<8} {'problem':>7} {'solver':>6} {'PSNR':>6} {'Bayes':>6} {'gap':>6} {'s':>6}")
    for op in REFERENCE_TASK:
        for cls in (DPS, DiffPIR, DAPS):
            for label, pairs in (("problem seeds", [(s, s + 1) for s in range(seeds)]),
                                 ("solver seeds on problem 0", [(0, s) for s in range(1, seeds + 1)])):
                ps, gaps = [], []
                for ps_seed, ss_seed in pairs:
                    t = time.perf_counter()
                    p, ref = reference_accuracy(op, cls, ps_seed, ss_seed, draws)
                    ps.append(p)
                    gaps.append(ref - p)
                    print(f"{op:<8} {cls.__name__:<8} {ps_seed:>7} {ss_seed:>6} {p:6.2f} {ref:6.2f} {ref - p:6.2f} "
                          f"{time.perf_counter() - t:6.1f}", flush=True)
                p, g = torch.tensor(ps), torch.tensor(gaps)
                print(f"{op:<8} {cls.__name__:<8} over {label}: PSNR {p.mean():.2f} ± {p.std():.2f} (sd), "
                      f"gap {g.mean():.2f} ± {g.std():.2f}, range [{g.min():.2f}, {g.max():.2f}]", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=None, help="images per problem (default 16; --reference: 8)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="smaller grid, 50 DAPS annealing steps")
    ap.add_argument("--reference", action="store_true", help="baselines at their reference settings, several seeds")
    ap.add_argument("--seeds", type=int, default=5, help="--reference: number of problem seeds")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.reference:
        return reference_table(args.draws or 8, args.seeds)
    args.draws = args.draws or 16
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
            solver = (SeedMean(DDiff(P.prior, steps=kw["steps"]), kw["seeds"]) if cls == "DDiff-auto"
                      else cls(P.prior, **kw))
            r = solver.solve(P.y, P.operator, P.noise, generator=torch.Generator().manual_seed(1))
            name = cls if isinstance(cls, str) else cls.__name__
            rows.append((name, kw, psnr(r.x, P.x).mean().item(), r.nfe, time.perf_counter() - t))
        best = {}
        for name, kw, p, nfe, s in rows:
            best[name] = max(best.get(name, -1e9), p)
        for name, kw, p, nfe, s in rows:
            hp = ", ".join(f"{k}={v}" for k, v in kw.items() if k != "steps")
            mark = "*" if p == best[name] else " "
            print(f"{name:<12} {hp:<58} {p:6.2f} {p - ref_mean:6.2f} {nfe:5d} {s:6.1f} {mark}")


if __name__ == "__main__":
    main()
