"""Benchmark: the CUDA path in one command (≤ 5 min): network throughput, the demo and a 4k² tiled frame.

Room: benchmarks — drives ``ddiff.priors``, ``flows`` and ``storage``.

    python benchmarks/gpu.py                    # on a CUDA machine: everything below, ~5 min
    python benchmarks/gpu.py --skip-compile     # without torch.compile (its first call compiles)
    python benchmarks/gpu.py --parts network    # one part only (network, demo, frame)

On a machine without CUDA it prints one line and exits 0.

Parts (each prints its table as soon as it is done; a part that would start after ``--budget``
seconds is skipped with a line saying so):

1. ``network`` — the embedded default prior's forward at batch ``--batch`` on ``--size``² tiles,
   images per second for: fp32; bf16 and fp16 autocast; fp32 weights in channels-last; a CUDA graph
   of the fp32 and of the bf16 forward (static input, replayed); ``torch.compile`` (fp32, default
   mode; its compile time is printed apart). Each variant's ε̂ against fp32: relative RMS error and
   the PSNR of ε̂ against the fp32 ε̂ (peak = the fp32 ε̂'s range).
2. ``demo`` — ``ddiff demo``'s pipeline (8 held-out frames of 128², blur + noise, DDiff auto, 100
   steps) with the prior in fp32 and in bf16: reconstruct seconds, mean PSNR against the truth, and
   the bf16 − fp32 PSNR difference (the number that says whether half precision costs quality).
3. ``frame`` — a 4096² uint16 frame (``benchmarks/big_frame.py``'s pattern) ingested and
   reconstructed on tiles of ``--tile`` at 1 DDiff step, fp32 and bf16: wall and solver seconds,
   per-tile wall, and the PSNR of the bf16 frame against the fp32 frame.

Everything runs in this process on ``cuda:0``; the network timings synchronise the device around
each timed block.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("network", "demo", "frame")


def no_cuda_line() -> str | None:
    """The one line printed on a machine without CUDA, or ``None`` when a CUDA device is there."""
    if torch.cuda.is_available():
        return None
    return (f"benchmarks/gpu.py: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False); "
            "nothing measured — run it on a machine with an NVIDIA GPU")


def psnr_against(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR (dB) of ``x`` against ``ref`` with ``ref``'s range as the peak."""
    x, ref = x.double(), ref.double()
    mse = float(((x - ref) ** 2).mean())
    peak = float(ref.max() - ref.min())
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, seconds: float, min_calls: int = 3) -> float:
    """Seconds per call: warm-up calls, then calls until ``seconds`` (at least ``min_calls``)."""
    for _ in range(2):
        fn()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    _sync(device)
    return (time.perf_counter() - t0) / n


def _graphed(net, x, t, autocast_dtype=None):
    """A CUDA graph of ``net(x, t)`` (optionally under autocast): returns ``(replay, static_output)``."""
    sx, st = x.clone(), t.clone()

    def call():
        if autocast_dtype is None:
            return net(sx, st)
        with torch.autocast("cuda", dtype=autocast_dtype, cache_enabled=False):
            return net(sx, st)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = call()
    return g.replay, out


