"""Volumes (z-stacks) solved as bricks: the run configuration, its pre-flight checks, and what one
brick-batch task does. No prefect here (the CLI runs the checks before Prefect starts; the Prefect
stage is :mod:`flows.volumes`), so this is plain, testable Python.

Room: ``flows`` — torch, ``operators``, ``ddiff``, ``storage``.

**When.** A run is a volume run when its operator couples planes (a volume operator,
``operators.volume_operators()``: ``widefield3d``, with ``halo_z > 0``) or when the user asks for a
volume solver (``volume_ddiff``, ``volume_diffpnp_admm``; a 2-D operator then acts on every plane,
:class:`operators.SliceWise`). ``ddiff`` / ``diffpnp_admm`` with a volume operator become their
volume solvers (:class:`ddiff.VolumeDDiff`: the 2-D prior on every plane in one batched call, the
3-D data step, a quadratic through-plane coupling whose weight is chosen from the data). Every other
2-D run keeps the tiled 2-D path (slice by slice, the baseline).

**Physical units.** ``widefield3d`` takes NA, emission wavelength, immersion index, lateral pixel
size and plane spacing in µm; ``pixel_size`` and ``z_step`` default to the input store's physical
pixel sizes (OME scale, converted to µm), and a store without recorded sizes is refused.

**Bricks** (:mod:`storage.bricks`): tile ``k`` of the y/x plan (read window = blend + halo) × z
chunk ``j`` (``brick_z`` core planes + ``halo_z`` planes of context each side, mirrored at the stack
ends) of volume ``t``. The brick's unknowns are its whole read window; its data term holds the
measurements of the core planes' blend windows only — one in the halo ring depends on the scene
outside the brick (and a mirrored plane is no measurement), and fitting those anyway costs the core
6 dB on an 8 × 32 × 32 widefield stack (25.2 dB with them left out = the whole volume solved at once,
17.6 dB with them in). A batch task reads ``batch_size`` bricks of one shape, solves them in one
solver call, and writes every core plane through ``storage.write_tile_result`` (staging slot, per
(plane, tile) χ²_ν on the blend window, residual, ledger entry) — so assembly, pyramid, finalize,
progress and summary are the 2-D path's. Every brick has its own generator seeded from
``(seed, t, j, k)``, so its result does not depend on its batch, on resume or on the worker.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading

import numpy as np
import torch

import operators
import storage
from storage.bricks import ZPlan, all_bricks, read_brick

from . import tiles as T
from .noise import noise_model, resolve_noise

__all__ = ["VOLUME_SOLVERS", "is_volume_run", "volume_config", "check_volume", "volume_operator", "brick_seed",
           "brick_batches", "solve_brick_batch", "is_volume_output"]

#: the solver a volume run uses, by the solver asked for
VOLUME_SOLVERS = {"ddiff": "volume_ddiff", "volume_ddiff": "volume_ddiff", "diffpnp_admm": "volume_diffpnp_admm",
                  "volume_diffpnp_admm": "volume_diffpnp_admm"}
#: micrometres per unit of an OME-NGFF space unit
_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6, "angstrom": 1e-4}


def is_volume_run(p) -> bool:
    """A volume operator, or a volume solver asked for (``p``: :class:`ReconstructParams`)."""
    return p.operator.name in operators.volume_operators() or p.solver.name.startswith("volume_")


def is_volume_output(out: storage.OutputStore) -> bool:
    return "volume" in out.manifest.get("config", {})


def _micrometres(stack: storage.Stack, axis: str) -> float | None:
    unit = stack.units.get(axis, "")
    return None if unit not in _UM else float(stack.scale[axis]) * _UM[unit]


def voxel_params(name: str, params: dict, stack: storage.Stack) -> dict:
    """``params`` with ``pixel_size``/``z_step`` (µm) taken from the store where the user left them out."""
    params = dict(params)
    if name != "widefield3d":
        return params
    geo = stack.meta.get("geometry", {})
    for key, axis in (("pixel_size", "x"), ("z_step", "z")):
        if key in params:
            continue
        um = _micrometres(stack, axis)
        if geo.get("source") == "default" or um is None:
            raise ValueError(f"operator.params {key}: the input {stack.path} records no physical {axis} step "
                             f"({geo.get('source', 'default')}: {stack.scale.get(axis)} {stack.units.get(axis)}); "
                             f"give operator.params {key}=<µm>, or ingest with pixel sizes (--pixel-size, --z-step)")
        if key == "pixel_size" and abs(_micrometres(stack, "y") - um) > 1e-6 * um:
            raise ValueError(f"operator.params pixel_size: the input's y and x steps differ ({stack.scale}); "
                             "widefield3d takes square pixels — give operator.params pixel_size=<µm>")
        params[key] = round(um, 9)
    return params


def volume_operator(name: str, params: dict, frame_shape) -> torch.nn.Module:
    """The run's operator on volumes ``(B, C, Z, H, W)``: a volume operator, or a 2-D one on every plane."""
    key = ("volume-op", name, json.dumps(params, sort_keys=True, default=str), tuple(frame_shape))
    with _LOCK:
        if key not in _OPS:
            if name in operators.volume_operators():
                _OPS[key] = operators.get_volume_operator(name, **params)
            else:
                _OPS[key] = operators.SliceWise(T.build_operator(name, params, tuple(frame_shape)))
        return _OPS[key]


