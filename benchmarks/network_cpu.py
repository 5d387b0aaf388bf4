"""Benchmark: the prior network's CPU forward as a fraction of this machine's sgemm peak, before and after.

Room: benchmarks — drives ``ddiff.priors`` (no flows, no Prefect).

    nice python benchmarks/network_cpu.py                          # batches 1 4 16 on 64², 2 threads
    nice python benchmarks/network_cpu.py --batches 4 --repeats 15 # the target row only, more repeats
    nice python benchmarks/network_cpu.py --profile                # + where the time goes (batch 4)

What it does, in one process and one run (so the ratios are side by side on the same load):

1. measures the sgemm peak: the best of ``--repeats`` 1024³ float32 ``torch.mm`` at ``--threads``
   threads (before and after the network timings; the larger is used);
2. counts the network's FLOPs per image with ``torch.utils.flop_counter`` (convolutions, linear
   layers, attention matmuls; 2.40 GFLOP per 64² image for the embedded default prior);
3. times the forward of the embedded default prior (``load_prior("default")``) at each batch size,
   interleaving the variants round by round and keeping each one's best round:
   ``before`` = ``ddiff/priors/adm.py`` as it was at ``--baseline`` (a git revision, loaded from git
   with the same weights), ``after`` = the working tree's in NCHW order, ``after+cl`` = the network as
   ``load_prior`` gives it on CPU (channels-last activations and weights); each under ``torch.no_grad``;
4. prints ms per image, GFLOP/s, % of the sgemm peak, and the largest |ε̂ difference| against
   ``before`` (the float32 reference; the tolerance the tests hold is in tests/test_priors_adm.py).

Timings on a shared machine are noisy: compare the columns of one run, and read ``uptime``'s load,
printed first and last.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddiff.priors import load_prior  # noqa: E402


def baseline_module(rev: str):
    """``ddiff/priors/adm.py`` at git revision ``rev``, imported as a module of the ``ddiff.priors`` package."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:ddiff/priors/adm.py"], capture_output=True,
                         text=True, check=True).stdout
    mod = types.ModuleType("ddiff.priors._adm_baseline")
    mod.__package__ = "ddiff.priors"
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"adm.py@{rev}", "exec"), mod.__dict__)
    return mod


def best_seconds(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def sgemm_peak(repeats: int, n: int = 1024) -> float:
    """GFLOP/s of the best ``n³`` float32 matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    return 2 * n ** 3 / best_seconds(lambda: a @ b, repeats) / 1e9


def flops_per_image(net, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.randn(1, net.config.in_channels, size, size), torch.full((1,), 500.0))
    return float(fc.get_total_flops())


def load_uptime() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average n/a"


def profile_table(fn, rows: int = 14) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="tile side (divisible by 8)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=7, help="rounds per variant (the best one counts)")
    ap.add_argument("--baseline", default="c4fae1e", help="git revision of the 'before' adm.py")
    ap.add_argument("--prior", default="default")
    ap.add_argument("--profile", action="store_true", help="print the top ops of before and after at batch 4")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {a.threads} threads, {os.cpu_count()} CPUs, {load_uptime()}", flush=True)

    cl = load_prior(a.prior).net  # as load_prior gives it on CPU: channels-last
    after = load_prior(a.prior).net.to(memory_format=torch.contiguous_format)  # the same code in NCHW order
    after.channels_last = False
    base = baseline_module(a.baseline)
    before = base.ADMUNet(base.ADMConfig(**after.config.to_dict()))
    before.load_state_dict(after.state_dict())
    before.eval().requires_grad_(False)
    nets = {"before": before, "after": after, "after+cl": cl}

    peak = sgemm_peak(a.repeats)
    flop = flops_per_image(after, a.size)
    print(f"sgemm peak {peak:.1f} GFLOP/s (1024³ float32 matmul); network {flop / 1e9:.3f} GFLOP per "
          f"{a.size}² image", flush=True)
    rows = []
    for B in a.batches:
        x = torch.randn(B, after.config.in_channels, a.size, a.size)
        t = torch.full((B,), 500.0)
        with torch.no_grad():
            ref = before(x, t)
            diff = {k: float((n(x, t) - ref).abs().max()) for k, n in nets.items()}
            times = {k: [] for k in nets}
            for _ in range(a.repeats):  # interleaved rounds: each variant sees the same load
                for k, n in nets.items():
                    times[k].append(best_seconds(lambda: n(x, t), 1))
        rows.append((B, {k: min(v) for k, v in times.items()}, diff))
    peak = max(peak, sgemm_peak(a.repeats))

    head = f"{'batch':>5} " + " ".join(f"{k + ' ms/img':>16} {'% peak':>7}" for k in nets) + f" {'speed-up':>13} {'max |Δ| after, +cl':>20}"
    print(f"\nsgemm peak used: {peak:.1f} GFLOP/s\n{head}")
    for B, tm, diff in rows:
        cells = " ".join(f"{1e3 * tm[k] / B:16.1f} {100 * flop * B / tm[k] / 1e9 / peak:6.1f}%" for k in nets)
        print(f"{B:5d} {cells} {tm['before'] / tm['after+cl']:12.2f}x {diff['after']:9.1e}, {diff['after+cl']:.1e}")
    if a.profile:
        x, t = torch.randn(4, after.config.in_channels, a.size, a.size), torch.full((4,), 500.0)
        for k in ("before", "after"):
            with torch.no_grad():
                print(f"\n{k}, batch 4, 3 forwards:\n" + profile_table(lambda: nets[k](x, t)))
    print(load_uptime())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