def network_variants(net, x, t, device: torch.device, compile_net: bool = True) -> dict:
    """``{name: (callable returning ε̂ or None, note)}`` for the device: autocast variants everywhere
    (CPU autocast supports bf16), channels-last, CUDA graphs and ``torch.compile`` only on CUDA."""
    def autocast(dtype):
        def run():
            with torch.autocast(device.type, dtype=dtype):
                return net(x, t)
        return run

    v = {"fp32": (lambda: net(x, t), "")}
    v["bf16 autocast"] = (autocast(torch.bfloat16), "")
    if device.type == "cuda":
        v["fp16 autocast"] = (autocast(torch.float16), "")
        xc = x.contiguous(memory_format=torch.channels_last)

        def cl():
            net.to(memory_format=torch.channels_last)
            net.channels_last = True
            try:
                return net(xc, t)
            finally:
                net.to(memory_format=torch.contiguous_format)
                net.channels_last = False
        v["fp32 channels-last"] = (cl, "weights converted per call: an upper bound on its cost")
        for name, dt in (("fp32 CUDA graph", None), ("bf16 CUDA graph", torch.bfloat16)):
            try:
                replay, out = _graphed(net, x, t, dt)
                v[name] = ((lambda r=replay, o=out: (r(), o)[1]), "")
            except Exception as exc:  # noqa: BLE001 - report and go on
                v[name] = (None, f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        if compile_net:
            try:
                c = torch.compile(net)
                t0 = time.perf_counter()
                c(x, t)
                _sync(device)
                v["fp32 torch.compile"] = (lambda: c(x, t), f"first call (compile) {time.perf_counter() - t0:.1f} s")
            except Exception as exc:  # noqa: BLE001
                v["fp32 torch.compile"] = (None, f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    return v


def network_part(device: torch.device, batch: int, size: int, seconds: float, compile_net: bool = True,
                 prior: str = "default") -> list[dict]:
    """Images per second and ε̂ differences against fp32 for each variant; returns the rows."""
    from ddiff.priors import load_prior

    p = load_prior(prior, device=str(device))
    net = p.net
    if net.channels_last:  # the CUDA variants set their own layout; start from NCHW everywhere
        net.to(memory_format=torch.contiguous_format)
        net.channels_last = False
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, p.channels, size, size, generator=g).to(device)
    t = torch.full((batch,), 500.0, device=device)
    rows = []
    with torch.no_grad():
        ref = net(x, t).float()
        for name, (fn, note) in network_variants(net, x, t, device, compile_net).items():
            if fn is None:
                rows.append({"variant": name, "note": note})
                continue
            out = fn().float()
            sec = _timed(fn, device, seconds)
            rel = float(((out - ref).double().norm() / ref.double().norm()))
            rows.append({"variant": name, "img_per_s": batch / sec, "ms_per_batch": 1e3 * sec,
                         "rel_rms": rel, "psnr_vs_fp32": psnr_against(out, ref), "note": note})
    base = next(r["img_per_s"] for r in rows if r["variant"] == "fp32")
    for r in rows:
        if "img_per_s" in r:
            r["speedup"] = r["img_per_s"] / base
    return rows


def print_network(rows: list[dict], batch: int, size: int) -> None:
    print(f"\nnetwork: embedded default prior, batch {batch}, {size}² tiles")
    print(f"{'variant':<20} {'img/s':>9} {'ms/batch':>9} {'vs fp32':>8} {'rel RMS Δε̂':>11} {'PSNR vs fp32':>13}  note")
    for r in rows:
        if "img_per_s" not in r:
            print(f"{r['variant']:<20} {'—':>9} {'—':>9} {'—':>8} {'—':>11} {'—':>13}  {r['note']}")
            continue
        print(f"{r['variant']:<20} {r['img_per_s']:9.1f} {r['ms_per_batch']:9.2f} {r['speedup']:7.2f}x "
              f"{r['rel_rms']:11.2e} {r['psnr_vs_fp32']:12.1f}  {r['note']}", flush=True)


def demo_part(work: Path, device: str, steps: int | None) -> list[dict]:
    """The demo's pipeline in fp32 and bf16 (same data, same seeds); mean PSNR against the truth."""
    import numpy as np

    import storage
    from ddiff.metrics import psnr
    from flows.demo import demo_pipeline

    rows = []
    for dtype in ("fp32", "bf16"):
        solver = {"name": "ddiff"} if steps is None else {"name": "ddiff", "steps": steps}
        r = demo_pipeline(str(work / f"demo_{dtype}"), solver=solver,
                          execution={"device": device, "dtype": dtype, "batch_size": 8, "gpu_limit": None})
        out = storage.open_output(r["output"])
        truth = torch.from_numpy(2 * np.load(r["data"]["truth"]) - 1)
        x = torch.from_numpy(out.intensity.to_model(out.recon()[:])).clamp(-1, 1)
        rows.append({"dtype": dtype, "reconstruct_s": r["stamps"]["reconstruct"],
                     "solver_s": r["reconstruct"]["solver_seconds"], "psnr": float(psnr(x, truth).mean()),
                     "chi2_nu": float(np.mean(r["audit"]["chi2_nu"])), "x": x})
    return rows


def print_demo(rows: list[dict]) -> None:
    print("\ndemo: 8 held-out frames 128², Gaussian blur + σ 0.05, DDiff (auto)")
    print(f"{'prior dtype':<12} {'reconstruct s':>14} {'solver s':>9} {'mean PSNR':>10} {'Δ vs fp32':>10} {'mean χ²_ν':>10}")
    for r in rows:
        print(f"{r['dtype']:<12} {r['reconstruct_s']:14.1f} {r['solver_s']:9.1f} {r['psnr']:10.2f} "
              f"{r['psnr'] - rows[0]['psnr']:+10.2f} {r['chi2_nu']:10.3f}", flush=True)


def frame_part(work: Path, device: str, size: int, tile: int, batch: int) -> list[dict]:
    """A ``size``² frame, 1 DDiff step on ``tile``² tiles, fp32 and bf16."""
    import numpy as np

    import flows
    import storage

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from big_frame import make_source  # the same pattern as the CPU benchmark

    work.mkdir(parents=True, exist_ok=True)
    make_source(work / "src.npy", size)
    storage.ingest(work / "src.npy", work / "in.zarr", chunk=tile, pixel_size=0.5)
    rows, frames = [], {}
    for dtype in ("fp32", "bf16"):
        p = flows.ReconstructParams(input_store=str(work / "in.zarr"), output_store=str(work / f"recon_{dtype}.zarr"),
                                    operator={"name": "gaussian_blur", "params": {"std": 1.0}}, noise={"sigma": 0.05},
                                    solver={"name": "ddiff", "steps": 1}, tile=tile, overlap=16,
                                    execution={"device": device, "dtype": dtype, "batch_size": batch, "max_workers": 1,
                                               "gpu_limit": None},  # one process: no Prefect slot needed
                                    artifacts=False)
        t0 = time.perf_counter()
        r = flows.reconstruct_stack(p)
        wall = time.perf_counter() - t0
        frames[dtype] = torch.from_numpy(np.asarray(storage.open_output(p.output_store).recon()[0, 0], np.float32))
        rows.append({"dtype": dtype, "wall_s": wall, "solver_s": r["solver_seconds"], "tiles": r["n_tiles"],
                     "per_tile_s": wall / max(r["n_tiles"], 1)})
    for r in rows:
        r["psnr_vs_fp32"] = psnr_against(frames[r["dtype"]], frames["fp32"])
    return rows


def print_frame(rows: list[dict], size: int, tile: int) -> None:
    print(f"\nframe: {size}² uint16, tiles {tile}², 1 DDiff step")
    print(f"{'prior dtype':<12} {'wall s':>8} {'solver s':>9} {'tiles':>6} {'wall/tile s':>12} {'PSNR vs fp32':>13}")
    for r in rows:
        print(f"{r['dtype']:<12} {r['wall_s']:8.1f} {r['solver_s']:9.1f} {r['tiles']:6d} {r['per_tile_s']:12.3f} "
              f"{r['psnr_vs_fp32']:13.1f}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--batch", type=int, default=64, help="network part: images per call")
    ap.add_argument("--size", type=int, default=64, help="network part: tile side")
    ap.add_argument("--seconds", type=float, default=3.0, help="network part: timing per variant")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--demo-steps", type=int, default=None, help="demo part: DDiff steps (default: the demo's)")
    ap.add_argument("--frame-size", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=512, help="frame part: tile side")
    ap.add_argument("--frame-batch", type=int, default=16, help="frame part: tiles per network call")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds: later parts are skipped past it")
    ap.add_argument("--dir", default="/tmp/ddiff-gpu-bench")
    a = ap.parse_args(argv)
    line = no_cuda_line()
    if line is not None:
        print(line)
        return 0
    dev = torch.device("cuda:0")
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    t_start, work = time.perf_counter(), Path(a.dir)
    shutil.rmtree(work, ignore_errors=True)
    for part in a.parts:
        if time.perf_counter() - t_start > a.budget:
            print(f"\n{part}: skipped (past the {a.budget:.0f} s budget)")
            continue
        if part == "network":
            print_network(network_part(dev, a.batch, a.size, a.seconds, not a.skip_compile), a.batch, a.size)
        elif part == "demo":
            print_demo(demo_part(work, "cuda", a.demo_steps))
        else:
            print_frame(frame_part(work / "frame", "cuda", a.frame_size, a.tile, a.frame_batch), a.frame_size, a.tile)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