_OPS: dict = {}
_LOCK = threading.Lock()


def volume_config(p) -> tuple[dict, "T.Geometry", str]:
    """``(config, geometry, prior_sha256)`` of a volume run: the 2-D run's configuration
    (:func:`flows.reconstruct.solver_config`) with the volume solver, the operator's voxel sizes
    filled in, and ``config["volume"]`` = the z plan (hashed with the rest)."""
    from .reconstruct import _check_noise, solver_config

    stack = storage.open_stack(p.input_store)
    Z, (H, W) = stack.sizes["z"], stack.frame_shape
    if Z < 2:
        raise ValueError(f"{p.input_store} has no z axis (axes {stack.axes}); a volume run needs a z-stack — ingest "
                         "it with --axes ...Z... (e.g. ZYX), or use a 2-D operator and solver")
    solver = VOLUME_SOLVERS.get(p.solver.name)
    if solver is None:
        raise ValueError(f"solver {p.solver.name!r} does not solve volumes; with operator {p.operator.name!r} use "
                         f"solver ddiff (default) or diffpnp_admm (their volume forms: {', '.join(sorted(set(VOLUME_SOLVERS.values())))})")
    params = voxel_params(p.operator.name, p.operator.params, stack)
    op = volume_operator(p.operator.name, params, (H, W))
    halo, halo_z = getattr(op, "halo", None), int(getattr(op, "halo_z", 0))
    if halo is None:
        raise ValueError(f"operator {p.operator.name!r} is global in-plane (no halo): volumes are solved as bricks of "
                         "tiles, which needs a local operator")
    if 2 * p.overlap > min(p.tile, H, W):
        raise ValueError(f"overlap={p.overlap} is too large for tile={p.tile}: need 2*overlap <= tile")
    plan = storage.TilePlan((H, W), tile=p.tile, halo=int(halo), overlap=p.overlap)
    prior_path, prior_sha = T.prior_identity(p.prior)
    noise, estimate = resolve_noise(p.noise, stack)
    _check_noise(noise, stack)
    pv = p.model_copy(update={"solver": p.solver.model_copy(update={"name": solver})})
    config = solver_config(pv, p.operator.name, params, prior_path, noise.model_dump(exclude_none=True))
    if estimate is not None:
        config["noise_estimate"] = estimate
    # default overlap 2·halo_z: the planes within halo_z of a core boundary are then pinned by measurements the
    # brick fits on both sides, so neighbours agree where the cut is (measured: halo_z 2, 4-plane bricks, χ²_ν
    # of the re-measured boundary planes 1.2-1.3 with overlap 2, 0.94 with 4 = whole-volume solve)
    zplan = ZPlan(Z, p.brick_z, halo_z, p.overlap_z if p.overlap_z is not None else max(2 * halo_z, 1))
    config["volume"] = {"zplan": zplan.to_dict(), "solver_asked": p.solver.name}
    return config, T.Geometry(scale=1, halo=int(halo), plan=plan), prior_sha


