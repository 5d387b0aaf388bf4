"""Pre-flight checks: everything that can be known wrong before a byte is written, checked first.

Room: ``flows`` — ``storage``, ``operators``, ``ddiff`` (torch), the flows' parameter models; no
prefect import here, so the command line runs these checks *before* Prefect starts (seconds, not
the 10-20 s of a temporary API server) and the flows run the same checks before they create
anything. A start that fails here leaves nothing behind, so the corrected command just runs.

Messages use the Python keyword spellings (``noise.sigma``, ``operator.params k=v``,
``overwrite=True``); the command line rewrites them into its flags (:func:`flows.console.cli_spelling`).

* :func:`check_ingest` — the target (absent / replaceable, folder writable), the source (exists,
  readable headers, supported layout and dtype);
* :func:`check_reconstruct` — device present, noise model valid (σ > 0), operator keywords named
  and typed, input store readable, tile geometry, prior file loadable (format, keys, shapes) and
  compatible with the input's channels, solver keywords accepted, output path writable and not
  holding another configuration, unrelated data, or an output of a replaced input;
* :func:`check_audit` — a complete output whose input is still the one it was made from.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["check_ingest", "check_reconstruct", "check_audit", "Prepared"]


def check_ingest(p) -> None:
    """Raise the error ``ingest_stack(p)`` would raise before writing (``p``: :class:`IngestParams`)."""
    from storage.ingest import check_ingest as check

    check(p.source, p.store, axes=p.axes, overwrite=p.overwrite, measurement=p.domain != "image", mask=p.mask,
          bad_pixels=p.bad_pixels, saturation=p.saturation, max_size=p.max_size)
    if p.domain != "image":  # complex k-space, real sinograms, the angles: from the first frames, nothing written
        from .measure import measurement_record

        measurement_record(p)


def check_device(device: str) -> None:
    """The torch device must exist on this machine (``execution.device``)."""
    import torch

    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= n:
            raise ValueError(f"execution.device={device!r}: this machine has {n} CUDA device(s) visible to torch"
                             f"{'' if n else ' (no GPU, or a CPU-only torch)'}; use execution.device='cpu'"
                             + (f" or one of cuda:0..cuda:{n - 1}" if n else ""))
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("execution.device='mps': MPS is not available on this machine; use execution.device='cpu'")


def check_operator(name: str, params: dict) -> None:
    """Each ``operator.params`` keyword must be one the operator takes, with a value of its type."""
    import operators
    from operators.base import _REGISTRY
    from operators.volume import VOLUME_OPERATORS

    operators.available()  # loads plug-ins
    factory = _REGISTRY[name] if name in _REGISTRY else VOLUME_OPERATORS[name]
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    kw = {k: v for k, v in sig.parameters.items() if k not in ("self", "image_size")}
    if not any(v.kind is inspect.Parameter.VAR_KEYWORD for v in kw.values()):
        for k in params:
            if k not in kw:
                raise ValueError(f"operator {name!r} has no keyword {k!r} (operator.params {k}=...); "
                                 f"its keywords: {', '.join(kw) or 'none'}")
    for k, v in params.items():
        d = kw[k].default if k in kw else inspect.Parameter.empty
        number = isinstance(d, (int, float)) and not isinstance(d, bool)
        if number and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"operator.params {k}={v!r}: operator {name!r} needs a number there "
                             f"(default {d!r}), e.g. operator.params {k}={d!r}")


def _prior_error(prior: str, exc: Exception) -> ValueError:
    from ddiff.priors.loading import CheckpointMismatchError

    if isinstance(exc, CheckpointMismatchError):
        n = (len(exc.missing), len(exc.unexpected), len(exc.misshaped))
        eg = (exc.missing or exc.unexpected or [m[0] for m in exc.misshaped])[:2]
        return ValueError(f"prior={prior!r}: the checkpoint's tensors do not match its architecture ({n[0]} missing, "
                          f"{n[1]} unexpected, {n[2]} mis-shaped, e.g. {', '.join(map(str, eg))}); give a guided-diffusion "
                          "ADM U-Net checkpoint with its config (safetensors metadata 'ddiff_config' or a sidecar "
                          "<stem>.json), e.g. one written by `ddiff train --export`")
    text = " ".join(str(exc).split())
    for name in sorted({str(prior), str(Path(prior).resolve())}, key=len, reverse=True):  # said once, up front
        text = text.replace(f"{name}: ", "")
    return ValueError(f"prior={prior!r}: {text}")


def check_solver(config: dict, prior) -> Any:
    """The solver accepts ``config["hyperparameters"]``; returns it built (``solver.hyperparameters``)."""
    import ddiff

    from . import tiles as T
    from .params import SOLVER_NAMES

    cls = getattr(ddiff, SOLVER_NAMES[config["solver"]])
    known = []
    for c in cls.__mro__:  # a constructor taking **kwargs passes them on to its base class's
        sig = inspect.signature(c.__init__).parameters
        known += [k for k, v in sig.items() if k not in ("self", "prior", *known) and v.kind is not v.VAR_KEYWORD]
        if not any(v.kind is v.VAR_KEYWORD for v in sig.values()):
            break
    bad = [k for k in config["hyperparameters"] if k not in known]
    if bad:
        raise ValueError(f"solver {config['solver']!r} has no setting {bad[0]!r} (solver.hyperparameters "
                         f"{bad[0]}=...); its settings: {', '.join(known)}")
    return T.make_solver(config, prior)


def checked_prior(p, config: dict, channels: int, what: str):
    """The run's prior, loaded (cached per process) and checked: the checkpoint loads, it models
    ``channels``-channel images, and the solver accepts ``config``'s settings. ``what`` ends the
    channel message's subject (e.g. ``"the input in.zarr has"``)."""
    from . import tiles as T

    try:
        prior = T.load_prior_cached(config["prior_path"], p.execution.device, p.execution.dtype)
    except (ValueError, RuntimeError, OSError) as exc:
        raise _prior_error(p.prior, exc) from None
    if int(prior.channels) != int(channels):
        raise ValueError(f"prior={p.prior!r} models {prior.channels}-channel images but {what} {channels} channel(s)")
    check_solver(config, prior)
    return prior


