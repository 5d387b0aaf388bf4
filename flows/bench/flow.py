"""``benchmark``: the paper's protocol — Table 1, the Table 2 ablation, the noise study (Fig. 3)
and the NFE/time study (Fig. 5) — on any prior and images, from one flow (``ddiff bench``).

Room: ``flows`` (the benchmark package :mod:`flows.bench`) — prefect, torch, the package's
:mod:`~flows.bench.protocol` (tasks, solvers, metrics), :mod:`~flows.bench.store` (the resumable
output folder), :mod:`~flows.bench.report` and :mod:`~flows.bench.claims` (tables, plots, claims),
:mod:`flows.sample_data` (the bundled images), ``flows.tiles`` and ``flows.params``. Imports are
absolute (``flows.…``) so the deployment entrypoint ``flows/bench/flow.py:benchmark``, which Prefect
loads as a script, resolves them the same way as ``import flows.bench``.

The grid is a list of *cells* ``(task, solver, σ_y, NFE budget)``:

* Table 1 / Table 2: every task × every solver at ``sigma_y`` and ``nfe``;
* noise study: ``sweep_task`` × ``noise_sweep_solvers`` × ``noise_sweep`` at ``nfe``;
* NFE study: ``sweep_task`` × ``nfe_sweep_solvers`` × ``nfe_sweep`` at ``sigma_y``.

Every solver of a (task, σ_y) sees the same measurements (seeded from ``seed``, task and σ_y);
each image has its own generator per run, so results do not depend on batching or resume. TV's
weight is tuned per (task, σ_y) on crops of the TRAINING part of the bundled images — never on the
evaluation images. Wall seconds are measured side by side in one run: right after each diffusion
cell, the same batch is pushed through the bare network a few times; ``floor_seconds = NFE ×
one forward``. A task that cannot run here (nonlinear blur without the bkse weights, or on images
that are not RGB multiples of 128 px) is skipped and named in the report.

Output (``out``): ``config.json``, ``cells/``, ``results.csv``, ``results.zarr``,
``summary.csv``, ``table1.md``, ``table2.md``, ``timing.md``, ``claims.md`` (the paper's four
claims checked on these records, :mod:`flows.bench.claims`), ``noise_sweep.png``,
``nfe_sweep.png``, ``qualitative.png``, ``report.md``. Rerunning the same configuration resumes.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import time
from pathlib import Path

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from flows import tiles as T
from flows.bench import protocol as B
from flows.params import BenchmarkParams

__all__ = ["benchmark", "plan_cells", "OUTPUT_FILES"]

#: every file a complete benchmark writes (the sweep plots need ≥ 2 values of their axis)
OUTPUT_FILES = ("config.json", "results.csv", "results.zarr", "summary.csv", "table1.md", "table2.md", "timing.md",
                "claims.md", "noise_sweep.png", "nfe_sweep.png", "qualitative.png", "report.md")


def plan_cells(r: dict, skipped: dict[str, str]) -> list[dict]:
    """The grid of a resolved configuration ``r`` (``BenchmarkParams.resolved()``), without
    duplicates and without the tasks in ``skipped``. TV cells have ``nfe_budget = 0``."""
    cells, seen = [], set()

    def add(task, solver, sigma, nfe):
        if task in skipped:
            return
        key = (task, solver, float(sigma), 0 if solver == "tv" else int(nfe))
        if key not in seen:
            seen.add(key)
            cells.append(dict(task=key[0], solver=key[1], sigma_y=key[2], nfe_budget=key[3]))

    for t in r["tasks"]:
        for s in r["solvers"]:
            add(t, s, r["sigma_y"], r["nfe"])
    for sigma in r["noise_sweep"]:
        for s in r["noise_sweep_solvers"]:
            add(r["sweep_task"], s, sigma, r["nfe"])
    for n in r["nfe_sweep"]:
        for s in r["nfe_sweep_solvers"]:
            if s != "tv":
                add(r["sweep_task"], s, r["sigma_y"], n)
    return cells


def _skipped_tasks(r: dict, channels: int) -> dict[str, str]:
    """Tasks of ``r`` that cannot run here, with the reason."""
    out = {}
    if "nonlinear_blur" in r["tasks"] or r["sweep_task"] == "nonlinear_blur":
        weights = r.get("nonlinear_blur_weights") or os.environ.get("DDIFF_BKSE_WEIGHTS")
        if not weights or not Path(weights).is_file():
            out["nonlinear_blur"] = ("the bkse KernelWizard weights (GOPRO_wVAE.pth) are not present; pass "
                                     "nonlinear_blur_weights or set DDIFF_BKSE_WEIGHTS")
        elif channels != 3 or r["size"] % 128:
            out["nonlinear_blur"] = f"needs RGB images of a multiple of 128 px (prior has {channels} channel(s), size {r['size']})"
    return out


# ------------------------------------------------------------------------------------------------
# data: images, operators, measurements (deterministic, cached per process)
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _images(images: str | None, size: int, n: int, channels: int, tune: int) -> tuple:
    """``(x_eval, names, x_tune)``: evaluation images and TV-tuning crops, ``(N, C, size, size)``."""
    from flows.bench.store import load_eval_images, match_channels
    from flows.sample_data import crops, sample_images

    train, held, _ = sample_images()
    x_tune = match_channels(crops(train, tune, size, seed=1), channels)
    if images is None:
        x = match_channels(crops(held, n, size, seed=2), channels)
        names = [f"heldout{i}" for i in range(n)]
    else:
        x, names = load_eval_images(images, size, n, channels)
    return torch.from_numpy(x), names, torch.from_numpy(x_tune)


def _operator(task: str, size: int, weights: str | None, device: str):
    params = B.task_operator_params(task, size)
    if task == "nonlinear_blur":
        params.update(weights=weights or os.environ.get("DDIFF_BKSE_WEIGHTS"), image_size=(size, size))
    return T.build_operator(task, params, (size, size)).to(device)


def _measure(x: torch.Tensor, A, sigma: float, seed: int, task: str, salt: int = 0) -> torch.Tensor:
    """``y = A(x) + σ n`` with a generator seeded by (seed, task, σ): every solver sees the same y."""
    import operators

    g = torch.Generator(device=x.device).manual_seed(T.tile_seed(seed, B.TASKS.index(task), int(round(sigma * 1e6)) + salt))
    with torch.no_grad():
        return operators.GaussianNoise(sigma).sample(A(x), g)


@functools.lru_cache(maxsize=64)
def _tv_weight(task: str, sigma: float, cfg_json: str) -> float:
    """TV's weight for (task, σ_y), tuned on the training crops."""
    import operators

    r = json.loads(cfg_json)
    _, _, x_tune = _images(r["images"], r["size"], r["n_images"], r["channels"], r["tune_images"])
    x_tune = x_tune.to(r["device"])
    A = _operator(task, r["size"], r.get("nonlinear_blur_weights"), r["device"])
    y = _measure(x_tune, A, sigma, r["seed"], task, salt=1)
    return B.tune_tv_weight(y, A, operators.GaussianNoise(sigma), x_tune, r["tv_weights"], r["tv_iters"])