def check_volume(p):
    """:func:`flows.checks.check_reconstruct` for a volume run: everything that can fail before the
    first brick, checked without writing; returns :class:`flows.checks.Prepared`."""
    from .checks import Prepared, check_operator, checked_prior

    check_operator(p.operator.name, p.operator.params)
    try:
        config, geo, prior_sha = volume_config(p)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"prior={p.prior!r}: {' '.join(str(exc).split())}") from None
    except TypeError as exc:
        raise ValueError(f"operator {p.operator.name!r} with operator.params {p.operator.params}: {exc}") from None
    stack = storage.open_stack(p.input_store)
    prior = checked_prior(p, config, stack.shape[1], f"the input {p.input_store} has")
    action, _ = storage.output_action(p.output_store, stack, geo.plan, config, prior_sha256=prior_sha, scale=1,
                                      overwrite=p.overwrite, replace_unused=True)
    return Prepared(config, geo, prior_sha, prior, action)


def brick_seed(seed: int, t: int, j: int, k: int) -> int:
    """A 63-bit seed for brick ``(t, j, k)`` of a run with base ``seed`` (stable across runs)."""
    h = hashlib.sha256(f"ddiff-brick:{int(seed)}:{int(t)}:{int(j)}:{int(k)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def brick_batches(out: storage.OutputStore, batch_size: int, down: int) -> list[list[list[int]]]:
    """All bricks ``[t, j, k]`` grouped by padded read shape, in a fixed order, cut into batches of
    ``batch_size`` (fixed by the plans alone: a resumed run forms the very same batches)."""
    zplan, plan = ZPlan(**out.manifest["config"]["volume"]["zplan"]), out.plan
    groups: dict[tuple, list[list[int]]] = {}
    for t, j, k in all_bricks(out.layout, zplan, plan):
        rh, rw = plan[k].read_shape
        shape = (len(zplan.read(j)), rh + T._div_pad(rh, 1, down), rw + T._div_pad(rw, 1, down))
        groups.setdefault(shape, []).append([t, j, k])
    batches = []
    for shape in sorted(groups):
        items = groups[shape]
        batches += [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    return batches


def _pad_yx(a: np.ndarray, extra: tuple[int, int]) -> np.ndarray:
    if extra == (0, 0):
        return a
    return np.pad(a, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])), mode="reflect")


