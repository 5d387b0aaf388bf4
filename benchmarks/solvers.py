"""Solver cost against its floor: NFE × one network forward.

Run:  python benchmarks/solvers.py [--size 64] [--steps 50] [--threads 2]

One problem for every solver: a ``compact`` ADM UNet prior (the embedded default prior's
architecture; random weights — cost does not depend on the weights), 64×64 single-channel images,
Gaussian blur (61×61 kernel cut to 15×15 std 3 so it fits the tile), σ_y = 0.05, batch 1. All solvers
run with the same number of network evaluations where their structure allows (DAPS: annealing ×
ODE steps), side by side in one process. Columns:

* ``NFE`` — network evaluations counted by the prior wrapper;
* ``wall s`` — wall time of ``solve``;
* ``floor s`` — the time of NFE plain network forwards at this size (no grad), measured right
  after each solver on the same inputs, so both columns see the same machine load;
* ``ratio`` — wall / floor. 1.0 is the floor; DDiff adds only the operator's gradient per step,
  DPS pays for backpropagation through the network, DAPS for its Langevin inner loop.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from ddiff import DAPS, DPS, DDiff, DDiffHQS, DiffPIR, DiffPnPADMM, DiffPnPHQS  # noqa: E402
from ddiff.priors import ADMPrior, ADMUNet  # noqa: E402
from operators import GaussianNoise, get_operator  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50, help="NFE budget per solver")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prior = ADMPrior(ADMUNet.from_preset("compact").eval())
    A = get_operator("gaussian_blur", kernel_size=15, std=3.0)
    noise = GaussianNoise(0.05)
    x = torch.rand(1, 1, args.size, args.size) * 2 - 1
    y = noise.sample(A(x), torch.Generator().manual_seed(0))

    xt = torch.randn_like(x)

    def floor_seconds(nfe: int) -> float:
        """Wall time of ``nfe`` network forwards, no grad — the solver's floor."""
        with torch.no_grad():
            t = time.perf_counter()
            for _ in range(nfe):
                prior.eps(xt, 500)
            return time.perf_counter() - t

    floor_seconds(3)  # warm-up
    fwd = statistics.median(floor_seconds(1) for _ in range(15))
    n = args.steps
    solvers = [
        ("DDiff", DDiff(prior, steps=n, **{k: v for k, v in DDiff.paper("gaussian_blur").items() if k != "steps"})),
        ("DDiff (auto)", DDiff(prior, steps=n)),
        ("DDiff (auto, stopped CGLS)", DDiff(prior, steps=n, projection="cgls")),  # the data step before issue 26
        ("DDiffHQS", DDiffHQS(prior, steps=n, x_update="gradient")),
        ("DiffPnPADMM", DiffPnPADMM(prior, steps=n)),
        ("DiffPnPHQS", DiffPnPHQS(prior, steps=n)),
        ("DiffPIR", DiffPIR(prior, steps=n + 1)),
        ("DPS", DPS(prior, steps=n)),
        ("DAPS", DAPS(prior, annealing_steps=max(1, n // 5), ode_steps=5, mcmc_steps=100)),
    ]
    print(f"one network forward ({args.size}×{args.size}, batch 1, {args.threads} threads): {fwd * 1e3:.2f} ms")
    print(f"{'solver':<12} {'NFE':>5} {'wall s':>8} {'floor s':>8} {'ratio':>6}")
    for name, s in solvers:
        r = s.solve(y, A, noise, generator=torch.Generator().manual_seed(1))
        floor = floor_seconds(r.nfe)
        print(f"{name:<12} {r.nfe:5d} {r.seconds:8.2f} {floor:8.2f} {r.seconds / floor:6.2f}")


if __name__ == "__main__":
    main()
