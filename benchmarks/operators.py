"""Forward / adjoint / gradient time of every registered operator at 256² on this machine.

Room: benchmarks — imports ``operators`` (torch, numpy).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/operators.py [--size 256] [--reps 5] [--threads 1]``

Columns (milliseconds, median of ``reps`` after one warm-up, batch 1, 3 channels, float32, CPU):
``forward`` = ``A(x)``; ``adjoint`` = ``Aᴴ y`` (linear operators); ``grad`` = forward + backward of
``‖A(x)‖²`` through autograd, which is what the solvers' data steps cost. For the two 61×61 blurs
a side-by-side row times the DPS/DAPS construction (``ReflectionPad2d(30)`` + depthwise 61×61
``Conv2d``) and prints the speed ratio. ``nonlinear_blur`` runs with random KernelWizard weights
(same architecture and cost as the pretrained ones).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `operators` package; drop that entry so the real package is imported.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import operators as O  # noqa: E402
from operators.bkse import KernelWizard  # noqa: E402


def _time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _build(name: str):
    if name == "nonlinear_blur":
        torch.manual_seed(0)
        return O.NonlinearBlur(model=KernelWizard())
    return O.get_operator(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.size
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, n, n, generator=gen) * 2 - 1
    print(f"operators at {n}x{n}, batch 1, 3 channels, float32, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'operator':<24}{'out shape':<22}{'forward ms':>12}{'adjoint ms':>12}{'grad ms':>10}")
    for name in O.available():
        if name == "deepinv":
            continue  # an adapter, not an operator of its own
        op = _build(name)
        xi = x[:, :1] if name == "ct_parallel_beam" else x  # CT: one channel (a slice)
        with torch.no_grad():
            y = op(xi)
        fwd = _time(lambda: op(xi), args.reps)
        adj = "-"
        if op.linear:
            with torch.no_grad():
                adj = f"{_time(lambda: op.adjoint(y), args.reps):.1f}"
        xg = xi.clone().requires_grad_(True)

        def grad():
            out = op(xg)
            val = (out.abs() ** 2).sum() if out.is_complex() else (out**2).sum()
            torch.autograd.grad(val, xg)

        g = _time(grad, max(1, args.reps // 2) if name == "nonlinear_blur" else args.reps)
        print(f"{name:<24}{str(tuple(y.shape)):<22}{fwd:>12.1f}{adj:>12}{g:>10.1f}")
        if name in ("gaussian_blur", "motion_blur"):
            w = op.kernel.float()[None, None].repeat(3, 1, 1, 1)
            ref = _time(lambda: F.conv2d(F.pad(x, (30, 30, 30, 30), mode="reflect"), w, groups=3), args.reps)
            print(f"{'  DPS pad+conv61 (ref)':<24}{'':<22}{ref:>12.1f}{'':>12}{'':>10}   ours is {ref / fwd:.1f}x faster")


if __name__ == "__main__":
    main()