# ------------------------------------------------------------------------------------------------
# one cell
# ------------------------------------------------------------------------------------------------
@task(name="bench-cell", cache_policy=NO_CACHE)
def run_cell(cfg_json: str, cell: dict, run_id: str) -> dict:
    """Solve one cell, store its per-image records (and image 0's reconstruction); returns a summary."""
    import operators
    from flows.bench.store import cell_key, put_cell

    r = json.loads(cfg_json)
    task_, solver, sigma, nfe_budget = cell["task"], cell["solver"], cell["sigma_y"], cell["nfe_budget"]
    x, names, _ = _images(r["images"], r["size"], r["n_images"], r["channels"], r["tune_images"])
    x = x.to(r["device"])
    A = _operator(task_, r["size"], r.get("nonlinear_blur_weights"), r["device"])
    noise = operators.GaussianNoise(sigma)
    y = _measure(x, A, sigma, r["seed"], task_)
    overrides = dict(r["hyperparameters"].get(solver, {}))
    if solver == "tv":
        overrides = {"weight": _tv_weight(task_, sigma, cfg_json), "iters": r["tv_iters"]} | overrides
    prior = None if solver == "tv" else T.load_prior_cached(r["prior"], r["device"], r["dtype"])
    kwargs = B.solver_kwargs(solver, task_, max(nfe_budget, 1), r["dataset"], overrides)
    runs = r["phase_retrieval_runs"] if task_ == "phase_retrieval" and solver != "tv" else 1
    with T._device_guard(r["device"], r["gpu_limit"]):  # the GPU section shares the nightly runs' limit
        res = B.solve_best_of(B.build_solver(solver, prior, kwargs), y, A, noise, x, runs=runs, seed=r["seed"])
        n = x.shape[0]
        floor = 0.0 if prior is None else res.nfe * B.forward_seconds(prior, tuple(x.shape)) / n
    setting = json.dumps(kwargs, sort_keys=True, default=str)
    records = [dict(task=task_, solver=solver, sigma_y=sigma, nfe_budget=nfe_budget, image=names[i], image_index=i,
                    run=int(res.run[i]), runs=runs, **{k: float(v[i]) for k, v in res.metrics.items()},
                    nfe=res.nfe, seconds=res.seconds / n, floor_seconds=floor, setting=setting)
               for i in range(n)]
    put_cell(r["out"], run_id, cell_key(task_, solver, sigma, nfe_budget), records, res.x[0].float().cpu().numpy())
    return {"psnr": float(res.metrics["psnr"].mean()), "seconds": res.seconds, "nfe": res.nfe}


