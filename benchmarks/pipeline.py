"""Pipeline overhead of ``reconstruct_stack`` on the demo stack: (flow wall − Σ solver) / flow wall.

Room: ``benchmarks`` — a script; uses ``flows`` (the demo stack and the flows) and Prefect.

Σ solver is the sum over batch tasks of ``Result.seconds`` (the solver's own wall time inside
``solve``: network + operator + data steps). Everything else in the flow is overhead: Prefect
orchestration (flow/task runs, states, artifacts), reading tiles, padding, writing results,
diagnostics, blending/assembly, finalize. Printed side by side:

* ``flow``   — the flow's own wall time (``result["wall_seconds"]``, setup to finalize);
* ``call``   — wall time of the Python call ``reconstruct_stack(params)`` (adds flow-run creation
  and the summary artifact);
* ``server`` — time until the temporary Prefect API server answered (one-off per process when no
  ``PREFECT_API_URL`` is set; reported, not counted in the ratio).

    OMP_NUM_THREADS=2 python benchmarks/pipeline.py --prior default --steps 100 --tile 128
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", default="default")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args(argv)

    import flows
    from flows.demo import make_demo_stack

    root = Path(a.dir or tempfile.mkdtemp(prefix="ddiff-pipeline-"))
    data = make_demo_stack(root / "data", frames=a.frames, size=a.size, sigma=0.05, seed=0)
    t0 = time.perf_counter()
    flows.ingest_stack(flows.IngestParams(source=data["degraded"], store=str(root / "input.zarr"), axes="tcyx",
                                          intensity=[0.0, 1.0], chunk=a.size, overwrite=True), artifacts=False)
    t_server_and_ingest = time.perf_counter() - t0
    p = flows.ReconstructParams(
        input_store=str(root / "input.zarr"), output_store=str(root / "recon.zarr"), operator=data["operator"],
        noise={"kind": "gaussian", "sigma": 0.025}, prior=a.prior, solver={"name": "ddiff", "steps": a.steps},
        tile=a.tile, overlap=a.overlap, seed=0, execution={"batch_size": a.batch_size}, overwrite=True)
    t0 = time.perf_counter()
    r = flows.reconstruct_stack(p)
    call = time.perf_counter() - t0
    flow, solver = r["wall_seconds"], r["solver_seconds"]
    res = {"tiles": r["n_tiles"], "steps": a.steps, "server+ingest_s": t_server_and_ingest, "call_s": call,
           "flow_s": flow, "solver_s": solver, "overhead_flow": (flow - solver) / flow,
           "overhead_call": (call - solver) / call}
    print(f"demo stack: {a.frames} frames {a.size}x{a.size}, tile {a.tile}, {r['n_tiles']} tiles, {a.steps} steps, "
          f"batch {a.batch_size}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"server start + ingest {t_server_and_ingest:7.1f} s  (one-off, not in the ratio)")
    print(f"call wall             {call:7.1f} s")
    print(f"flow wall             {flow:7.1f} s")
    print(f"sum solver            {solver:7.1f} s")
    print(f"overhead (flow)  = (flow - solver)/flow = {100 * res['overhead_flow']:.1f} %   (target < 10 %)")
    print(f"overhead (call)  = (call - solver)/call = {100 * res['overhead_call']:.1f} %")
    return res


if __name__ == "__main__":
    main()
