"""Provenance of an output: what it records of its input and configuration, and the decisions made
from that record — may a consumer read the input (:func:`open_input`), and what does a new run at
an output path do (:func:`output_action`: create, resume, replace, or refuse and say why).
A resume is decided by the command, never by the store: every manifest field the run reads must
equal what the command computes (:func:`manifest_diff`; an edited ``config.prior_path`` is refused,
naming it), and a finished output's fields must still hash to its ``config_hash`` (:func:`check_manifest`).

Room: ``storage`` — standard library + the storage modules; never torch/prefect/``ddiff``/``flows``.

The input identity is what ingest writes into the input store's root ``zarr.json``: the SHA-256
of the pixel bytes, shape, dtype and intensity map. Reading it costs one small JSON file (it is
read anyway to open the store), whatever the stack's size; re-hashing the pixels
(:func:`storage.verify_stack`) costs a full read of the stack and is left to explicit checks.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Mapping

from .ingest import Stack, _store_kind, open_stack
from .ome import package_version
from .safety import (ConfigMismatchError, InputChangedError, RunLock, StorageError, StoreExistsError, _pid_alive,
                     canonical_hash, creatable, strict_json)
from .tiling import TilePlan

__all__ = ["input_record", "open_input", "output_action", "manifest_diff", "damaged_output",
           "check_manifest"]


def input_record(stack: Stack) -> dict:
    """What an output records of its input: the identity consumers check (:func:`open_input`)."""
    return {"path": str(stack.path.resolve()), "data_sha256": stack.meta["data_sha256"], "shape": list(stack.shape),
            "dtype": stack.meta["dtype"], "intensity": stack.intensity.to_dict(), "axes": stack.axes,
            "sizes": dict(zip(stack.layout.axes, stack.layout.shape))}


_IDENTITY = ("data_sha256", "shape", "dtype", "intensity")


def _input_changes(recorded: dict, now: dict) -> list[str]:
    return [k for k in _IDENTITY if recorded.get(k) != now.get(k)]


def _changed_message(path, out_path, changes: list[str], recorded: dict, now: dict) -> str:
    what = ", ".join(f"{k} {str(recorded.get(k))[:12]}… -> {str(now.get(k))[:12]}…" if k == "data_sha256"
                     else f"{k} {recorded.get(k)} -> {now.get(k)}" for k in changes)
    return (f"the input {path} changed since {out_path} was made from it ({what}; re-ingested?); restore that "
            "input, or rebuild the output from the new one (reconstruct with overwrite=True, or into a new output path)")


def open_input(out, path=None) -> Stack:
    """The input store an output was made from, opened read-only — after checking it is still that
    input: the data SHA-256, shape, dtype and intensity map recorded at ingest (its root
    ``zarr.json``, read anyway to open it: no extra cost) must equal the output manifest's.
    Raises :class:`InputChangedError` in one line otherwise. ``path``: where the input is now
    (default: where it was). (A store re-ingested from other data,
    or with another intensity map, is caught; bytes edited in place by other tools are not — for
    those :func:`storage.verify_stack` re-hashes the pixels.)"""
    from .output import open_output

    out = out if hasattr(out, "manifest") else open_output(out)
    rec = out.manifest["input"]
    where = rec["path"] if path is None else str(path)
    try:
        stack = open_stack(where)
    except StorageError as exc:
        raise InputChangedError(f"the input {where} of {out.path} cannot be opened any more ({exc})") from None
    changes = _input_changes(rec, input_record(stack))
    if changes:
        raise InputChangedError(_changed_message(where, out.path, changes, rec, input_record(stack)))
    return stack


def _config_hash(config, prior_sha256, input_sha256, plan: dict, scale: int, image_shape=None) -> str:
    """The manifest's ``config_hash``: configuration, prior and input checksums, plan, scale (and the
    image grid of a whole-frame output)."""
    identity = {"config": config, "prior_sha256": prior_sha256, "input_sha256": input_sha256, "plan": plan,
                "scale": scale}
    if image_shape is not None:
        identity.update(image_shape=list(image_shape), layout="frames")
    return canonical_hash(identity)


def check_manifest(out) -> None:
    """Raise :class:`ConfigMismatchError` when an output's manifest no longer hashes to its own
    ``config_hash`` (a field edited after the run — e.g. the noise level the audit tests against)."""
    m = out.manifest
    try:
        ok = m["config_hash"] == _config_hash(m["config"], m.get("prior_sha256"), m["input"]["data_sha256"], m["plan"],
                                              m["scale"], m.get("image_shape"))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigMismatchError(f"{out.path}: its manifest was edited or damaged after the run (its fields no longer "
                                  "hash to its config_hash), so it no longer says what ran; rebuild the output "
                                  "(reconstruct with overwrite=True) or restore its zarr.json")


def _unused(old) -> bool:
    """An output no tile was ever solved into and no live run holds: a failed or killed start."""
    holder = RunLock.holder(old.path)
    if holder is not None and not (holder.get("pid", -1) > 0 and not _pid_alive(int(holder["pid"]))):
        return False
    return old.ledger.count("solved") == 0


def output_action(path, input_store, plan: TilePlan, config: Mapping, *, prior_sha256: str | None = None,
                  scale: int = 1, overwrite: bool = False, replace_unused: bool = False,
                  frames: Mapping | None = None) -> tuple[str, dict]:
    """What :func:`create_output` would do at ``path`` — ``("create" | "resume" | "replace", manifest)`` —
    or the error it would raise, without writing anything (pre-flight checks call this). ``frames``:
    ``{"image_shape", "measurement", "residual_units"}`` of a whole-frame output (:mod:`storage.frames`)."""
    from .output import OUTPUT_KIND, _recon_meta, open_output

    path = Path(path)
    stack = input_store if isinstance(input_store, Stack) else open_stack(input_store)
    if stack.frame_shape != plan.frame_shape:
        raise StorageError(f"plan frame shape {plan.frame_shape} != input frames {stack.frame_shape}; "
                           "build the TilePlan from open_stack(...).frame_shape")
    scale = int(scale)
    inp = input_record(stack)
    config = dict(config)
    image_shape = None
    if frames is not None:  # the reconstruction has a grid of its own (part of the identity)
        image_shape = tuple(int(v) for v in frames["image_shape"])
    strict_json(config, "config")  # e.g. --hp tau=NaN: refused before a byte is written
    config_hash = _config_hash(config, prior_sha256, inp["data_sha256"], plan.to_dict(), scale, image_shape)
    manifest = {"kind": OUTPUT_KIND, "version": package_version(), "config_hash": config_hash, "config": config,
                "prior_sha256": prior_sha256, "input": inp, "plan": plan.to_dict(), "scale": scale,
                "recon": _recon_meta(stack, plan, scale, image_shape),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if frames is not None:
        manifest.update(layout="frames", image_shape=list(image_shape), measurement=dict(frames["measurement"]),
                        residual_units=str(frames["residual_units"]))
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        if not creatable(path):
            raise StorageError(f"cannot create {path}: its folder {path.parent} is not writable (or cannot be "
                               "created); choose an output path in a writable folder")
        return "create", manifest
    kind = _store_kind(path) if path.is_dir() else None
    if kind != OUTPUT_KIND:
        damaged_output(path)  # an output whose manifest was truncated or emptied: said so, not "unrelated"
        raise StoreExistsError(f"{path} already holds unrelated data; nothing was written. Choose a new output "
                               "path (overwrite=True never deletes data this package did not write)")
    old = open_output(path)
    if old.manifest["config_hash"] == config_hash:
        # the command decides what runs, never the store: every field the run reads from the manifest
        # must equal what this command computes (an edited prior_path, seed, plan, ... is refused)
        edits = manifest_diff(old.manifest, manifest)
        if edits:
            raise ConfigMismatchError(
                f"cannot resume {path}: its manifest does not match this command ({edits[0]}); the manifest was "
                "edited or damaged, so the tiles in it cannot be trusted to continue this run — pass overwrite=True "
                "to rebuild it, or choose another output path")
        if not os.access(path, os.W_OK):
            raise StorageError(f"cannot resume {path}: the folder is not writable; fix its permissions")
        return "resume", manifest
    if overwrite or (replace_unused and _unused(old)):
        return "replace", manifest
    changes = _input_changes(old.manifest["input"], inp)
    if changes and canonical_hash(old.manifest["config"]) == canonical_hash(config):
        raise InputChangedError(_changed_message(inp["path"], path, changes, old.manifest["input"], inp))
    oc = json.loads(json.dumps(old.manifest["config"], default=str))
    nc = json.loads(json.dumps(config, default=str))
    diff = [f"{k} {oc.get(k)!r} -> {nc.get(k)!r}" for k in sorted(set(oc) | set(nc)) if oc.get(k) != nc.get(k)]
    if not diff:  # the prior's bytes, the plan, ...: name the field, not just the hash
        diff = [d.replace("the store has ", "").replace(", this command ", " -> ")
                for d in manifest_diff(old.manifest, manifest) if not d.startswith("config_hash")]
    raise ConfigMismatchError(
        f"{path} was written with a different configuration (config_hash {old.manifest['config_hash'][:12]} "
        f"!= {config_hash[:12]}{'; ' + ', '.join(diff)[:300] if diff else ''}); pass overwrite=True to replace it "
        "or choose another output path")


#: the manifest fields a run reads to decide what it computes (``created``/``version`` are history)
_WHAT_RUNS = ("config_hash", "config", "prior_sha256", "input", "plan", "scale", "recon", "layout", "image_shape",
              "measurement", "residual_units")


def _leaves(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 300 else r[:297] + "…"


def manifest_diff(stored: Mapping, computed: Mapping) -> list[str]:
    """The fields of a stored output manifest that differ from the one a command computes, each as
    ``"config.prior_path: the store has '…', this command '…'"`` (empty when they agree)."""
    a = _leaves({k: stored.get(k) for k in _WHAT_RUNS})
    b = _leaves(json.loads(json.dumps({k: computed.get(k) for k in _WHAT_RUNS}, default=str)))
    return [f"{k}: the store has {_short(a.get(k))}, this command {_short(b.get(k))}"
            for k in sorted(set(a) | set(b), key=lambda k: (k.split(".")[0] != "config", k)) if a.get(k) != b.get(k)]


def damaged_output(path) -> None:
    """Raise :class:`StorageError` when ``path`` is an output store (it has the ``_ledger/`` folder every
    output has) whose root ``zarr.json`` no longer holds a readable ddiff manifest."""
    path = Path(path)
    if not (path / "_ledger").is_dir():
        return
    meta = path / "zarr.json"
    try:
        json.loads(meta.read_text(encoding="utf-8"))["attributes"]["ddiff"]["kind"]
        return
    except FileNotFoundError:
        why = "it is missing"
    except (ValueError, UnicodeDecodeError) as exc:
        why = f"it is truncated or not JSON: {str(exc).split(':')[0]}"
    except (KeyError, TypeError):
        why = "it holds no ddiff manifest"
    raise StorageError(f"{path} is a ddiff output store whose manifest {meta} is damaged ({why}); nothing was "
                       "written. Restore that file (e.g. from a backup), or delete the store to start over")


