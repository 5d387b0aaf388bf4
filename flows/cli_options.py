"""The options that ``ddiff reconstruct`` and ``ddiff demo`` share, and the flow parameters built
from them (:class:`flows.params.ReconstructParams`).

Room: ``flows`` — argparse only; used by :mod:`flows.cli` (and the demo through it).
"""
from __future__ import annotations

import argparse

from .console import _kv, _solver_options

__all__ = ["_add_reconstruct_options", "_reconstruct_params", "_noise_options", "HelpFormatter"]


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless the text already states it; an option whose
    default is ``None`` must say in words what happens when it is left out — tests/test_cli_help.py)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or text == argparse.SUPPRESS or "default" in text.lower()
                or action.default is argparse.SUPPRESS or action.default is None):
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        return text + " (default: %(default)s)"


def _reconstruct_params(a) -> "flows.ReconstructParams":  # noqa: F821
    from .params import ReconstructParams

    execution = {"device": a.device, "dtype": a.dtype, "batch_size": a.batch_size, "max_workers": a.workers,
                 "torch_threads": a.threads, "dask_address": a.dask_address, "dask_workers": a.dask_workers,
                 "gpu_limit": a.gpu_limit}
    solver = _solver_options(a)
    if getattr(a, "operator", None) is not None:
        _explicit_operator(a.input, a.operator)
    return ReconstructParams(
        input_store=a.input, output_store=a.output,
        operator={"name": getattr(a, "operator", None) or "gaussian_blur", "params": _kv(a.op_param, "--op-param")},
        noise=_noise_options(a), prior=a.prior, solver=solver,
        tile=a.tile, overlap=a.overlap, seed=a.seed, execution=execution, overwrite=a.overwrite,
        calibration=getattr(a, "calibration", None),
        **{k: getattr(a, k) for k in ("brick_z", "overlap_z") if getattr(a, k, None) is not None})


def _explicit_operator(input_store: str, name: str) -> None:
    """A measurement store brings its own forward model: an explicit ``--operator`` naming another is
    refused (the default, left out, is not a choice)."""
    import storage

    try:
        meas = storage.measurement_of(input_store)
    except Exception:  # noqa: BLE001 - a missing input is reported by the pre-flight checks
        return
    if meas is not None and name != meas["operator"]["name"]:
        raise ValueError(f"{input_store} holds {meas['domain']} measurements of `{meas['operator']['name']}` (geometry "
                         f"recorded at ingest); drop --operator {name}: the store's operator is used")


def _noise_options(a) -> dict:
    """``--noise`` and the parameters given (the ones left out are estimated from the data)."""
    kind = a.noise
    if kind == "auto" and a.sigma is not None:
        kind = "gaussian"  # --sigma alone: Gaussian noise of that σ
    given = {"sigma": a.sigma, "gain": a.gain, "offset": a.offset, "read_noise": a.read_noise}
    return {"kind": kind, **{k: v for k, v in given.items() if v is not None}}


