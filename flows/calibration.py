"""Calibration records of the per-pixel bounds: reading, checking against a run, attaching to its config.

Room: ``flows`` — json, ``storage`` (atomic writes), ``ddiff.audit`` (the record's math is there).

A record (JSON, written by ``ddiff calibrate``, :mod:`flows.calibrate`) holds the calibrated factor λ
and the scale rule ``s`` of the bounds ``[x̄ − λ s, x̄ + λ s]``, the guarantee's α and δ, and the
settings of the run it was calibrated for. ``ddiff reconstruct --calibration REC`` refuses, in one
line and before anything is written, a record whose settings differ from the run's (operator and
its parameters, solver and resolved hyperparameters — steps included —, dtype, prior SHA-256,
noise model and its level in model units within 2 %); the run then takes the record's K seeds and
writes ``uncertainty/lower`` and ``uncertainty/upper`` (:mod:`storage.uncertainty`).
``--calibration demo`` names the shipped record of ``ddiff demo``'s setting.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["FORMAT", "SHIPPED", "load_record", "record_path", "attach_calibration", "record_settings",
           "guarantee_sentence"]

FORMAT = "ddiff-bounds/1"
SHIPPED = {"demo": Path(__file__).resolve().parent.parent / "ddiff" / "priors" / "weights" / "bounds_demo.json"}
NOISE_RTOL = 0.02  # the noise level may differ this much (relative, model units) from the calibration's


def record_path(name: str) -> Path:
    """The record file a ``--calibration`` value names (a shipped name or a path)."""
    return SHIPPED.get(str(name), Path(str(name)))


def load_record(name: str) -> dict:
    """The record ``name`` names, checked for the fields a run needs (one-line ``ValueError`` otherwise)."""
    path = record_path(name)
    if not path.is_file():
        if str(name) in SHIPPED:
            raise FileNotFoundError(f"the shipped calibration record {path} is missing; reinstall the package or "
                                    "make one with `ddiff calibrate`")
        raise FileNotFoundError(f"--calibration {name}: no such file; make a record with `ddiff calibrate`")
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--calibration {name}: not a readable JSON calibration record ({exc})") from None
    missing = [k for k in ("format", "lambda", "rule", "alpha", "delta", "seeds", "settings", "prior_sha256")
               if not isinstance(rec, dict) or k not in rec]
    if missing or rec.get("format") != FORMAT:
        raise ValueError(f"--calibration {name}: not a {FORMAT} calibration record (missing {missing or 'format'}); "
                         "make one with `ddiff calibrate`")
    rec["_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return rec


def record_settings(config: dict, sigma_model: float | None) -> dict:
    """The settings a record is bound to, from a run's hashed config and its noise level in model units."""
    noise = dict(config["noise"])
    return {"operator": config["operator"], "solver": config["solver"], "hyperparameters": config["hyperparameters"],
            "dtype": config.get("dtype", "fp32"), "noise_kind": noise.get("kind", "gaussian"),
            "noise_sigma_model": sigma_model}


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def attach_calibration(calibration: str | None, seeds: int, config: dict, prior_sha256: str | None,
                       sigma_model: float | None) -> dict:
    """Check the record against the run (``config`` = its hashed config, ``seeds`` = ``--seeds``) and
    put ``seeds`` and ``bounds`` into ``config``; returns ``config``. Refuses in one line naming the
    first setting that differs. ``calibration=None``: ``config`` unchanged."""
    if not calibration:
        return config
    rec = load_record(calibration)
    where = f"calibration record {record_path(calibration)}"
    K = int(rec["seeds"])
    if seeds not in (1, K):
        raise ValueError(f"--seeds {seeds} with {where}: it was calibrated with {K} seeds; drop --seeds "
                         "(--calibration implies it) or calibrate for this K")
    if rec["prior_sha256"] != prior_sha256:
        raise ValueError(f"{where} was calibrated for another prior (sha256 {str(rec['prior_sha256'])[:12]}…, this "
                         f"run's {str(prior_sha256)[:12]}…); calibrate this prior with `ddiff calibrate`")
    want, have = rec["settings"], record_settings(config, sigma_model)
    for key in ("operator", "solver", "hyperparameters", "dtype", "noise_kind"):
        if not _same(want.get(key), have[key]):
            raise ValueError(f"{where} was calibrated with {key} {json.dumps(want.get(key), default=str)}; this run has "
                             f"{json.dumps(have[key], default=str)} — run with the record's settings or calibrate "
                             "these with `ddiff calibrate`")
    a, b = want.get("noise_sigma_model"), have["noise_sigma_model"]
    if a is not None and (b is None or abs(b - a) > NOISE_RTOL * abs(a)):
        raise ValueError(f"{where} was calibrated at noise σ {a:.4g} (model units); this run's is "
                         f"{'unknown' if b is None else f'{b:.4g}'} — the guarantee needs the calibration's noise "
                         f"level (within {NOISE_RTOL:.0%}): pass --sigma, or calibrate at this level")
    if K > 1:
        config["seeds"] = K
    config["bounds"] = {"lambda": float(rec["lambda"]), "rule": rec["rule"], "alpha": float(rec["alpha"]),
                        "delta": float(rec["delta"]), "bound": rec.get("bound", "wsr"), "record_sha256": rec["_sha256"]}
    return config


def guarantee_sentence(bounds: dict, frames: int | None = None) -> str:
    """The guarantee and its conditions in one sentence."""
    return (f"Guarantee: with probability ≥ {1 - bounds['delta']:.0%} over the draw of the calibration set"
            + (f" ({frames} frames)" if frames else "")
            + f", the expected fraction of pixels whose truth lies outside [lower, upper] is ≤ {bounds['alpha']:g} — "
            "marginal over pixels and frames (not per pixel, not per frame), and only for data exchangeable with "
            "the calibration references (same instrument, sample type, noise level and settings).")
