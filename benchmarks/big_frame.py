"""Benchmark: one frame larger than memory budgets, ingested and reconstructed region by region.

Room: benchmarks — drives ``storage`` and ``flows`` (each step in a fresh child process).

    nice python benchmarks/big_frame.py                       # 16384 x 16384 uint16, 1 solver step
    nice python benchmarks/big_frame.py --size 4096 --steps 1 # the same path on a 4k frame (~16x less)
    nice python benchmarks/big_frame.py --ingest-only         # the 16k ingest alone
    nice python benchmarks/big_frame.py --storage-only        # ingest + the storage path with an identity solve
    nice python benchmarks/big_frame.py --storage-only --audit  # ... then the audit (block by block)
    nice python benchmarks/big_frame.py --max-tiles 16 --batch 1  # the flow, cut after 16 tiles (RSS vs frame size)

What it does: writes a ``--size``² uint16 frame as ``.npy`` band by band (never whole in memory),
then runs, each in its own child process so a peak RSS is that step's alone:

1. ``storage.ingest`` (64 MiB blocks: a frame this size is streamed in shard-aligned windows);
2. the ``reconstruct_stack`` flow (Gaussian blur σ = 1 px, Gaussian noise, default prior, DDiff
   with ``--steps`` diffusion steps — a cheap setting: the cost per tile, not the quality, is
   measured), tiles ``--tile``², batches of ``--batch`` (4), one worker: tiles are read with their halos from
   the input store, solved, staged, blended core by core into the output and the pyramid is
   built chunk by chunk — no step holds the frame.

Prints per step: wall seconds and peak RSS (VmHWM of the step's process); for the reconstruction
also the sum of solver seconds over batches and the ratio wall / solver (what the pipeline costs on
top of the network). A whole float32 frame would be ``4·size²`` bytes (1 GiB at 16k): the target is
peak RSS < 2 GB (exit 1 otherwise). Prefect runs an ephemeral API server for the flow in another
process; its memory is not part of the flow process's peak and is reported apart when measurable.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
step, work, cfg = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
t0 = time.perf_counter()
out = {}
if step == "ingest":
    import storage
    st = storage.ingest(work + "/src.npy", work + "/in.zarr", chunk=cfg["tile"], pixel_size=0.5)
    out["frames"] = st.n_frames
elif step == "storage":  # the storage path alone: identity "solve" (y itself), no network, no Prefect
    import numpy as np
    import storage
    st = storage.open_stack(work + "/in.zarr")
    plan = storage.TilePlan(st.frame_shape, tile=cfg["tile"], halo=4, overlap=16)
    o = storage.create_output(work + "/recon.zarr", st, plan, {"solver": "identity", "operator": {
        "name": "gaussian_blur", "params": {"std": 1.0}}, "noise": {"kind": "gaussian", "sigma": 40.0}})
    with storage.RunLock(o.path) as lock:
        for frame, k in o.ledger.pending():
            inp = storage.read_tile(st, frame, k, plan)
            storage.write_tile_result(o.path, frame, k, inp.data, {"chi2_nu": 1.0}, np.zeros_like(inp.data),
                                      run_id=lock.run_id)
        for frame in range(o.n_frames):
            storage.assemble_frame(o.path, frame, run_id=lock.run_id)
        storage.finalize(o.path, run_id=lock.run_id)
    err = np.abs(o.recon()[0, :, :512, :512] - st.array[0, :, :512, :512].astype(np.float32)).max()
    out.update({"n_tiles": plan.n_tiles, "identity_max_err": float(err)})
elif step == "audit":  # the audit of the storage path's output, block by block (flows.audit_regions)
    import flows
    r = flows.audit_reconstruction(flows.AuditParams(output_store=work + "/recon.zarr", artifacts=False))
    out.update({"chi2_nu": r["chi2_nu"][0], "frames_flagged": len(r["frames_flagged"])})
else:
    import flows
    from flows.params import ReconstructParams
    p = ReconstructParams(input_store=work + "/in.zarr", output_store=work + "/recon.zarr",
                          operator={"name": "gaussian_blur", "params": {"std": 1.0}}, noise={"sigma": 0.05},
                          solver={"name": "ddiff", "steps": cfg["steps"]}, tile=cfg["tile"], overlap=16,
                          execution={"batch_size": cfg["batch"], "max_workers": 1, "torch_threads": cfg["threads"]},
                          artifacts=False, fail_after_tiles=cfg["max_tiles"])
    if cfg["max_tiles"] is None:
        r = flows.reconstruct_stack(p)
        out.update({k: r[k] for k in ("n_tiles", "solved", "wall_seconds", "solver_seconds", "nfe")})
    else:  # a cut run: the first max_tiles tiles are solved and staged, then the flow stops on purpose
        import numpy as np
        import storage
        from flows.tiles import InjectedFailure
        try:
            flows.reconstruct_stack(p)
        except InjectedFailure:
            pass
        o = storage.open_output(work + "/recon.zarr")
        sec = o.open_diagnostics()["seconds"].values
        out.update({"n_tiles": o.plan.n_tiles, "solved": o.ledger.count("solved"),
                    "wall_seconds": time.perf_counter() - t0, "solver_seconds": float(np.nansum(sec)), "nfe": -1})
out["seconds"] = time.perf_counter() - t0
out["peak_rss_mb"] = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print("RESULT " + json.dumps(out))
"""