def _add_reconstruct_options(sp, demo: bool = False, calibrate: bool = False) -> None:
    g = sp.add_argument_group("model")
    if not demo:
        g.add_argument("--operator", default=None, help="forward model name (default: gaussian_blur; a measurement "
                       "store — sinogram, k-space — uses its own, recorded at ingest)")
        g.add_argument("--op-param", action="append", metavar="K=V", help="operator keyword, repeatable (e.g. std=3.0); default: the operator's own")
        g.add_argument("--noise", default="auto", choices=["auto", "gaussian", "poisson", "poisson_gaussian"],
                       help="noise model, parameters in the DATA's units (ADU = the stored pixel values): auto "
                            "(default: estimated from the stack — a camera if its variance grows with the signal, else "
                            "Gaussian), gaussian (--sigma), poisson (--gain, --offset), poisson_gaussian = a camera "
                            "(--gain, --offset, --read-noise). Parameters left out are estimated from the data")
        g.add_argument("--sigma", type=float, default=None,
                       help="Gaussian noise σ in the data's units (ADU for camera images; the stored units of a "
                            "sinogram or k-space, per real/imag part), not model space; default: estimated from the "
                            "stack (images, sinograms, k-space)")
        g.add_argument("--gain", type=float, default=None, help="camera conversion gain, e⁻ per ADU (default: estimated)")
        g.add_argument("--offset", type=float, default=None, help="camera black level (bias), ADU (default: estimated)")
        g.add_argument("--read-noise", type=float, default=None, help="camera read noise, e⁻ RMS (default: estimated)")
    g.add_argument("--prior", default="default", help="embedded prior 'default' (= 'default-v2'; also 'default-v1', 'default-v3'; "
                   "ddiff/priors/weights/MODEL_CARD.md) or a .safetensors/.pt checkpoint")
    g.add_argument("--solver", default="ddiff", choices=["ddiff", "ddiff_hqs", "diffpnp_admm", "diffpnp_hqs", "dps",
                                                          "diffpir", "daps", "volume_ddiff", "volume_diffpnp_admm"],
                   help="ddiff (default); its ablations ddiff_hqs (no dual variable), diffpnp_admm / diffpnp_hqs "
                        "(no noising step) — each with the settings --hp chooses (auto, or the paper's a/b step-down "
                        "with --hp paper; the benchmark's reference constant step is only an override of "
                        "`ddiff bench --set`); "
                        "baselines dps, diffpir, daps at their reference settings; volume_ddiff: a z-stack solved "
                        "as bricks with a through-plane coupling (the solver of the widefield3d operator)")
    g.add_argument("--steps", type=int, default=None,
                   help="diffusion steps = network calls per tile (default: 100; with --hp paper the paper's 1000)")
    g.add_argument("--hp", action="append", metavar="K=V",
                   help="solver settings: 'auto' (default: DDiff chooses its data step from the measurements, "
                        "χ²_ν = 1), 'paper' (the paper's per-task values), or a key=value override; repeatable")
    g.add_argument("--seed", type=int, default=0, help="random seed of the solver's noise (tile k of frame f uses "
                   "a stream derived from seed, f and k: reruns and resumed runs give the same output)")
    g.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="solve each tile (or whole frame) K times (K >= 2): the estimate is their mean, and the "
                        "seed spread and prior-filled maps are kept (recon.zarr/uncertainty, labels/prior_filled "
                        "after the audit)")
    if not demo and not calibrate:
        g.add_argument("--calibration", default=None, metavar="REC",
                       help="calibration record from `ddiff calibrate` ('demo': the shipped one for the demo's "
                            "setting): also write per-pixel bounds uncertainty/lower and uncertainty/upper with the "
                            "record's guarantee; implies the record's --seeds; refused if the record's settings differ (default: no bounds)")
    t = sp.add_argument_group("tiling and execution")
    t.add_argument("--tile", type=int, default=256 if not demo else 128,
                   help="tile core size (pixels)" + ("; demo default = the whole 128px frame, try 64 to see "
                                                      "tiling (about 1.6x the work)" if demo else ""))
    t.add_argument("--overlap", type=int, default=16 if not demo else 8, help="blend overlap per side (pixels)")
    t.add_argument("--batch-size", type=int, default=4, help="tiles per network call")
    if not demo:
        t.add_argument("--brick-z", type=int, default=None, help="volumes: planes per brick core (default 16)")
        t.add_argument("--overlap-z", type=int, default=None, help="volumes: planes beyond its core a brick also "
                       "fits (default: twice the operator's axial halo)")
    t.add_argument("--workers", type=int, default=1, help="concurrent batch tasks (thread pool size)")
    t.add_argument("--threads", type=int, default=None, help="torch threads per task (default: torch's choice)")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    t.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="network precision")
    t.add_argument("--dask-address", default=None, help="run tasks on this Dask scheduler (tcp://host:port; default: none, local threads)")
    t.add_argument("--dask-workers", type=int, default=0, help="start a local Dask cluster with N workers")
    t.add_argument("--gpu-limit", default="gpu", help="Prefect global concurrency limit guarding CUDA (default: gpu)")
    if not demo:
        t.add_argument("--overwrite", action="store_true", help="replace an output written with another config")
