"""DAPS on phase retrieval: the reference's [0, 1] measurement vs the benchmark's [−1, 1] one.

Run:  OMP_NUM_THREADS=1 python benchmarks/daps_phase_units.py      (~5 min on 2 cores)

DAPS's reference measures ``|F pad((x + 1)/2)|`` (``phase_retrieval`` with ``unit_range=True``) and
its learning rate (5e-5, ``DAPS.reference("phase_retrieval")``) was tuned for that; the benchmark
gives every solver the same ``[−1, 1]`` measurement ``|F pad(x)|``. On the ``cpu`` preset's
phase-retrieval cell (5 held-out 64² crops, σ_y = 0.05, 100 NFE, best of 5 runs, its seeds) this
prints the ratio of the data-term gradient norms of the two conventions at the same point
(truth + 0.1 n) and DAPS's PSNR / χ²_ν with (a) the benchmark's measurement, (b) the reference's
``unit_range`` measurement (its own ``y``, same noise seed), (c) the benchmark's measurement with
the learning rate divided by 4.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path and benchmarks/operators.py would shadow the
# `operators` package; drop that entry.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

import operators  # noqa: E402
from flows import tiles as T  # noqa: E402
from flows.bench import flow as FB  # noqa: E402
from flows.bench import protocol as B  # noqa: E402
from flows.params import BenchmarkParams  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    r = BenchmarkParams(preset="cpu").resolved()
    x, _, _ = FB._images(r["images"], r["size"], r["n_images"], 1, r["tune_images"])
    prior = T.load_prior_cached(r["prior"], "cpu", "fp32")
    sigma, task, nfe, runs = r["sigma_y"], "phase_retrieval", r["nfe"], r["phase_retrieval_runs"]
    print("size", r["size"], "n", r["n_images"], "nfe", nfe, "runs", runs, "sigma", sigma, flush=True)
    A = FB._operator(task, r["size"], None, "cpu")
    Au = operators.get_operator("phase_retrieval", unit_range=True)
    y = FB._measure(x, A, sigma, r["seed"], task)
    g = torch.Generator().manual_seed(T.tile_seed(r["seed"], B.TASKS.index(task), int(round(sigma * 1e6))))
    with torch.no_grad():
        yu = operators.GaussianNoise(sigma).sample(Au(x), g)
    xp = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    (ga,) = torch.autograd.grad(((A(xp) - y) ** 2).sum(), xp)
    (gu,) = torch.autograd.grad(((Au(xp) - yu) ** 2).sum(), xp)
    print("grad norm ratio [-1,1] / unit_range:", (ga.flatten(1).norm(dim=1) / gu.flatten(1).norm(dim=1)).tolist(),
          flush=True)
    kw = B.solver_kwargs("daps", task, nfe, r["dataset"])
    variants = {"current ([-1,1] operator, lr %g)" % kw["lr"]: (A, y, kw),
                "unit_range operator, own y, lr %g" % kw["lr"]: (Au, yu, kw),
                "[-1,1] operator, lr %g (/4)" % (kw["lr"] / 4): (A, y, kw | {"lr": kw["lr"] / 4})}
    for name, (op, yy, k) in variants.items():
        t = time.perf_counter()
        res = B.solve_best_of(B.build_solver("daps", prior, k), yy, op, operators.GaussianNoise(sigma), x, runs=runs,
                              seed=r["seed"])
        m = res.metrics
        print(f"{name}: PSNR {m['psnr'].mean():.2f} (per image {[round(v, 2) for v in m['psnr'].tolist()]}), "
              f"chi2_nu {m['chi2_nu'].mean():.2f}, {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
