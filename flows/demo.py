"""The README's main job: ``ddiff demo`` — degrade, ingest, reconstruct, audit, report; offline, CPU.

Room: ``flows`` — numpy, torch, prefect, ``operators``, ``ddiff.metrics``, ``storage``, the flows and
:mod:`flows.console` (progress bars, solver options; never :mod:`flows.cli`); the images come from
scikit-image's bundled data through ``flows.sample_data.sample_images`` (the same loader and the
same held-out split as the default prior's training: the demo frames are cut from the HELD-OUT
rightmost 25 % of each image, which the prior never saw).

Stack: ``frames`` frames of ``size × size``, each the centre rows of one image's held-out part;
degraded in model space ``[-1, 1]`` by ``operator`` and Gaussian noise ``sigma`` (seeded), and
saved as physical values ``(y + 1)/2`` in ``.npy``; ingested with the explicit intensity range
``(0, 1)``, so model space inside the store equals the one the degradation used.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from prefect import flow, tags, task
from prefect.cache_policies import NO_CACHE

from .console import _LedgerProgress, _solver_options, _spinner
from .ui import flow_run_namer, run_tags, tag_this_run

__all__ = ["heldout_images", "make_demo_stack", "demo_pipeline", "DEMO_OPERATOR"]

#: the demo's degradation: the paper's Gaussian blur family at a smaller kernel (halo 12 px)
DEMO_OPERATOR = {"name": "gaussian_blur", "params": {"kernel_size": 25, "std": 2.0}}


def heldout_images(min_size: int) -> list[tuple[str, np.ndarray]]:
    """``[(name, (H, W) float32 in [-1, 1])]``: held-out parts at least ``min_size`` on both sides."""
    from .sample_data import sample_images

    _, held, names = sample_images()
    return [(n, h) for n, h in zip(names, held) if min(h.shape) >= min_size]


def make_demo_stack(folder, frames: int = 8, size: int = 128, sigma: float = 0.05, seed: int = 0,
                    operator: dict | None = None) -> dict:
    """Write ``degraded.npy`` (T, 1, size, size) and ``truth.npy`` (physical units [0, 1]) into
    ``folder``; returns their paths, the image names and the operator spec."""
    import operators

    operator = operator or DEMO_OPERATOR
    imgs = heldout_images(size)
    if len(imgs) < 1:
        raise RuntimeError(f"no held-out image part is at least {size}px; lower --size")
    names, truth = [], []
    for i in range(frames):
        name, im = imgs[i % len(imgs)]
        H, W = im.shape
        k = i // len(imgs)  # more frames than images: shift down by a tile for each repeat
        y0 = min(H - size, max(0, (H - size) // 2 + k * size // 2))
        truth.append(im[y0:y0 + size, :size])
        names.append(name)
    x = torch.from_numpy(np.stack(truth)[:, None].astype(np.float32))
    A = operators.get_operator(operator["name"], **operator["params"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = operators.GaussianNoise(sigma).sample(A(x), g)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "degraded.npy", ((y.numpy() + 1) / 2).astype(np.float32))
    np.save(folder / "truth.npy", ((x.numpy() + 1) / 2).astype(np.float32))
    return {"degraded": str(folder / "degraded.npy"), "truth": str(folder / "truth.npy"), "names": names,
            "operator": operator, "sigma": sigma}


_generate = task(name="generate-degraded-stack", task_run_name="generate {frames} degraded frames", persist_result=False,
                 cache_policy=NO_CACHE)(make_demo_stack)


def _demo_label(params: dict) -> str:
    return f"{params.get('frames')} frames {params.get('size')}px"


@flow(name="ddiff-demo", persist_result=False, flow_run_name=flow_run_namer("demo", "folder", _demo_label))
def demo_pipeline(folder: str, frames: int = 8, size: int = 128, sigma: float = 0.05, seed: int = 0,
                  prior: str = "default", solver: dict | None = None, tile: int = 128, overlap: int = 8,
                  execution: dict | None = None, progress: bool = False, calibration: str | None = None) -> dict:
    """``ddiff demo`` as ONE parent flow run: generate -> ingest -> reconstruct -> audit, each stage a
    child run (named from the data, tagged operator/solver/prior/user). Returns the stages' results
    and their wall times."""
    from . import audit_reconstruction, ingest_stack, reconstruct_stack
    from .params import AuditParams, IngestParams, ReconstructParams
    from .run_report import publish_verdict

    root = Path(folder).resolve()
    solver = solver or {"name": "ddiff"}
    run = run_tags(operator=DEMO_OPERATOR["name"], solver=solver.get("name", "ddiff"), prior=prior) + ["demo"]
    tag_this_run(run)
    stamps = {}
    with tags(*run):
        t = time.perf_counter()
        with _spinner("generating the degraded stack", progress):
            data = _generate(root / "data", frames=frames, size=size, sigma=sigma, seed=seed)
        stamps["generate"] = time.perf_counter() - t
        t = time.perf_counter()
        with _spinner("ingesting", progress):
            ingest_stack(IngestParams(source=data["degraded"], store=str(root / "input.zarr"), axes="tcyx",
                                      intensity=[0.0, 1.0], chunk=size, overwrite=True))
        stamps["ingest"] = time.perf_counter() - t
        p = ReconstructParams(
            input_store=str(root / "input.zarr"), output_store=str(root / "recon.zarr"), operator=data["operator"],
            noise={"kind": "gaussian", "sigma": sigma / 2}, prior=prior, solver=solver, tile=tile, overlap=overlap,  # data units: stored = (model + 1)/2
            seed=seed, execution=execution or {}, overwrite=True, calibration=calibration)
        t = time.perf_counter()
        with _LedgerProgress(p.output_store, "tiles solved", progress):
            states = {"reconstruct": reconstruct_stack(p, return_state=True)}
            rec = states["reconstruct"].result()
        stamps["reconstruct"] = time.perf_counter() - t
        t = time.perf_counter()
        with _spinner("auditing", progress):
            states["audit"] = audit_reconstruction(AuditParams(output_store=p.output_store), return_state=True)
            aud = states["audit"].result()
        stamps["audit"] = time.perf_counter() - t
    publish_verdict(p.output_store, rec, aud, states, AuditParams.model_fields["alpha"].default)
    return {"data": data, "input": p.input_store, "output": p.output_store, "reconstruct": rec, "audit": aud,
            "stamps": stamps}


def run_demo(a) -> int:
    """``ddiff demo`` (arguments from :func:`flows.cli.build_parser`): the whole pipeline, timed."""
    from rich.console import Console
    from rich.table import Table

    from ddiff.metrics import psnr
    from ddiff.priors.loading import DEFAULT_WEIGHTS

    import storage

    con = Console()
    t_start = time.perf_counter()
    root = Path(a.dir).resolve()
    calibration = None
    if getattr(a, "bounds", False):  # the shipped record: its frame size and tiles, its K (flows.calibration)
        from .calibration import load_record

        rec = load_record("demo")
        calibration = "demo"
        a.size = a.size or int(rec["frame_shape"][0])
        if a.tile == 128 and a.size == int(rec["frame_shape"][0]):
            a.tile, a.overlap = int(rec["tile"]), int(rec["overlap"])
    a.size = a.size or 128
    if a.prior == "default" and not DEFAULT_WEIGHTS.is_file():
        raise FileNotFoundError(f"the embedded default prior is not installed ({DEFAULT_WEIGHTS} is missing); "
                                "run the demo with --prior PATH/TO/prior.safetensors (e.g. one made by `ddiff train`)")
    if not a.no_progress:
        con.print("[dim]starting the Prefect run `ddiff-demo` (without PREFECT_API_URL a temporary server starts "
                  "first: ~10 s)[/dim]")
    r = demo_pipeline(str(root), frames=a.frames, size=a.size, sigma=a.sigma, seed=a.seed, prior=a.prior,
                      solver=_solver_options(a), tile=a.tile, overlap=a.overlap,
                      execution={"device": a.device, "dtype": a.dtype, "batch_size": a.batch_size,
                                 "max_workers": a.workers, "torch_threads": a.threads,
                                 "dask_address": a.dask_address, "dask_workers": a.dask_workers,
                                 "gpu_limit": a.gpu_limit},
                      progress=not a.no_progress, calibration=calibration)
    data, rec, aud, stamps = r["data"], r["reconstruct"], r["audit"], r["stamps"]

    out = storage.open_output(r["output"])
    truth = torch.from_numpy(2 * np.load(data["truth"]) - 1)
    deg = torch.from_numpy(2 * np.load(data["degraded"]) - 1)
    x = torch.from_numpy(out.intensity.to_model(out.recon()[:]))
    p_deg, p_rec = psnr(deg, truth), psnr(x.clamp(-1, 1), truth)
    flagged = {}
    for fr, k in aud["tiles_flagged"]:
        flagged[fr] = flagged.get(fr, 0) + 1
    tab = Table(title=f"ddiff demo — {a.frames} held-out frames {a.size}x{a.size}, "
                      f"{data['operator']['name']} {data['operator']['params']} + noise σ={a.sigma}")
    cols = ["frame", "image", "PSNR degraded", "PSNR recon", "χ²_ν", "flagged tiles"]
    inside = None
    if calibration:  # the bounds against the truth the demo knows (physical units [0, 1])
        cols += ["bound width", "truth inside bounds"]
        t_phys = np.load(data["truth"])
        inside = [np.mean((storage.read_bounds(out, i)[0] <= t_phys[i]) & (t_phys[i] <= storage.read_bounds(out, i)[1]))
                  for i in range(a.frames)]
    for col in cols:
        tab.add_column(col, justify="right" if col != "image" else "left")
    for i in range(a.frames):
        extra = [] if inside is None else [f"{aud['bounds']['frames'][i]['mean_width']:.3f}", f"{100 * inside[i]:.1f} %"]
        tab.add_row(str(i), data["names"][i], f"{float(p_deg[i]):.2f}", f"{float(p_rec[i]):.2f}",
                    f"{aud['chi2_nu'][i]:.3f}", f"{flagged.get(i, 0)}/{out.plan.n_tiles}", *extra)
    extra = [] if inside is None else [f"{np.mean([r['mean_width'] for r in aud['bounds']['frames']]):.3f}",
                                       f"{100 * np.mean(inside):.1f} %"]
    tab.add_row("mean", "", f"{float(p_deg.mean()):.2f}", f"{float(p_rec.mean()):.2f}",
                f"{float(np.mean(aud['chi2_nu'])):.3f}", f"{sum(flagged.values())}/{out.plan.n_tiles * a.frames}", *extra)
    con.print(tab)
    if calibration:
        con.print(aud["uncertainty"].split("\n\n")[-1], markup=False)  # "[lower, upper]" is not markup
    total = time.perf_counter() - t_start
    con.print(f"input store   {r['input']}\nreconstruction {r['output']}  (OME-NGFF image at the root + labels/audit_flags; diagnostics/, audit/)\n"
              f"audit report  {aud['report']}\ntruth / degraded  {data['truth']} / {data['degraded']}")
    con.print(f"times: " + ", ".join(f"{k} {v:.1f}s" for k, v in stamps.items())
              + f"; solver {rec['solver_seconds']:.1f}s; total {total:.1f}s "
              f"({rec['solved']} tiles solved, {rec['skipped']} reused)")
    return 0
