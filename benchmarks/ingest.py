"""Benchmark: stream a generated uint16 stack (default ~4 GB) into OME-Zarr; print MB/s and peak RSS.

Room: benchmarks — uses ``storage`` only (no torch, no prefect).

    python benchmarks/ingest.py --size-gb 4 [--source npy|tiff] [--frame 2048] [--dir /tmp]

Generates the source block by block (never whole in memory), then runs, each in a fresh child
process so peak RSS is that step's alone: (a) a raw streamed read of the source (memory-mapped
``.npy`` / page-by-page TIFF) touching every byte — the I/O ceiling — and (b) ``storage.ingest``.
Prints both throughputs, their ratio, the ingest's peak RSS (must stay < 1 GB whatever the size;
exit code 1 otherwise) and the compression ratio. The source was just written, so it is probably
in the page cache: the numbers are the CPU-side cost of ingest, not cold-disk speed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
mode, src, dst = sys.argv[2], sys.argv[3], sys.argv[4]
t0 = time.perf_counter()
if mode == "raw":
    import numpy as np
    from storage.readers import open_source
    r = open_source(src)
    T = r.shape[0]; per = max(1, (64 << 20) // (r.shape[1] * r.shape[2] * r.shape[3] * r.dtype.itemsize))
    acc = 0
    for t in range(0, T, per):
        acc += int(r.read(t, min(T, t + per)).sum(dtype=np.uint64))
    r.close()
else:
    import storage
    storage.ingest(src, dst)  # defaults: chunk 256, shard 1024, blosc-zstd, source sha256
sec = time.perf_counter() - t0
# VmHWM = peak RSS of this process image (ru_maxrss would inherit the parent's peak across fork+exec)
hwm_kb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
print(json.dumps({"seconds": sec, "peak_rss_mb": hwm_kb / 1024}))
"""


def generate(path: Path, kind: str, n_frames: int, frame: int, seed: int = 0) -> None:
    """Microscopy-like uint16 frames (smooth background + noise), written block by block."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:frame, 0:frame].astype(np.float32) / frame
    bg = (1500 + 800 * np.sin(6 * yy) * np.cos(4 * xx)).astype(np.uint16)
    per = max(1, (64 << 20) // (frame * frame * 2))
    if kind == "npy":  # header + raw blocks with plain writes (a memmap would inflate our RSS)
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<u2", "fortran_order": False,
                                                      "shape": (n_frames, frame, frame)})
            for t in range(0, n_frames, per):
                n = min(per, n_frames - t)
                fh.write((bg + rng.integers(0, 256, (n, frame, frame), dtype=np.uint16)).astype("<u2").tobytes())
    else:
        import tifffile

        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            for t in range(n_frames):
                tw.write(bg + rng.integers(0, 256, (frame, frame), dtype=np.uint16), photometric="minisblack",
                         contiguous=True)


def child(mode: str, src: Path, dst: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), mode, str(src), str(dst)], check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=4.0, help="source size in GB (1e9 bytes); default 4")
    ap.add_argument("--frame", type=int, default=2048, help="frame edge in pixels; default 2048")
    ap.add_argument("--source", choices=["npy", "tiff"], default="npy")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder, removed afterwards)")
    args = ap.parse_args(argv)
    n_frames = max(1, round(args.size_gb * 1e9 / (args.frame * args.frame * 2)))
    work = Path(tempfile.mkdtemp(prefix="ddiff-ingest-bench-", dir=args.dir))
    try:
        src = work / ("stack.npy" if args.source == "npy" else "stack.tif")
        t0 = time.perf_counter()
        generate(src, args.source, n_frames, args.frame)
        gen_s = time.perf_counter() - t0
        nbytes = n_frames * args.frame * args.frame * 2
        mb = nbytes / 1e6
        raw = child("raw", src, work / "unused")
        ing = child("ingest", src, work / "stack.zarr")
        stored = du(work / "stack.zarr")
        print(f"source: {args.source} {n_frames} x {args.frame} x {args.frame} uint16 = {mb:.0f} MB "
              f"(generated in {gen_s:.1f} s)")
        print(f"raw streamed read : {raw['seconds']:8.2f} s  {mb / raw['seconds']:8.1f} MB/s  "
              f"peak RSS {raw['peak_rss_mb']:.0f} MB")
        print(f"storage.ingest    : {ing['seconds']:8.2f} s  {mb / ing['seconds']:8.1f} MB/s  "
              f"peak RSS {ing['peak_rss_mb']:.0f} MB")
        print(f"ingest / raw-read throughput ratio: {raw['seconds'] / ing['seconds']:.3f}")
        print(f"stored {stored / 1e6:.0f} MB (compression ratio {nbytes / stored:.2f}x, blosc-zstd)")
        ok = ing["peak_rss_mb"] < 1024
        print(f"peak RSS < 1 GB: {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
