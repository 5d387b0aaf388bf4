"""The ``ddiff`` command line: ``demo``, ``ingest``, ``reconstruct``, ``audit``, ``train``, ``bench``.

Room: ``flows`` — argparse + rich on top of the flows. Each command builds the flow's pydantic
parameters and calls the flow (Prefect runs it against ``PREFECT_API_URL`` when set, otherwise it
starts a temporary local server for the duration of the command — no network needed).

Pre-flight: ``ingest``, ``reconstruct`` and ``audit`` check everything checkable before Prefect
starts (:mod:`flows.checks`); the temporary API server (when no ``PREFECT_API_URL`` is set) dies
with the command, however it ends (:mod:`flows.api_server`). Messages name the command's flags
(``--overwrite``, not ``overwrite=True``: :func:`flows.console.cli_spelling`).

Errors: bad input (``ValueError`` and its subclasses — storage errors, validation errors —,
missing files, a locked output) print ONE line ``ddiff: error: ...`` and exit with code 2; any
other failure prints one line and exits with 1 (``--debug`` shows the traceback).
Progress: a rich progress bar follows the output's ledger (works for local and Dask runs alike).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# the helpers the demo shares live in flows.console (no import cycle cli <-> demo); these names stay
# importable from flows.cli as before
from .cli_options import HelpFormatter, _add_reconstruct_options, _noise_options, _reconstruct_params  # noqa: F401
from .console import (_BenchProgress, _console, _kv, _LedgerProgress, _PollProgress,  # noqa: F401
                      _solver_options, _spinner, cli_spelling)

__all__ = ["main", "build_parser"]


def command_server():
    """The command's temporary Prefect API server, killed with the command (:mod:`flows.api_server`);
    started only after the pre-flight checks, so bad input never waits for it."""
    from .api_server import command_server as server

    return server()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _quiet_prefect(verbose: bool) -> None:
    """Silence Prefect's console handler unless ``--verbose`` (must run before prefect is imported).
    Only the *console* handler changes: the API log handler still ships the runs' logs to the
    Prefect UI. Flow-failure tracebacks are therefore not printed (the CLI prints one line)."""
    if not verbose and "prefect" not in sys.modules:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
def cmd_ingest(a) -> int:
    from .checks import check_ingest
    from .params import IngestParams

    intensity = a.intensity
    if "," in intensity:
        try:
            intensity = [float(v) for v in intensity.split(",")]
        except ValueError:
            raise ValueError(f"--intensity {a.intensity!r}: give two numbers LOW,HIGH (e.g. 0,4095) or one of "
                             "percentile, minmax, dtype") from None
    from storage.validity import saturation_level

    sat = a.saturation
    sat = None if sat == "none" else (sat if sat == "dtype" else saturation_level(sat, None))
    pixel = None if a.pixel_size is None else [float(v) for v in a.pixel_size.split(",")]
    p = IngestParams(source=a.source, store=a.store, axes=a.axes, chunk=a.chunk, intensity=intensity,
                     nonfinite=a.nonfinite, saturation=sat, mask=a.mask, bad_pixels=a.bad_pixels,
                     overwrite=a.overwrite, pixel_size=pixel, z_step=a.z_step,
                     time_step=a.time_step, space_unit=a.space_unit, time_unit=a.time_unit, domain=a.domain,
                     angles=a.angles, sampling_mask=a.sampling_mask, image_size=a.image_size,
                     oversample=a.oversample, max_size=a.max_size)
    check_ingest(p)  # before Prefect starts: a bad source or target is reported in a second
    from . import ingest_stack

    with command_server(), _spinner(f"ingesting {a.source}", not a.no_progress):
        info = ingest_stack(p)
    _console().print(f"[green]ingested[/green] {info['store']}  axes {info['axes']} {info['sizes']}  {info['dtype']}  "
                     f"pixel {info['scale']} {info['units']} (from {info['geometry_source']})"
                     + (f"  ({a.domain}: solved as whole frames on the image grid the store records)"
                        if a.domain != "image" else ""))
    if info["invalid"]["invalid"]:
        _console().print(f"invalid entries (masked out of the likelihood): {info['invalid']}")
    return 0


def cmd_reconstruct(a) -> int:
    from .checks import check_reconstruct

    p = _reconstruct_params(a)
    check_reconstruct(p)  # before Prefect starts (the flow checks again; the loaded prior is cached)
    from . import reconstruct_stack

    from .api_server import api_watchdog
    from .run_report import kept_and_resume, prior_only_text

    import storage

    unit = "frames" if storage.measurement_of(p.input_store) is not None else "tiles"  # measurements: whole frames
    with command_server(), api_watchdog(lambda: kept_and_resume(p)), _LedgerProgress(p.output_store, f"{unit} solved",
                                                                         not a.no_progress):
        r = reconstruct_stack(p)
    from .run_report import noise_text

    _console().print(f"noise: {noise_text({k: r.get(k) for k in ('noise', 'noise_estimate', 'noise_units')})}")
    _console().print(f"[green]done[/green] {r['output']}: {r['solved']} {r.get('unit', 'tiles')} solved, {r['skipped']} resumed, "
                     f"{r['wall_seconds']:.1f}s (solver {r['solver_seconds']:.1f}s)")
    if r.get("frames_prior_only") or r.get("tiles_prior_only"):
        _console().print(prior_only_text(r))
    return 0


def cmd_audit(a) -> int:
    from . import audit_reconstruction
    from .checks import check_audit
    from .params import AuditParams

    from .api_server import api_watchdog

    check_audit(a.output)
    with command_server(), api_watchdog(lambda: f"the reconstruction is untouched; rerun: ddiff audit {a.output}"), \
            _spinner(f"auditing {a.output}", not a.no_progress):
        r = audit_reconstruction(AuditParams(output_store=a.output, report_dir=a.report_dir, alpha=a.alpha,
                                             window=a.window, max_width=a.max_width))
    _console().print(f"[green]audit[/green] report {r['report']}; frames flagged {r['frames_flagged']}; "
                     f"tiles flagged {len(r['tiles_flagged'])}")
    if r.get("bounds"):  # calibrated bounds: widths, the unresolved share and the guarantee
        _console().print(r["uncertainty"].split("\n\n")[-1], markup=False)
    if r.get("frames_prior_only"):
        from .run_report import prior_only_text

        _console().print(prior_only_text(r))
    if r.get("volume"):  # z-stacks: the 3-D re-measurement per plane and per brick (audit_volume/)
        v = r["volume"]
        _console().print(f"volume: per-plane χ²_ν {v['planes']} (None: within halo_z of the stack's ends, not "
                         f"audited); bricks flagged {len(v['bricks_flagged'])} of {v['bricks']} {v['bricks_flagged'][:20]}")
    return 0


def cmd_train(a) -> int:
    from . import train_prior
    from .params import TrainParams

    p = TrainParams(data_store=a.data, out_dir=a.out_dir, preset=a.preset, crop=a.crop, steps=a.steps,
                    batch_size=a.batch_size, lr=a.lr, seed=a.seed, device=a.device, max_minutes=a.max_minutes,
                    export=a.export, init=a.init, lr_schedule=a.lr_schedule, lr_min=a.lr_min,
                    warmup_steps=a.warmup_steps, ema_decay=a.ema, low_t_fraction=a.low_t_fraction)
    with command_server(), _spinner(f"training {a.preset} ({a.steps} steps, log: {a.out_dir}/loss.jsonl)", not a.no_progress):
        r = train_prior(p)
    _console().print(f"[green]trained[/green] step {r.get('step')} loss {r.get('last_loss')} -> {r.get('checkpoint')}"
                     + (f"; exported {r['exported']}" if r.get("exported") else ""))
    return 0


def cmd_bench(a) -> int:
    from . import benchmark
    from .params import BenchmarkParams

    def listed(v, cast=str):
        return None if v is None else [cast(x) for x in v.split(",") if x.strip()]

    hp: dict = {}
    for k, v in _kv(a.set, "--set").items():
        solver, dot, key = k.partition(".")
        if not dot:
            raise ValueError(f"--set {k}=... must name a solver and a keyword, e.g. --set ddiff.gamma0=5")
        hp.setdefault(solver, {})[key] = v
    p = BenchmarkParams(
        preset=a.preset, out=a.out, prior=a.prior, dataset=a.dataset, images=a.images, tasks=listed(a.tasks),
        solvers=listed(a.solvers), size=a.size, n_images=a.n_images, nfe=a.nfe, sigma_y=a.sigma,
        noise_sweep=listed(a.noise_sweep, float), nfe_sweep=listed(a.nfe_sweep, int), sweep_task=a.sweep_task,
        noise_sweep_solvers=listed(a.noise_sweep_solvers), nfe_sweep_solvers=listed(a.nfe_sweep_solvers),
        phase_retrieval_runs=a.pr_runs, hyperparameters=hp, nonlinear_blur_weights=a.nonlinear_blur_weights,
        seed=a.seed, device=a.device, dtype=a.dtype, overwrite=a.overwrite)
    with command_server(), _BenchProgress(a.out, f"benchmark ({a.preset})", not a.no_progress):
        r = benchmark(p, command="ddiff " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None)
    from rich.markdown import Markdown

    con = _console()
    con.print(Markdown(Path(r["files"]["table1.md"]).read_text()))
    for t, why in r["skipped"].items():
        con.print(f"skipped {t}: {why}")
    for note in r.get("notes", []):
        con.print(f"[yellow]{note}[/yellow]")
    con.print(f"report: {r['files']['report.md']} ({r['ran']} of {r['cells']} cells run now)")
    return 0


def cmd_calibrate(a) -> int:
    from .calibrate import run_calibrate

    return run_calibrate(a, command_server)


def cmd_demo(a) -> int:
    from .demo import run_demo

    with command_server():
        return run_demo(a)


# ---------------------------------------------------------------------------------------------
# parser and entry point
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ddiff", description="DDiff image restoration pipeline: ingest -> "
                                 "reconstruct -> audit, as Prefect flows (locally, on a GPU worker, or on Dask).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show Prefect's run logs on the console")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(*args, **kw):
        return _add(*args, parents=[common], formatter_class=HelpFormatter, **kw)

    sub.add_parser = add_parser  # every command takes --verbose/--debug/--no-progress

    sp = sub.add_parser("demo", help="degrade a small held-out stack, reconstruct it with the default prior, audit it",
                        description="Generates a small degraded stack from the held-out regions of scikit-image's "
                                    "bundled images, ingests it, reconstructs it with the default prior, audits it and "
                                    "prints where everything is plus a table (PSNR vs truth, chi2, flagged tiles). "
                                    "CPU, offline, a few minutes.")
    sp.add_argument("--dir", default="ddiff-demo", help="working folder (default: ./ddiff-demo)")
    sp.add_argument("--frames", type=int, default=8, help="frames of the generated stack")
    sp.add_argument("--size", type=int, default=None, help="frame side in pixels (default 128; with --bounds the "
                    "shipped record's frame size; held-out parts are >= 128 wide)")
    sp.add_argument("--bounds", action="store_true", help="also compute per-pixel error bounds with the shipped "
                    "calibration record (its K seeds: K x the solver cost) and show how often they hold the truth")
    sp.add_argument("--sigma", type=float, default=0.05,
                    help="noise σ of the generated stack in model space [-1, 1] (= σ/2 in its stored units)")
    _add_reconstruct_options(sp, demo=True)
    sp.set_defaults(fn=cmd_demo)

    sp = sub.add_parser("ingest", help="stream a TIFF/.npy/folder/HDF5 stack into an OME-Zarr input store",
                        description="Stream SOURCE into the OME-Zarr store STORE (flow ingest_stack).")
    sp.add_argument("source", help="a TIFF/OME-TIFF/ImageJ file, a .npy, a folder of PNG/JPEG/TIFF frames, or "
                    "file.h5:/dataset (docs/volumes.md: what each TIFF layout becomes)")
    sp.add_argument("store", help="the OME-Zarr input store to write (a folder, e.g. in.zarr)")
    sp.add_argument("--axes", default=None, help="the source's axes in its own order, letters of TCZYX, one per axis "
                    "tifffile reports (e.g. TYX for a (3, H, W) page of samples, ZYX, TZCYX); default: from OME-TIFF/"
                    "ImageJ metadata, HDF5 dimension labels, else leading axes are time")
    sp.add_argument("--pixel-size", default=None, help="Y,X (or one value) physical pixel size; default: from the file")
    sp.add_argument("--z-step", type=float, default=None, help="physical z spacing; default: from the file")
    sp.add_argument("--time-step", type=float, default=None, help="time between frames; default: from the file")
    sp.add_argument("--space-unit", default=None, help="e.g. micrometer, nanometer (default: from the file)")
    sp.add_argument("--time-unit", default=None, help="e.g. second, millisecond (default: from the file)")
    sp.add_argument("--chunk", type=int, default=256, help="chunk side in pixels of the stored frames")
    sp.add_argument("--intensity", default="percentile", help="the map to model space [-1, 1]: percentile (0.1/99.9th "
                    "percentiles of the data), minmax, dtype (the integer range) or LOW,HIGH in data units")
    sp.add_argument("--nonfinite", default="refuse", choices=["refuse", "mask"],
                    help="NaN/inf pixels: refuse the source, or mask them out of the fit")
    sp.add_argument("--max-size", default=None, metavar="SIZE", help="refuse a source declaring more than SIZE "
                    "uncompressed (e.g. 500G, 2TiB); default: the free space on the store's disk")
    sp.add_argument("--saturation", default="dtype",
                    help="values >= LEVEL (data units) are saturated and masked out: 'dtype' (default: the integer "
                         "maximum, e.g. 65535), a number (e.g. 4095 for a 12-bit camera), or 'none'")
    sp.add_argument("--mask", default=None, help="validity mask (.npy/.tif, non-zero = valid): (H,W), (T,H,W) or (T,C,H,W); default: all valid")
    sp.add_argument("--bad-pixels", default=None, help="detector bad-pixel map (.npy/.tif, non-zero = bad): (H,W) or (C,H,W); default: none")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing store")
    m = sp.add_argument_group("measurement domains (solved as whole frames; see docs/modalities.md)")
    m.add_argument("--domain", default="image", choices=["image", "sinogram", "kspace", "fourier_magnitude"],
                   help="image (default, tiled); sinogram (frames = angle x detector); kspace (complex, DC "
                        "centred, single coil); fourier_magnitude (phase retrieval). For measurements --intensity "
                        "LOW,HIGH is the range of the IMAGE (default: estimated from the classical reconstruction)")
    m.add_argument("--angles", default=None, help="sinogram: projection angles in degrees — START:STOP:STEP "
                   "(e.g. 0:180:3), a count N (evenly over [0,180)), a comma list, or a .npy/.txt file; required for a sinogram (default: none)")
    m.add_argument("--sampling-mask", default=None, help="kspace: sampling mask .npy, (H,) rows or (H,W) "
                   "(default: the rows that are not all zero)")
    m.add_argument("--image-size", type=int, default=None, help="sinogram: side N of the N x N image "
                   "(default: the detector count)")
    m.add_argument("--oversample", type=float, default=2.0, help="fourier_magnitude: padding rule (default 2.0)")
    sp.set_defaults(fn=cmd_ingest)

    sp = sub.add_parser("reconstruct", help="reconstruct an ingested stack (tiled, batched, resumable)",
                        description="Reconstruct INPUT (an ingested store) into OUTPUT (flow reconstruct_stack). "
                                    "Rerun the same command to resume an interrupted run.")
    sp.add_argument("input", help="the ingested input store (ddiff ingest)")
    sp.add_argument("output", help="the output store to write (e.g. recon.zarr); an existing one is resumed")
    _add_reconstruct_options(sp)
    sp.set_defaults(fn=cmd_reconstruct)

    sp = sub.add_parser("audit", help="hallucination audit of a finished reconstruction",
                        description="Audit OUTPUT (flow audit_reconstruction): per-frame/per-tile chi2 tests, "
                                    "flagged regions, a markdown+PNG report.")
    sp.add_argument("output", help="a finished reconstruction (ddiff reconstruct's output store)")
    sp.add_argument("--report-dir", default=None, help="where audit_report.md and its pictures go (default: "
                    "OUTPUT.audit next to the store, e.g. recon.zarr.audit)")
    sp.add_argument("--alpha", type=float, default=0.05, help="significance level of the χ² tests (false-flag rate "
                    "per test when the reconstruction explains the data)")
    sp.add_argument("--window", type=int, default=16, help="side in pixels of the regions tested for misfit")
    sp.add_argument("--max-width", type=float, default=None, help="calibrated bounds wider than this (image units) "
                    "are labelled unresolved (default: 10%% of the input's intensity range)")
    sp.set_defaults(fn=cmd_audit)

    sp = sub.add_parser("calibrate", help="calibrate per-pixel error bounds on references with ground truth",
                        description="Reconstruct REFERENCES (an ingested store of ground-truth frames; measurements "
                                    "simulated with the operator and --sigma, or real ones with --measurements) with "
                                    "the run's settings and K seeds, and write the calibration record RECORD (JSON) "
                                    "for `ddiff reconstruct --calibration RECORD` (RCPS; docs/audit.md §6).")
    from .calibrate import add_arguments

    add_arguments(sp)
    _add_reconstruct_options(sp, calibrate=True)
    sp.set_defaults(fn=cmd_calibrate, seeds=4)

    sp = sub.add_parser("train", help="train a compact prior on an ingested store of clean images",
                        description="Train (or resume) a diffusion prior on crops of DATA (flow train_prior).")
    sp.add_argument("data", help="an ingested store of clean images")
    sp.add_argument("out_dir", help="folder for checkpoints and the training log (rerun to resume)")
    sp.add_argument("--preset", default="compact", help="network size preset")
    sp.add_argument("--crop", type=int, default=64, help="training crop side in pixels")
    sp.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    sp.add_argument("--batch-size", type=int, default=16, help="crops per optimizer step")
    sp.add_argument("--lr", type=float, default=2e-4, help="learning rate")
    sp.add_argument("--seed", type=int, default=0, help="random seed of crops and noise")
    sp.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available, else cpu)")
    sp.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long "
                    "(default: no limit)")
    sp.add_argument("--export", default=None, help="write the EMA weights to this .safetensors at the end (default: not exported)")
    sp.add_argument("--init", default=None, help="start from these weights ('default' or a .safetensors/.pt path; default: random)")
    sp.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine", "linear"],
                    help="learning-rate schedule")
    sp.add_argument("--lr-min", type=float, default=0.0, help="lr at the last step of a cosine/linear schedule")
    sp.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps")
    sp.add_argument("--ema", type=float, default=0.999, help="EMA decay")
    sp.add_argument("--low-t-fraction", type=float, default=0.0, help="share of each batch with t < 250")
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser(
        "bench", help="the paper's benchmark: Table 1/2, noise and NFE studies (tables, CSV, plots)",
        description="Run the paper's protocol (flow benchmark) on a prior: every task x solver at one NFE budget "
                    "(Table 1, Table 2 ablation), a noise sweep and an NFE sweep; writes results.csv/.zarr, "
                    "markdown tables, plots and report.md into OUT. Rerunning the same command resumes. "
                    "Presets: paper (256², 1000 NFE, 100 images: a GPU job; needs --images), cpu (default prior, "
                    "64² held-out crops, < 30 min on 2 cores), smoke (seconds).")
    sp.add_argument("--preset", default="cpu", choices=["paper", "cpu", "smoke"], help="see the presets above")
    sp.add_argument("--out", default="bench", help="output folder (default: ./bench)")
    sp.add_argument("--prior", default="default", help="'default' or a .safetensors/.pt checkpoint")
    sp.add_argument("--dataset", default="ffhq", choices=["ffhq", "imagenet"], help="which paper DDiff settings")
    sp.add_argument("--images", default=None, help="evaluation images: folder of PNG/TIFF or .npy (default: bundled)")
    sp.add_argument("--tasks", default=None, help="comma-separated tasks (default: the preset's)")
    sp.add_argument("--solvers", default=None, help="comma-separated solvers (ddiff = the paper's values, "
                    "ddiff_auto = self-calibrated, ddiff_hqs, diffpnp_admm, diffpnp_hqs, dps, diffpir, daps, tv; default: the preset's)")
    sp.add_argument("--size", type=int, default=None, help="image side (default: the preset's)")
    sp.add_argument("--n-images", type=int, default=None, help="images per task (default: the preset's)")
    sp.add_argument("--nfe", type=int, default=None, help="NFE budget of every diffusion solver (default: the preset's)")
    sp.add_argument("--sigma", type=float, default=0.05, help="σ_y of Table 1/2 (model space, default 0.05)")
    sp.add_argument("--noise-sweep", default=None, help="comma-separated σ_y values (default 0.01,0.05,0.1,0.2,0.5)")
    sp.add_argument("--nfe-sweep", default=None, help="comma-separated NFE budgets (default: the preset's)")
    sp.add_argument("--sweep-task", default=None, help="task of the noise and NFE studies (default: the preset's)")
    sp.add_argument("--noise-sweep-solvers", default=None, help="comma-separated solvers of the noise study (default: the preset's)")
    sp.add_argument("--nfe-sweep-solvers", default=None, help="comma-separated solvers of the NFE study (default: the preset's)")
    sp.add_argument("--pr-runs", type=int, default=None, help="phase retrieval: best of R runs (paper: 5; default: the preset's)")
    sp.add_argument("--set", action="append", metavar="SOLVER.KEY=V", help="override a solver keyword, repeatable "
                    "(e.g. --set ddiff.gamma0=5 --set daps.mcmc_steps=50; default: none)")
    sp.add_argument("--nonlinear-blur-weights", default=None, help="bkse GOPRO_wVAE.pth (default: none, and nonlinear blur is skipped)")
    sp.add_argument("--seed", type=int, default=0, help="random seed of images, noise and solvers")
    sp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    sp.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="network precision")
    sp.add_argument("--overwrite", action="store_true", help="discard finished cells of another configuration in OUT")
    sp.set_defaults(fn=cmd_bench)
    return ap


def _one_line(exc: BaseException) -> str:
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        ValidationError = ()  # type: ignore[assignment]
    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(v) for v in e.get("loc", ()))
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return cli_spelling("invalid parameters: " + "; ".join(parts))
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()) or type(exc).__name__
    text = cli_spelling(text)
    # a cap for runaway messages only: a refused resume names three paths and must keep its fix at the end
    return text if len(text) <= 1500 else text[:1497] + "..."


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry attempts
    # before the parser is built: building it may import prefect (ddiff calibrate's options), after which
    # the console handler's level can no longer be set — and a failing flow would print its logs
    _quiet_prefect("--verbose" in (sys.argv[1:] if argv is None else argv))
    ap = build_parser()
    a = ap.parse_args(argv)
    if not getattr(a, "fn", None):
        ap.print_help()
        return 2
    try:
        _quiet_prefect(a.verbose)
        return int(a.fn(a) or 0)
    except KeyboardInterrupt:
        print("ddiff: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError) as exc:
        if a.debug:
            raise
        print(f"ddiff: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line, traceback with --debug
        if a.debug:
            raise
        print(f"ddiff: error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
