"""Tile solving: what one batch task does, given only a descriptor (paths, indices, a JSON config).

Room: ``flows`` — torch, ``operators``, ``ddiff``, ``storage``; no prefect here (the Prefect task
wrappers live in :mod:`flows.reconstruct`), so this is plain, testable Python.

A batch descriptor (``dict``, JSON-serialisable, a few hundred bytes) holds
``input``/``output`` store paths, ``run_id`` (the output's lock), ``items`` = ``[[frame, tile], ...]``
(all of one padded shape), ``config`` (the run configuration recorded in the output's manifest),
``device``/``dtype``/``torch_threads`` and ``fail_after`` (testing hook). The task reads its tiles
from the input store, solves them in ONE batched solver call, and writes each tile's result,
diagnostics and residual through ``storage.write_tile_result`` (which marks it done in the ledger).

Shapes: a tile is read as ``y`` ``(C, rh, rw)`` (the read window on the input grid, reflect
padded at frame edges). The prior's U-Net needs image sides divisible by its downsampling factor
``d``, so ``y`` is further reflect-padded at the bottom/right by ``p`` input pixels such that
``f·(rh + p) % d == 0`` (``f`` = output pixels per input pixel); the extra pixels lie outside the
blend window and the solution there is cropped away. Position-dependent operators (masks) get the
same padding applied to their own mask.

Randomness: every tile has its own ``torch.Generator`` seeded from ``(seed, frame, tile)``, and
solvers draw per sample from it, so a tile's result does not depend on which other tiles share its
batch, on resume, or on which worker ran it.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import ddiff
from ddiff.audit import uncertainty
import operators
import storage
from ddiff.solvers.base import infer_x_shape
from storage.tiling import TilePlan

from .noise import noise_model

__all__ = ["InjectedFailure", "tile_seed", "resolved_threads", "build_operator", "load_prior_cached", "prior_identity",
           "operator_geometry", "group_batches", "solve_batch", "BatchOperator"]


class InjectedFailure(RuntimeError):
    """Raised by the ``fail_after_tiles`` testing hook (a deliberate interruption)."""


def tile_seed(seed: int, frame: int, tile: int) -> int:
    """A 63-bit seed for tile ``(frame, tile)`` of a run with base ``seed`` (stable across runs)."""
    h = hashlib.sha256(f"ddiff:{int(seed)}:{int(frame)}:{int(tile)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def build_operator(name: str, params: dict, frame_shape: tuple[int, int] | None = None) -> nn.Module:
    """``operators.get_operator(name, **params)``; shape-dependent operators (those taking
    ``image_size``) get the *image* frame shape when it is not given."""
    params = dict(params)
    if frame_shape is not None and "image_size" not in params:
        try:
            factory = operators.base._REGISTRY.get(name)
            if factory is not None and "image_size" in inspect.signature(factory).parameters:
                params["image_size"] = tuple(int(v) for v in frame_shape)
        except (TypeError, ValueError):
            pass
    return operators.get_operator(name, **params)


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def prior_identity(prior: str) -> tuple[str, str | None]:
    """``(embedded prior name or resolved path, sha256 of the weights file)`` for the config hash."""
    from pathlib import Path

    from ddiff.priors.loading import NAMED_WEIGHTS, weights_path

    named = prior in NAMED_WEIGHTS
    path = weights_path(prior)  # raises for an embedded prior whose file is missing
    if not path.is_file():
        raise FileNotFoundError(f"prior checkpoint {prior!r} not found; pass 'default' or a .safetensors/.pt path")
    return (prior if named else str(path.resolve())), storage.file_sha256(path)


def load_prior_cached(prior: str, device: str = "cpu", dtype: str = "fp32"):
    """One loaded prior per (checkpoint, device, dtype) per process (tasks reuse it)."""
    from ddiff.priors import load_prior

    key = ("prior", prior, device, dtype)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_prior(prior, dtype=dtype, device=device)
        return _CACHE[key]


def _cached_operator(name: str, params: dict, frame_shape) -> nn.Module:
    key = ("op", name, json.dumps(params, sort_keys=True, default=str), tuple(frame_shape))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = build_operator(name, params, frame_shape)
        return _CACHE[key]


class BatchOperator(nn.Module):
    """Applies a different (position-dependent) operator to each sample of a batch.

    ``ops`` are per-sample forward models of one shape; ``forward``/``adjoint`` are computed sample
    by sample (so results do not depend on the batch's composition); ``mask`` (when every op has
    one) is stacked to ``(B, 1, H, W)`` for the audit's observed-entries rule.
    """

    def __init__(self, ops: list[nn.Module]):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.linear = all(getattr(o, "linear", False) for o in ops)
        self.halo = getattr(ops[0], "halo", None)
        masks = [getattr(o, "mask", None) for o in ops]
        if all(isinstance(m, torch.Tensor) for m in masks):
            self.mask = torch.stack(masks)[:, None]
        if all(hasattr(o, "solve_regularized") for o in ops):
            self.solve_regularized = self._solve_regularized

    def forward(self, x):
        return torch.cat([o(x[i:i + 1]) for i, o in enumerate(self.ops)])

    def adjoint(self, y):
        return torch.cat([o.adjoint(y[i:i + 1]) for i, o in enumerate(self.ops)])

    def select(self, keep):
        """The operator of the samples ``keep`` (a solver's early stop keeps each tile its own operator)."""
        return BatchOperator([self.ops[int(i)] for i in keep])

    def _solve_regularized(self, y, z, rho):
        return torch.cat([o.solve_regularized(y[i:i + 1], z[i:i + 1], rho) for i, o in enumerate(self.ops)])


@dataclass(frozen=True)
class Geometry:
    """Scale ``f`` (output pixels per input pixel), halo on the input grid, tile plan."""

    scale: int
    halo: int | None
    plan: TilePlan


def operator_geometry(op: nn.Module, frame_shape: tuple[int, int], channels: int, tile: int, overlap: int) -> Geometry:
    """The tile plan for ``op`` on input frames of ``frame_shape``.

    ``f`` comes from ``op.output_shape`` (super-resolution) or is 1; the operator's halo (image
    pixels) becomes ``ceil(halo / f)`` input pixels; a global operator (``halo is None``) gets one
    tile per frame. Raises ``ValueError`` for operators whose measurement is not an image on a grid
    related to the reconstruction's (e.g. CT sinograms): those need a frame-level store layout.
    """
    H, W = frame_shape
    f = 1
    if hasattr(op, "output_shape"):
        oh, _ = op.output_shape(64 * 8, 64 * 8)
        f = max(1, round(512 / oh))
    halo = getattr(op, "halo", None)
    halo_in = None if halo is None else -(-int(halo) // f)
    if halo is None:
        # check the whole-frame measurement is an image on the input grid: A(x) of an (H f, W f) image is (H, W)
        try:
            with torch.no_grad():
                y = op(torch.zeros(1, channels, H * f, W * f))
        except Exception as exc:  # noqa: BLE001 - report what the operator said
            raise ValueError(f"operator {type(op).__name__} cannot be applied to frames of {(H * f, W * f)}: {exc}") from exc
        if tuple(y.shape[-2:]) != (H, W) or y.is_complex():
            raise ValueError(f"operator {type(op).__name__} maps {(H * f, W * f)} images to measurements of shape "
                             f"{tuple(y.shape)} ({y.dtype}); tiled stores hold real image-like measurements on the "
                             "input grid — this operator is not supported by reconstruct_stack yet")
    plan = TilePlan((H, W), tile=tile, halo=halo_in, overlap=overlap)
    return Geometry(scale=f, halo=halo_in, plan=plan)


def _div_pad(n: int, f: int, d: int) -> int:
    """Smallest ``p >= 0`` with ``f·(n + p) % d == 0``."""
    p = 0
    while (f * (n + p)) % d:
        p += 1
    return p


def _tile_op(op: nn.Module, plan: TilePlan, tile, f: int, extra: tuple[int, int]) -> nn.Module:
    """Operator for the (padded) read window of ``tile`` on the image grid."""
    if isinstance(op, operators.MaskOperator) and op.mask is not None:
        (ys, xs), pads = plan.scaled(f).read_window(plan.scaled(f).tile_of(tile.index))
        m = plan.pad(op.mask[ys, xs].cpu().numpy(), pads)
        if extra[0] or extra[1]:
            m = np.pad(m, ((0, extra[0] * f), (0, extra[1] * f)), mode="reflect")
        return operators.MaskOperator(torch.as_tensor(m), name=f"{op.name}[tile]")
    y0, y1, x0, x1 = tile.read
    return op.tile_operator(y0 * f, x0 * f, (y1 - y0 + extra[0]) * f, (x1 - x0 + extra[1]) * f)


def group_batches(plan: TilePlan, n_frames: int, batch_size: int, scale: int, down: int) -> list[list[list[int]]]:
    """All ``(frame, tile)`` pairs grouped by padded read shape, in a fixed order, cut into batches
    of ``batch_size``. Fixed by the plan alone, so a resumed run forms the very same batches."""
    groups: dict[tuple[int, int], list[list[int]]] = {}
    for t in range(n_frames):
        for tile in plan:
            rh, rw = tile.read_shape
            shape = (rh + _div_pad(rh, scale, down), rw + _div_pad(rw, scale, down))
            groups.setdefault(shape, []).append([t, tile.index])
    out = []
    for shape in sorted(groups):
        items = groups[shape]
        out += [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    return out


def make_solver(config: dict, prior, keep_samples: bool = False):
    """The run's solver; with ``seeds ≥ 2`` the K-seed mean (``keep_samples``: its result carries the K runs)."""
    from .params import SOLVER_NAMES

    cls = getattr(ddiff, SOLVER_NAMES[config["solver"]])
    solver = cls(prior, **config["hyperparameters"])
    if config.get("seeds", 1) > 1:
        return ddiff.SeedMean(solver, config["seeds"], keep_samples=keep_samples)
    return solver


def seed_spread(res, A, noise, y: torch.Tensor, bounds: dict | None = None, features: bool = False) -> np.ndarray | None:
    """``(B, 7, H, W)`` float32 maps of a multi-seed result, in the order of ``storage.UNC_MAPS``:
    seed spread (model units), measured spread (noise sd; NaN when the grids are unrelated),
    prior-filled (0/1) — :func:`ddiff.audit.uncertainty` on the K runs —, the bound features
    (:data:`ddiff.audit.FEATURES`: pooled spread, posterior sd, structure; model units) and the calibrated
    half-width ``λ·s`` (``bounds`` = the run's ``config["bounds"]``; NaN without). ``None`` for one seed
    unless it has bounds or ``features`` (a K = 1 calibration): spread 0, measured spread NaN, nothing
    prior-filled."""
    samples = res.samples if res.samples is not None else (res.x[None] if bounds or features else None)
    if samples is None:
        return None
    from ddiff.audit import ScaleRule, bound_features

    feats = bound_features(samples.float(), A, noise, y)
    if samples.shape[0] > 1:
        u = uncertainty(samples.float(), A, noise, y)
        spread, pf = u.spread, u.prior_filled.to(u.spread)
        ms = u.measured_spread if u.measured_spread is not None else torch.full_like(u.spread, float("nan"))
    else:
        spread = torch.zeros_like(feats[:, 0])
        ms, pf = torch.full_like(spread, float("nan")), torch.zeros_like(spread)
    half = (float(bounds["lambda"]) * ScaleRule.from_dict(bounds["rule"]).scale(feats) if bounds
            else torch.full_like(spread, float("nan")))
    return torch.cat([torch.stack([spread, ms.to(spread), pf], 1), feats.to(spread), half.to(spread)[:, None]],
                     1).float().cpu().numpy()


def data_residual(y: np.ndarray, Ax: np.ndarray, valid: np.ndarray, scale: float) -> np.ndarray:
    """The residual map ``y − A x̂`` in the data's units (ADU: the model-space residual / the intensity
    map's ``scale``), NaN where the measurement is invalid; float32, any shape."""
    return np.where(valid, (y - Ax).astype(np.float64) / scale, np.nan).astype(np.float32)


def window_diagnostics(noise, y: np.ndarray, Ax: np.ndarray, resid: np.ndarray, valid: np.ndarray, nfe: int,
                       seconds: float) -> dict:
    """The diagnostics of one blend window (a tile's, or a brick plane's): ``chi2_nu = D(y, A x̂)/m``
    (‖r‖²/(mσ²); Pearson for counts), ``nll``, ``dof = m`` (valid entries), the residual's norm and RMS in
    data units (``resid`` from :func:`data_residual`), ``nfe`` and ``seconds``; arrays cut to the window."""
    yb = torch.from_numpy(y[valid])[None]  # the valid entries of the window
    Axb = torch.from_numpy(Ax[valid])[None]
    rb = resid[valid].astype(np.float64)
    m = int(valid.sum())
    with torch.no_grad():
        chi = float(noise.discrepancy(yb, Axb)[0]) / m if m else float("nan")
        nll = float(noise.nll(yb, Axb)[0]) if m else 0.0
    return {"chi2_nu": chi, "nll": nll, "dof": float(m), "residual_norm": float(np.linalg.norm(rb)),
            "residual_rms": float(np.sqrt(np.mean(rb ** 2))) if m else float("nan"), "nfe": int(nfe),
            "seconds": float(seconds)}


def solve_batch(desc: dict) -> dict:
    """Solve and write one batch of tiles (see module docstring). Returns a small summary dict:
    ``{"tiles", "written", "seconds" (solver wall time), "nfe", "chi2_nu" (list), "pid", "threads"
    (the torch thread count it ran with: the recorded one)}``."""
    cfg = desc["config"]
    out = storage.open_output(desc["output"])
    stack = storage.open_input(out, desc["input"])  # refuses an input replaced since the output was created
    plan, f = out.plan, int(out.manifest["scale"])
    threads = cfg.get("torch_threads") or desc.get("torch_threads")  # the recorded count (same bytes anywhere)
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))
    device, dtype = desc.get("device", "cpu"), desc.get("dtype", "fp32")
    tdtype = torch.float32  # measurements and operators stay fp32; the prior may run in bf16/fp16
    prior = load_prior_cached(cfg["prior_path"], device, dtype)
    down = int(getattr(prior, "downsampling", 1) or 1)
    H, W = plan.frame_shape
    op = _cached_operator(cfg["operator"]["name"], cfg["operator"]["params"], (H * f, W * f))
    noise = noise_model(cfg["noise"], stack)  # parameters in data units, composed with the intensity map
    items = [(int(a), int(b)) for a, b in desc["items"]]

    ys, valids, ops, tiles, extras = [], [], [], [], []
    for frame, k in items:
        inp = storage.read_tile(stack, frame, k, plan)
        rh, rw = inp.tile.read_shape
        extra = (_div_pad(rh, f, down), _div_pad(rw, f, down))
        y = inp.data
        v = np.ones(y.shape, bool) if inp.valid is None else inp.valid
        if extra != (0, 0):
            y = np.pad(y, ((0, 0), (0, extra[0]), (0, extra[1])), mode="reflect")
            v = np.pad(v, ((0, 0), (0, extra[0]), (0, extra[1])), mode="reflect")
        ys.append(torch.from_numpy(np.ascontiguousarray(y)))
        valids.append(torch.from_numpy(np.ascontiguousarray(v)))
        ops.append(_tile_op(op, plan, inp.tile, f, extra))
        tiles.append(inp.tile)
        extras.append(extra)
    if len({tuple(y.shape) for y in ys}) != 1:
        raise ValueError(f"batch {items} mixes tile shapes {sorted({tuple(y.shape) for y in ys})}; use group_batches")
    y = torch.stack(ys).to(device=device, dtype=tdtype)
    shared = all(o is ops[0] for o in ops)
    A = (ops[0] if shared else BatchOperator(ops)).to(device)
    x_shape = infer_x_shape(y, A, prior.channels)
    V = torch.stack(valids).to(device)
    if not bool(V.all()):  # invalid pixels: removed from the likelihood, χ², m and the residual maps
        A = operators.Validity(A, V, fill=noise.neutral()).to(device)
        y = A.apply(y)
    gens = [torch.Generator(device=device if device != "mps" else "cpu").manual_seed(tile_seed(cfg["seed"], fr, k))
            for fr, k in items]
    solver = make_solver(cfg, prior, keep_samples=True)
    with _device_guard(device, desc.get("gpu_limit")):
        res = solver.solve(y, A, noise, generator=gens, x_shape=x_shape)
    unc = seed_spread(res, A, noise, y, cfg.get("bounds"), cfg.get("features", False))
    x = res.x.float()
    with torch.no_grad():
        Ax = A(x)
    V_np = V.cpu().numpy()
    y_np = y.cpu().numpy()
    Ax_np = Ax.cpu().numpy()
    resid = data_residual(y_np, Ax_np, V_np, out.intensity.scale)
    x = x.cpu().numpy()
    written, chis = 0, []
    fail_after = desc.get("fail_after")
    done = {(int(a), int(b)) for a, b in desc.get("done", [])}
    for i, ((frame, k), tile, extra) in enumerate(zip(items, tiles, extras)):
        if (frame, k) in done:  # solved by an earlier (interrupted) run: identical batch, identical bytes
            continue
        rh, rw = tile.read_shape
        iy, ix = tile.inner  # blend window on the input grid
        diag = window_diagnostics(noise, y_np[i, :, iy, ix], Ax_np[i, :, iy, ix], resid[i, :, iy, ix],
                                  V_np[i, :, iy, ix], res.nfe, float(res.seconds) / len(items))
        storage.write_tile_result(out, frame, k, x[i, :, : rh * f, : rw * f], diag, resid[i, :, :rh, :rw],
                                  run_id=desc["run_id"], uncertainty=None if unc is None else unc[i, :, : rh * f, : rw * f])
        written += 1
        chis.append(diag["chi2_nu"])
        if fail_after is not None and written >= int(fail_after):
            raise InjectedFailure(f"fail_after_tiles: interrupted deliberately after {written} tile(s) of batch {items}")
    return {"tiles": len(items), "written": written, "seconds": float(res.seconds), "nfe": int(res.nfe),
            "chi2_nu": chis, "pid": os.getpid(), "threads": torch.get_num_threads()}


def resolved_threads(threads: int | None) -> int:
    """The torch CPU thread count a run records: ``threads`` when given, else ``OMP_NUM_THREADS``
    when set, else the CPUs this process may use (torch's own default on Linux)."""
    if threads:
        return int(threads)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _device_guard(device: str, limit: str | None):
    """The GPU section: a Prefect global concurrency slot (``strict=True``: the limit must exist,
    so a deployment without it fails loudly instead of oversubscribing the device). CPU: nothing."""
    if not limit or not str(device).startswith("cuda"):
        return _nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(limit, occupy=1, strict=True)