def solve_brick_batch(desc: dict) -> dict:
    """Solve one batch of bricks and write their pending core planes. Descriptor: ``input``, ``output``,
    ``run_id``, ``bricks`` ``[[t, j, k], ...]``, ``done`` ``[[frame, tile], ...]``, ``config``,
    ``device``/``dtype``/``torch_threads``/``gpu_limit``, ``fail_after`` (testing hook). Returns
    ``{"tiles" (plane-tiles in the batch), "written", "seconds", "nfe", "chi2_nu", "pid", "threads"}``."""
    cfg = desc["config"]
    out = storage.open_output(desc["output"])
    stack = storage.open_input(out, desc["input"])
    plan, zplan = out.plan, ZPlan(**cfg["volume"]["zplan"])
    threads = cfg.get("torch_threads") or desc.get("torch_threads")
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))
    device, dtype = desc.get("device", "cpu"), desc.get("dtype", "fp32")
    prior = T.load_prior_cached(cfg["prior_path"], device, dtype)
    down = int(getattr(prior, "downsampling", 1) or 1)
    op = volume_operator(cfg["operator"]["name"], cfg["operator"]["params"], plan.frame_shape)
    noise = noise_model(cfg["noise"], stack)
    bricks = [tuple(int(v) for v in b) for b in desc["bricks"]]
    ys, vs, ops, reads, extras = [], [], [], [], []
    for t, j, k in bricks:
        b = read_brick(stack, t, j, k, plan, zplan)
        rh, rw = b.tile.read_shape
        extra = (T._div_pad(rh, 1, down), T._div_pad(rw, 1, down))
        ys.append(torch.from_numpy(np.ascontiguousarray(_pad_yx(b.data, extra))))
        # the data term sees the core planes' blend windows only: a measurement in the halo ring depends
        # on the scene outside the brick (and mirrored planes are no measurements), so it is left out;
        # the halo's unknowns are still solved, held by the prior, the coupling and the measurements they reach
        v = np.zeros(ys[-1].shape, bool)
        iy, ix = b.tile.inner
        b0, b1 = zplan.blend(j)
        v[:, zplan.halo:zplan.halo + b1 - b0, iy, ix] = True
        if b.valid is not None:
            v &= _pad_yx(b.valid, extra)
        vs.append(torch.from_numpy(v))
        # a 3-D convolution is the same on every brick; a 2-D operator may depend on the position (masks)
        ops.append(op if not isinstance(op, operators.SliceWise) else
                   operators.SliceWise(T._tile_op(op.op, plan, b.tile, 1, extra)))
        reads.append(b)
        extras.append(extra)
    if len({tuple(y.shape) for y in ys}) != 1:
        raise ValueError(f"batch {bricks} mixes brick shapes {sorted({tuple(y.shape) for y in ys})}; use brick_batches")
    y = torch.stack(ys).to(device=device, dtype=torch.float32)
    A = (ops[0] if all(o is ops[0] for o in ops) else T.BatchOperator(ops)).to(device)
    V = torch.stack(vs).to(device)
    A = operators.Validity(A, V, fill=noise.neutral()).to(device)  # out of the likelihood, χ², m and the residual
    y = A.apply(y)
    gens = [torch.Generator(device=device if device != "mps" else "cpu").manual_seed(brick_seed(cfg["seed"], t, j, k))
            for t, j, k in bricks]
    solver = T.make_solver(cfg, prior)
    with T._device_guard(device, desc.get("gpu_limit")):
        res = solver.solve(y, A, noise, generator=gens, x_shape=tuple(y.shape))
    x = res.x.float()
    with torch.no_grad():
        Ax = A(x)
    V_np, y_np, Ax_np, x = V.cpu().numpy(), y.cpu().numpy(), Ax.cpu().numpy(), x.cpu().numpy()
    resid = T.data_residual(y_np, Ax_np, V_np, out.intensity.scale)
    done = {(int(a), int(b)) for a, b in desc.get("done", [])}
    n_items = sum(len(b.frames) for b in reads)
    written, chis, fail_after = 0, [], desc.get("fail_after")
    for i, ((t, j, k), b) in enumerate(zip(bricks, reads)):
        rh, rw = b.tile.read_shape
        iy, ix = b.tile.inner
        for dz, frame in enumerate(b.frames):
            if (frame, k) in done:  # written by an earlier (interrupted) run: same brick, same bytes
                continue
            zi = zplan.offset(j) + dz  # the plane's index in the brick's read planes
            diag = T.window_diagnostics(noise, y_np[i, :, zi, iy, ix], Ax_np[i, :, zi, iy, ix],
                                        resid[i, :, zi, iy, ix], V_np[i, :, zi, iy, ix], res.nfe,
                                        float(res.seconds) / n_items)
            storage.write_tile_result(out, frame, k, x[i, :, zi, :rh, :rw], diag, resid[i, :, zi, :rh, :rw],
                                      run_id=desc["run_id"])
            written += 1
            chis.append(diag["chi2_nu"])
            if fail_after is not None and written >= int(fail_after):
                raise T.InjectedFailure(f"fail_after_tiles: interrupted deliberately after {written} plane-tile(s) "
                                        f"of bricks {bricks}")
    return {"tiles": n_items, "written": written, "seconds": float(res.seconds), "nfe": int(res.nfe),
            "chi2_nu": chis, "pid": os.getpid(), "threads": torch.get_num_threads()}