# ------------------------------------------------------------------------------------------------
# the flow
# ------------------------------------------------------------------------------------------------
@flow(name="benchmark", persist_result=False)
def benchmark(params: BenchmarkParams, artifacts: bool = True, command: str | None = None) -> dict:
    """Run (or resume) the benchmark of ``params``; returns ``{"out", "files", "cells", "skipped"}``."""
    from flows.bench.store import BenchmarkStore, cell_key

    from flows.bench import claims as bench_claims
    from flows.bench import report as bench_report
    from flows.reconstruct import artifact_key

    p = params if isinstance(params, BenchmarkParams) else BenchmarkParams.model_validate(params)
    logger = get_run_logger()
    r = p.resolved()
    prior = T.load_prior_cached(r["prior"], r["device"], r["dtype"])
    r["channels"] = int(prior.channels)
    skipped = _skipped_tasks(r, r["channels"])
    cells = plan_cells(r, skipped)
    # what defines the results (not where they go, nor whether to overwrite): a retrained prior
    # saved under the same path is another configuration, so its bytes are part of it
    # and so are the solver keywords each cell resolves to (TV's tuned weight aside): when what a
    # solver name means changes, a rerun into an old folder is refused instead of mixing the two
    settings = {cell_key(**c): B.solver_kwargs(c["solver"], c["task"], max(c["nfe_budget"], 1), r["dataset"],
                                               r["hyperparameters"].get(c["solver"], {})) for c in cells}
    store_config = {k: v for k, v in r.items() if k not in ("out", "overwrite", "gpu_limit")} | {
        "cells": cells, "settings": settings, "prior_sha256": _prior_sha256(r["prior"])}
    cfg_json = json.dumps(r, sort_keys=True, default=str)
    t_start = time.time()
    with BenchmarkStore(r["out"], store_config, overwrite=r["overwrite"]) as store:
        todo = [c for c in cells if not store.has(cell_key(**c))]
        logger.info("benchmark %s: %d cells (%d already done), %d images of %d², NFE %d; skipped: %s", p.preset,
                    len(cells), len(cells) - len(todo), r["n_images"], r["size"], r["nfe"], skipped or "none")
        art = create_progress_artifact(100.0 * (len(cells) - len(todo)) / max(len(cells), 1),
                                       key=artifact_key("bench-progress", r["out"])) if artifacts else None
        for i, c in enumerate(todo, 1):
            s = run_cell(cfg_json, c, store.run_id)
            logger.info("cell %d/%d %s %s σ=%g NFE=%d: PSNR %.2f dB, %.1f s", i, len(todo), c["task"], c["solver"],
                        c["sigma_y"], s["nfe"], s["psnr"], s["seconds"])
            if art is not None:
                update_progress_artifact(art, 100.0 * (len(cells) - len(todo) + i) / len(cells))
        records = store.records()
        files = store.write_tables(records)
        import pandas as pd

        df = pd.DataFrame.from_records(records)
        header = _header(p, r, skipped, command, time.time() - t_start, len(todo), len(cells))
        claims = bench_claims.claims_markdown(df, sigma_y=r["sigma_y"], nfe_budget=r["nfe"], sweep_task=r["sweep_task"])
        files |= bench_report.write_report(store.folder, df, sigma_y=r["sigma_y"], nfe_budget=r["nfe"],
                                           sweep_task=r["sweep_task"],
                                           noise_solvers=r["noise_sweep_solvers"], nfe_solvers=r["nfe_sweep_solvers"],
                                           images=_qualitative(store, r, cells),
                                           header=header, comparison=claims)
    files["config.json"] = str(Path(r["out"]) / "config.json")
    lpips = df["lpips"].to_numpy(float) if "lpips" in df else []
    notes = [] if any(v == v for v in lpips) else [bench_report.lpips_note()]  # all NaN: say why, and the fix
    for note in notes:
        logger.warning(note)
    if artifacts:
        create_markdown_artifact((Path(files["table1.md"]).read_text()), key=artifact_key("bench-table1", r["out"]),
                                 description="Table 1 (paper layout)")
    return {"out": r["out"], "files": files, "cells": len(cells), "ran": len(todo), "skipped": skipped, "notes": notes}


