"""DDiff's data step, measured: the exact projection (hybrid LSQR) against the stopped CGLS of
earlier releases, side by side in one run (issue 26).

Room: ``benchmarks`` — a script.

Part 1 — the projection alone, against a dense reference (SVD of the operator's matrix + a root find
on the Tikhonov multiplier, float64, 16×16 images, σ_y 0.05, v = 0 and v = a noisy guess): relative
error of the point, iterations, and time per call (each operator application counted).

Part 2 — DDiff (self-calibrated defaults, default prior) with each data step, paired per image on
``--n`` held-out 64² crops: the cpu preset's five linear tasks plus CT (30 views) and MRI (R = 4),
at each ``--nfe``; PSNR of each, the paired ΔPSNR (exact − cgls) with its 95 % CI, χ²_ν of the
returned image over the observed entries (what the run summary and the audit report), and the
wall-time ratio of the two solves.

    OMP_NUM_THREADS=2 python benchmarks/data_step.py                 # both parts
    OMP_NUM_THREADS=2 python benchmarks/data_step.py --part 1
    OMP_NUM_THREADS=2 python benchmarks/data_step.py --part 2 --nfe 20 100 --n 12
    OMP_NUM_THREADS=2 python benchmarks/data_step.py --part 3 --tasks gaussian_blur motion_blur ct_parallel_beam

Part 3 — the cost: DDiff with each data step timed interleaved (so both see the same load) against
the floor of NFE plain network forwards.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import brentq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import operators as O  # noqa: E402
from ddiff import DDiff  # noqa: E402
from ddiff.metrics import psnr  # noqa: E402
from ddiff.solvers.data_fit import discrepancy, measurement_count, project_to_discrepancy  # noqa: E402
from ddiff.solvers.observed import observed_mask, observed_measurement  # noqa: E402

SIGMA = 0.05
SMALL = {  # part 1: 16×16 operators
    "gaussian_blur 7×7": ("gaussian_blur", dict(kernel_size=7, std=1.5)),
    "super_resolution ×4": ("super_resolution", dict(scale=4)),
    "inpainting_random 70 %": ("inpainting_random", dict(prob=0.7, seed=1, image_size=16)),
    "ct_parallel_beam 12 views": ("ct_parallel_beam", dict(angles=12)),
    "mri_cartesian R 4": ("mri_cartesian", dict(acceleration=4, image_size=16)),
}
TASKS = {  # part 2: 64² crops (the cpu preset's operator settings, CT and MRI as in docs/modalities.md)
    "gaussian_blur": dict(), "motion_blur": dict(), "super_resolution": dict(scale=4),
    "inpainting_box": dict(box_size=32, margin=(4, 4), image_size=(64, 64)),
    "inpainting_random": dict(prob=0.7, image_size=(64, 64)),
    "ct_parallel_beam": dict(angles=30), "mri_cartesian": dict(acceleration=4, image_size=64),
}


def dense_matrix(A, shape) -> np.ndarray:
    """The real matrix of ``A`` on images of ``shape`` (complex outputs as real and imaginary rows)."""
    n = int(np.prod(shape))
    cols = A(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1)
    if cols.is_complex():
        cols = torch.cat([cols.real, cols.imag], 1)
    return cols.T.numpy()


def dense_projection(M: np.ndarray, r0: np.ndarray, v: np.ndarray, eps: float) -> np.ndarray:
    """The nearest point to ``v`` with ‖r₀ − M δ‖² ≤ ε, from the SVD of ``M`` and a root find."""
    if r0 @ r0 <= eps:
        return v
    U, s, Vt = np.linalg.svd(M, full_matrices=True)
    c, k = U.T @ r0, len(s)
    level = lambda L: (((c[:k] * np.exp(L) / (s**2 + np.exp(L))) ** 2).sum() + (c[k:] ** 2).sum() - eps)  # noqa: E731
    mu = np.exp(brentq(level, -80, 80, xtol=1e-14))
    return v + Vt[:k].T @ (s / (s**2 + mu) * c[:k])


def flat(t: torch.Tensor) -> np.ndarray:
    t = t.flatten()
    return torch.cat([t.real, t.imag]).numpy() if t.is_complex() else t.numpy()


def part1() -> None:
    print("## Part 1 — the projection against a dense reference (16×16, float64, σ_y 0.05)\n")
    print("| operator | start | method | max iters | rel. error of the point | correction length / exact | D/m | iters | ms per call |")
    print("|---|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for label, (name, kw) in SMALL.items():
        A = O.get_operator(name, **kw)
        x = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
        noise = O.GaussianNoise(SIGMA)
        y = noise.sample(A(x), g)
        M = dense_matrix(A, (1, 16, 16))
        for start, v in (("0", torch.zeros_like(x)), ("noisy guess", x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype))):
            obs = observed_mask(A, v, y)
            yo = observed_measurement(A, v, y, obs)
            m = measurement_count(yo, observed=obs)
            for method, iters in (("cgls", 5), ("cgls", 50), ("exact", 5), ("exact", 50)):
                t0 = time.perf_counter()
                p, info = project_to_discrepancy(A, noise, y, v, 1.0, iters, method=method)
                ms = (time.perf_counter() - t0) * 1e3
                errs, lens = [], []
                for b in range(2):
                    ref = dense_projection(M, flat(yo[b] - A(v[b:b + 1])[0]), flat(v[b]), float(m[b]) * SIGMA**2)
                    errs.append(np.linalg.norm(flat(p[b]) - ref) / max(np.linalg.norm(ref - flat(v[b])), 1e-300))
                    lens.append(np.linalg.norm(flat(p[b] - v[b])) / max(np.linalg.norm(ref - flat(v[b])), 1e-300))
                d = (discrepancy(noise, yo, A(p)) / m).tolist()
                print(f"| {label} | {start} | {method} | {iters} | {max(errs):.1e} | {min(lens):.4f}–{max(lens):.4f} | "
                      f"{min(d):.4f}–{max(d):.4f} | {info['iters']} | {ms:.1f} |")
    print()


def photon_counts() -> None:
    """The descent approximation for photon counts against a constrained optimiser (scipy SLSQP on
    ``min ‖x − v‖²`` s.t. Pearson χ² ≤ m, float64): correction length and direction."""
    from scipy.optimize import minimize

    print("## Part 1b — photon counts: descent + bisection vs a constrained optimiser (12×12, 5×5 blur, ~30 counts)\n")
    print("| sample | D/m descent | D/m SLSQP | length descent / SLSQP | cos(angle) |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(3)
    blur = O.get_operator("gaussian_blur", kernel_size=5, std=1.0)
    op = type("Intensity", (torch.nn.Module,), {"forward": lambda self, v: 20 * (blur(v) + 1.5)})()
    noise = O.PoissonNoise(gain=1.0)
    x = torch.rand(3, 1, 12, 12, generator=g, dtype=torch.float64) * 2 - 1
    y = noise.sample(op(x), g)
    v = -torch.ones_like(x)
    p, _ = project_to_discrepancy(op, noise, y, v, 1.0, 200)
    m = y[0].numel()
    for b in range(3):
        vb, yb = v[b:b + 1], y[b:b + 1]

        def d_and_grad(z):
            t = torch.tensor(z, dtype=torch.float64).reshape(vb.shape).requires_grad_(True)
            d = noise.discrepancy(yb, op(t)).sum()
            (gr,) = torch.autograd.grad(d, t)
            return float(d.detach()), gr.flatten().numpy()

        res = minimize(lambda z: float(((z - vb.flatten().numpy()) ** 2).sum()), p[b].flatten().numpy(),
                       jac=lambda z: 2 * (z - vb.flatten().numpy()), method="SLSQP",
                       constraints=[{"type": "ineq", "fun": lambda z: m - d_and_grad(z)[0], "jac": lambda z: -d_and_grad(z)[1]}],
                       options={"maxiter": 500, "ftol": 1e-12})
        ref = res.x - vb.flatten().numpy()
        got = (p[b] - v[b]).flatten().numpy()
        cos = float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got)))
        print(f"| {b} | {d_and_grad(p[b].flatten().numpy())[0] / m:.4f} | {d_and_grad(res.x)[0] / m:.4f} | "
              f"{np.linalg.norm(got) / np.linalg.norm(ref):.4f} | {cos:.4f} |")
    print()


def heldout_crops(n: int, size: int = 64) -> torch.Tensor:
    from flows.sample_data import crops, sample_images

    _, held, _ = sample_images()
    return torch.from_numpy(crops(held, n, size, seed=7))


def ci95(d: np.ndarray) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")


def measured(task: str, x: torch.Tensor):
    """``(A, noise, y)`` for ``task`` on the crops ``x``: the operator of ``TASKS``, Gaussian noise σ_y,
    one seeded draw of the measurement (the same for both data steps and both parts)."""
    A = O.get_operator(task, **TASKS[task])
    noise = O.GaussianNoise(SIGMA)
    with torch.no_grad():
        return A, noise, noise.sample(A(x), torch.Generator().manual_seed(11))


def part2(nfes, n: int, tasks) -> None:
    from ddiff.priors import load_prior

    prior = load_prior("default")
    x = heldout_crops(n)
    print(f"## Part 2 — DDiff (auto) with each data step, {n} held-out 64² crops, σ_y {SIGMA}, default prior\n")
    print("| task | NFE | PSNR cgls | PSNR exact | exact − cgls (95 % CI) | χ²_ν cgls (min–max) | χ²_ν exact (min–max) | time exact / cgls |")
    print("|---|---|---|---|---|---|---|---|")
    for task in tasks:
        A, noise, y = measured(task, x)
        obs = observed_mask(A, x, y)
        yo, m = observed_measurement(A, x, y, obs), measurement_count(y, observed=obs)
        for nfe in nfes:
            row = {}
            for method in ("cgls", "exact"):
                gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
                t0 = time.perf_counter()
                r = DDiff(prior, steps=nfe, projection=method).solve(y, A, noise, generator=gens)
                sec = time.perf_counter() - t0
                with torch.no_grad():
                    chi = (discrepancy(noise, yo, A(r.x)) / m).numpy()
                row[method] = (psnr(r.x, x).double().numpy(), chi, sec)
            (pa, ca, ta), (pb, cb, tb) = row["cgls"], row["exact"]
            d = pb - pa
            print(f"| {task} | {nfe} | {pa.mean():.2f} | {pb.mean():.2f} | {d.mean():+.2f} ± {ci95(d):.2f} | "
                  f"{ca.mean():.3f} ({ca.min():.3f}–{ca.max():.3f}) | {cb.mean():.3f} ({cb.min():.3f}–{cb.max():.3f}) | {tb / ta:.2f} |",
                  flush=True)
    print()


def cost(tasks, n: int = 4, steps: int = 20, repeats: int = 3) -> None:
    """Wall time of DDiff with each data step, interleaved (cgls, exact, cgls, exact, …) so both see
    the same machine load, against the floor of ``steps`` plain network forwards."""
    import statistics

    from ddiff.priors import load_prior

    prior = load_prior("default")
    x = heldout_crops(n)
    print(f"## Part 3 — cost per solve, {n} crops of 64² in one batch, {steps} steps, interleaved × {repeats}\n")
    print("| task | floor s (NFE × forward) | stopped CGLS s (÷ floor) | exact s (÷ floor) | exact / CGLS (median of pairs) |")
    print("|---|---|---|---|---|")
    for task in tasks:
        A, noise, y = measured(task, x)
        times = {"cgls": [], "exact": [], "floor": []}
        for _ in range(repeats):
            for method in ("cgls", "exact"):
                t0 = time.perf_counter()
                DDiff(prior, steps=steps, projection=method).solve(y, A, noise, generator=torch.Generator().manual_seed(1))
                times[method].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                for t in prior.schedule.respace(steps):
                    prior.eps(x, t)
            times["floor"].append(time.perf_counter() - t0)
        f, c, e = (statistics.median(times[k]) for k in ("floor", "cgls", "exact"))
        ratio = statistics.median(b / a for a, b in zip(times["cgls"], times["exact"]))
        print(f"| {task} | {f:.1f} | {c:.1f} ({c / f:.2f}) | {e:.1f} ({e / f:.2f}) | {ratio:.2f} |", flush=True)
    print()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", type=int, choices=(1, 2, 3), action="append", help="which part (default: 1 and 2; 3 = cost)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[20, 100], help="DDiff steps (part 2; default 20 100)")
    ap.add_argument("--n", type=int, default=12, help="held-out crops per task (part 2; default 12)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="tasks (part 2; default all)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    parts = a.part or [1, 2]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if 1 in parts:
        part1()
        photon_counts()
    if 2 in parts:
        part2(a.nfe, a.n, a.tasks)
    if 3 in parts:
        cost(a.tasks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
