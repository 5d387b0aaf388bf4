"""Two measurements behind docs/faults.md (issue 14), printed side by side.

1. What verifying an output's input costs: ``storage.open_input`` (the ingest record: one small
   JSON file) against ``storage.verify_stack`` (re-hashing every pixel), on a stack of
   ``--frames`` random uint16 2048² frames (2 GiB at the default 256).
2. Why the thread count is part of the configuration: DDiff (auto, ``--steps``) with the embedded
   default prior on one blurred 64² tile, run with 1 and with 2 torch threads, same seed.

    python benchmarks/faults.py --work /tmp/faults-bench [--frames 256] [--steps 20]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# Run as a script, this folder comes first on sys.path and benchmarks/operators.py would shadow the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def identity_cost(work: Path, frames: int) -> None:
    import storage

    src, store = work / "big.npy", work / "big.zarr"
    if not store.exists():
        a = np.lib.format.open_memmap(src, mode="w+", dtype=np.uint16, shape=(frames, 2048, 2048))
        rng = np.random.default_rng(0)
        for t in range(frames):
            a[t] = rng.integers(0, 4096, (2048, 2048), dtype=np.uint16)
        a.flush()
        del a
        storage.ingest(src, store, axes="tyx", intensity=(0, 4095))
        src.unlink()
    st = storage.open_stack(store)
    gib = int(np.prod(st.shape)) * st.dtype.itemsize / 2**30
    plan = storage.TilePlan(st.frame_shape, tile=256, halo=8, overlap=16)
    out = storage.create_output(work / "out.zarr", store, plan, {"solver": "identity-bench"}, overwrite=True)
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        storage.open_input(out)
    t_id = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    ok = storage.verify_stack(store)
    t_full = time.perf_counter() - t0
    print(f"input identity, stack {st.shape} {st.dtype} ({gib:.2f} GiB): open_input {t_id * 1e3:.1f} ms | "
          f"verify_stack {t_full:.1f} s (ok={ok}) | ratio {t_full / t_id:,.0f}x")


def thread_bytes(steps: int) -> None:
    import torch

    import ddiff
    import operators
    from ddiff.priors import load_prior

    prior = load_prior("default")
    A = operators.get_operator("gaussian_blur", kernel_size=25, std=2.0)
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = operators.GaussianNoise(0.05)
    y = noise.sample(A(x), torch.Generator().manual_seed(1))
    res = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        solver = ddiff.DDiff(prior, **ddiff.DDiff.auto(steps))
        res[n] = solver.solve(y, A, noise, generator=[torch.Generator().manual_seed(5)]).x.numpy()
    again = solver.solve(y, A, noise, generator=[torch.Generator().manual_seed(5)]).x.numpy()
    d = np.abs(res[1] - res[2])
    print(f"thread count, DDiff auto {steps} steps, default prior, 64² blur tile: 1 vs 2 threads max |Δx| = {d.max():.3g} "
          f"({int((d > 0).sum())}/{d.size} pixels differ) | 2 vs 2 threads max |Δx| = {np.abs(res[2] - again).max():.3g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    thread_bytes(a.steps)
    identity_cost(work, a.frames)


if __name__ == "__main__":
    main()