def _prior_sha256(prior: str) -> str:
    from ddiff.priors.loading import weights_path
    from storage import file_sha256

    return file_sha256(weights_path(prior))


def _qualitative(store, r: dict, cells: list[dict]) -> dict:
    """``{task: {"truth", "measurement", solver...: 2-D array}}`` for image 0 of the main cells
    (channel mean for RGB)."""
    from flows.bench.store import cell_key

    x, _, _ = _images(r["images"], r["size"], r["n_images"], r["channels"], r["tune_images"])
    out: dict = {}
    for c in cells:
        if c["sigma_y"] != r["sigma_y"] or c["nfe_budget"] not in (r["nfe"], 0):
            continue
        img = store.preview(cell_key(**c))
        if img is None:
            continue
        if c["task"] not in out:
            A = _operator(c["task"], r["size"], r.get("nonlinear_blur_weights"), "cpu")
            y = _measure(x[:1], A, r["sigma_y"], r["seed"], c["task"])
            y = (y.abs() if y.is_complex() else y)[0].float().mean(0).numpy()
            out[c["task"]] = {"truth": x[0].mean(0).numpy(), "measurement": y}
        out[c["task"]][c["solver"]] = img.mean(0)
    return out


def _header(p: BenchmarkParams, r: dict, skipped: dict, command: str | None, seconds: float, ran: int, total: int) -> str:
    """The report's preamble: what ran, on which machine, how long."""
    dev = torch.cuda.get_device_name(0) if r["device"].startswith("cuda") else platform.processor() or platform.machine()
    lines = [
        f"# Benchmark — preset `{p.preset}`", "",
        f"- command: `{command or 'flows.benchmark(BenchmarkParams(...))'}`",
        f"- machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, device `{r['device']}` ({dev}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {r['dtype']}",
        f"- prior: `{r['prior']}` ({r['channels']} channel(s)); paper hyperparameters for `{r['dataset']}`; "
        f"overrides: `{json.dumps(r['hyperparameters'])}`",
        f"- images: {r['n_images']} × {r['size']}² "
        + (f"from `{r['images']}`" if r["images"] else "held-out crops of scikit-image's bundled images (never seen in training)"),
        f"- Table 1/2: σ_y = {r['sigma_y']}, NFE budget {r['nfe']} for every diffusion solver; phase retrieval best of "
        f"{r['phase_retrieval_runs']} runs per image (by PSNR); TV weight tuned per task and σ_y on "
        f"{r['tune_images']} training crops",
        f"- noise study: `{r['sweep_task']}`, σ_y ∈ {r['noise_sweep']}, solvers {r['noise_sweep_solvers']}; "
        f"NFE study: NFE ∈ {r['nfe_sweep']}, solvers {r['nfe_sweep_solvers']}",
        f"- this invocation solved {ran} of {total} cells in {seconds / 60:.1f} min (the rest were resumed from `cells/`)",
    ]
    lines += [f"- skipped `{t}`: {why}" for t, why in skipped.items()]
    return "\n".join(lines) + "\n"