@dataclass
class Prepared:
    """What :func:`check_reconstruct` established (the flow reuses it): the run configuration, its
    tile geometry, the prior's checksum and the loaded prior, and what ``create_output`` will do."""

    config: dict
    geo: Any
    prior_sha256: str | None
    prior: Any
    action: str


def check_reconstruct(p) -> Prepared:
    """Raise (one line, naming the parameter and the fix) what would make ``reconstruct_stack(p)``
    fail before its first tile, without writing anything; ``p``: :class:`ReconstructParams`."""
    import storage

    from . import tiles as T
    from .reconstruct import run_config

    check_device(p.execution.device)
    if storage.measurement_of(p.input_store) is not None:  # sinograms, k-space, ...: whole frames
        from .frames import check_frames

        return check_frames(p)
    from .bricks import check_volume, is_volume_run

    if is_volume_run(p):  # z-stacks solved as bricks (flows.volumes)
        if getattr(p, "calibration", None):
            raise ValueError("--calibration with a volume run: calibrated bounds of z-stacks are not built yet; "
                             "reconstruct the planes with a 2-D operator for bounds")
        return check_volume(p)
    check_operator(p.operator.name, p.operator.params)
    stack = storage.open_stack(p.input_store)
    try:  # run_config also resolves the noise model (estimating what is left out) and checks it against the data
        config, geo, C, prior_sha = run_config(p)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"prior={p.prior!r}: {' '.join(str(exc).split())}") from None
    except TypeError as exc:  # an operator keyword of the wrong kind that the signature did not reveal
        raise ValueError(f"operator {p.operator.name!r} with operator.params {p.operator.params}: {exc}") from None
    try:
        prior = T.load_prior_cached(config["prior_path"], p.execution.device, p.execution.dtype)
    except (ValueError, RuntimeError, OSError) as exc:
        raise _prior_error(p.prior, exc) from None
    op = T.build_operator(p.operator.name, p.operator.params, tuple(v * geo.scale for v in stack.frame_shape))
    # the image the solver reconstructs has the input's channels unless the operator says otherwise
    xc = int(op.x_shape((1, C, *stack.frame_shape))[1]) if hasattr(op, "x_shape") else C
    if int(prior.channels) != xc:
        raise ValueError(f"prior={p.prior!r} models {prior.channels}-channel images but the input {p.input_store} "
                         f"has {C} channel(s); use a {C}-channel prior, or ingest the stack with "
                         f"{prior.channels} channel(s)")
    check_solver(config, prior)
    action, _ = storage.output_action(p.output_store, stack, geo.plan, config, prior_sha256=prior_sha,
                                      scale=geo.scale, overwrite=p.overwrite, replace_unused=True)
    return Prepared(config, geo, prior_sha, prior, action)


def check_audit(output_store: str) -> None:
    """A finished output whose input store is still the one it was made from."""
    import storage

    from storage.provenance import check_manifest

    out = storage.open_output(output_store)
    if not out.complete:
        raise storage.StorageError(f"{out.path} is not complete; finish `ddiff reconstruct` (rerun it to resume) first")
    check_manifest(out)  # the audit tests against the manifest's operator and noise: they must be what ran
    storage.open_input(out)