def make_source(path: Path, n: int, band: int = 512) -> None:
    """A smooth pattern plus noise, written band by band into a memory-mapped ``.npy``."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(n, n))
    rng = np.random.default_rng(0)
    x = np.arange(n, dtype=np.float32)
    for y0 in range(0, n, band):
        y = np.arange(y0, min(n, y0 + band), dtype=np.float32)[:, None]
        img = 2000 + 1000 * np.sin(x / 97.0) * np.cos(y / 61.0) + 300 * np.sin((x + y) / 13.0)
        arr[y0:y0 + len(y)] = (img + rng.normal(0, 40, img.shape)).clip(0, 65535).astype(np.uint16)
        arr.flush()
    del arr


def run_step(step: str, work: Path, cfg: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), step, str(work), json.dumps(cfg)],
                          capture_output=True, text=True,
                          env={"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",  # a loaded shared machine
                               **os.environ, "PYTHONPATH": str(ROOT)})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"step {step} failed (exit {proc.returncode})")
    res = json.loads(line[0][7:])
    res["process_wall"] = time.perf_counter() - t0
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="tiles per network call (activation memory scales with it)")
    ap.add_argument("--dir", default="/tmp/ddiff-bigframe")
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--ingest-only", action="store_true", help="stop after the ingest step")
    ap.add_argument("--storage-only", action="store_true",
                    help="after ingest, run the storage path with an identity solve instead of the flow")
    ap.add_argument("--audit", action="store_true",
                    help="with --storage-only: then run `ddiff audit` on that output (the blurred identity solve "
                         "misfits: a busy flag map) and report its peak RSS")
    ap.add_argument("--max-tiles", type=int, default=None,
                    help="solve only the first N tiles, then stop (a deliberate cut: peak RSS against frame size "
                         "without solving every tile); no blending or pyramid")
    ap.add_argument("--reuse-input", action="store_true",
                    help="reuse DIR/in.zarr from an earlier --keep run (skip writing the source and ingest)")
    a = ap.parse_args(argv)
    work = Path(a.dir)
    cfg = {"tile": a.tile, "steps": a.steps, "threads": a.threads, "batch": a.batch, "max_tiles": a.max_tiles}
    if a.reuse_input and (work / "in.zarr" / "zarr.json").is_file():
        shutil.rmtree(work / "recon.zarr", ignore_errors=True)
        ing = {"seconds": float("nan"), "peak_rss_mb": 0.0}
        print(f"input store reused: {work / 'in.zarr'} (ingest not rerun)", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        make_source(work / "src.npy", a.size)
        print(f"source {a.size}x{a.size} uint16 ({a.size * a.size * 2 / 2**20:.0f} MiB; float32 frame "
              f"{a.size * a.size * 4 / 2**20:.0f} MiB) written in {time.perf_counter() - t0:.1f}s", flush=True)
        ing = run_step("ingest", work, cfg)
    print(f"ingest       {ing['seconds']:8.1f} s   peak RSS {ing['peak_rss_mb']:7.0f} MB", flush=True)
    if a.ingest_only:
        shutil.rmtree(work, ignore_errors=True)
        print(f"peak RSS {ing['peak_rss_mb']:.0f} MB; target < 2000 MB: {'OK' if ing['peak_rss_mb'] < 2000 else 'EXCEEDED'}")
        return 0 if ing["peak_rss_mb"] < 2000 else 1
    if a.storage_only:
        sto = run_step("storage", work, cfg)
        print(f"storage path {sto['seconds']:8.1f} s   peak RSS {sto['peak_rss_mb']:7.0f} MB   {sto['n_tiles']} tiles "
              f"(read with halo, stage, residual, blend, pyramid); identity solve gives the input back to {sto['identity_max_err']:.2g} ADU", flush=True)
        if a.audit:
            aud = run_step("audit", work, cfg)
            print(f"audit        {aud['seconds']:8.1f} s   peak RSS {aud['peak_rss_mb']:7.0f} MB   (block by block: "
                  f"statistics, window_p, flag map, labels/audit_flags; chi2_nu {aud['chi2_nu']:.3g})", flush=True)
            sto["peak_rss_mb"] = max(sto["peak_rss_mb"], aud["peak_rss_mb"])
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        peak = max(ing["peak_rss_mb"], sto["peak_rss_mb"])
        print(f"peak RSS {peak:.0f} MB; target < 2000 MB: {'OK' if peak < 2000 else 'EXCEEDED'}")
        return 0 if peak < 2000 else 1
    rec = run_step("reconstruct", work, cfg)
    ratio = rec["wall_seconds"] / max(rec["solver_seconds"], 1e-9)
    print(f"reconstruct  {rec['wall_seconds']:8.1f} s   peak RSS {rec['peak_rss_mb']:7.0f} MB   "
          f"{rec['n_tiles']} tiles, solver {rec['solver_seconds']:.1f} s, wall / solver = {ratio:.2f}, "
          f"NFE {rec['nfe']}", flush=True)
    import storage

    out = storage.open_output(work / "recon.zarr")
    if a.max_tiles is None:
        corner = out.recon(out.levels - 1)[0]
        print(f"output: {out.levels} pyramid levels, coarsest {corner.shape[1:]} finite: {bool(np.isfinite(corner).all())}")
    else:
        print(f"cut run: {rec['solved']} of {rec['n_tiles']} tiles solved and staged (wall includes the flow's start: "
              "server, prior load)")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    peak = max(ing["peak_rss_mb"], rec["peak_rss_mb"])
    print(f"peak RSS (largest step) {peak:.0f} MB; target < 2000 MB: {'OK' if peak < 2000 else 'EXCEEDED'}")
    return 0 if peak < 2000 else 1


if __name__ == "__main__":
    raise SystemExit(main())
