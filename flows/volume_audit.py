"""The audit of a volume run: the assembled volume re-measured with its 3-D forward model, tested per
z-plane and per brick.

Room: ``flows`` — torch, ``ddiff.audit`` (the statistics), ``storage``; no prefect (the audit flow,
:mod:`flows.audit`, calls in here for volume outputs).

**Per plane** (:func:`audit_planes`): every volume ``t`` is read whole (all planes, model space),
re-measured as ``A(x̂)`` with the run's volume operator, and each plane is audited as a frame by
:func:`ddiff.audit.audit` with that ``A(x̂)`` — exact statistics under the noise model, sliding and
disjoint windows, flags. As in the 2-D audit, measurements whose ``A(x̂)`` depends on the scene
outside the data are left out: within ``halo`` pixels of the frame edge, and the planes within
``halo_z`` of either end of the stack (their light comes partly from planes never recorded): those
planes have ``dof = 0`` and NaN statistics ("not audited"), and are never flagged.

**Per brick** (:func:`audit_volumes`): the same per-entry statistics ``(d, e, v, κ₃)`` summed over
each brick's core (its core planes × its tile's core), referred to the matched ``a + c·χ²_k`` (exact
χ²_m for Gaussian noise); a brick is flagged when its p-value passes the family-wise threshold over
the bricks of its volume (``control``: Šidák by default). Written to the output's ``audit_volume/``
group (xarray): per ``(t, z)`` plane and per ``(t, brick, tile)``, with physical coordinates
(``depth`` of every plane, brick core centres, tile centres) in the store's units.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import storage
from ddiff.audit import audit, elementwise_stats, fwer_threshold, scaled_chi2_sf
from storage.bricks import ZPlan

from .bricks import volume_operator
from .noise import noise_model

__all__ = ["volumes_chunk", "audit_planes", "audit_volumes", "remeasure", "volume_statistics", "brick_flags"]


class _Remeasured(nn.Module):
    """What :func:`ddiff.audit.audit` needs of the operator when ``A(x̂)`` is given: the lateral
    ``halo`` (windows on the image grid) and the observed entries ``mask``."""

    linear = False

    def __init__(self, halo: int, mask: torch.Tensor):
        super().__init__()
        self.halo, self.mask = halo, mask

    def forward(self, x):  # pragma: no cover - the audit is always given A(x̂)
        raise RuntimeError("the re-measured volume is passed to the audit as Ax")


def volumes_chunk(out: storage.OutputStore, frames: int) -> int:
    """Frames audited at once for a volume output: whole volumes, as many as ``frames`` allows (≥ 1)."""
    Z = out.layout.sizes["z"]
    return Z * max(1, frames // Z)


def remeasure(out: storage.OutputStore, stack: storage.Stack, t: int):
    """``(x̂, y, A(x̂), observed, noise)`` of volume ``t``: planes as a batch ``(Z, C, H, W)`` in model
    space; ``observed`` False on invalid entries, within ``halo`` of the frame edges and on the planes
    within ``halo_z`` of the stack's ends."""
    cfg = out.manifest["config"]
    Z, (H, W) = out.layout.sizes["z"], out.plan.frame_shape
    f0 = out.layout.frame_of(t, 0)
    op = volume_operator(cfg["operator"]["name"], cfg["operator"]["params"], (H, W))
    noise = noise_model(cfg["noise"], stack)
    x = torch.from_numpy(out.intensity.to_model(out.recon()[f0:f0 + Z])).float()
    y = stack.to_model(stack.array[f0:f0 + Z])
    valid = np.isfinite(y) & (True if stack.valid is None else np.asarray(stack.valid[f0:f0 + Z]))
    y = torch.from_numpy(np.where(valid, y, np.float32(noise.neutral())))
    with torch.no_grad():
        Ax = op(x.transpose(0, 1)[None])[0].transpose(0, 1)  # (Z, C, H, W) -> (1, C, Z, H, W) and back
    h, hz = int(op.halo), int(ZPlan(**cfg["volume"]["zplan"]).halo)
    obs = torch.from_numpy(valid).clone()
    obs[:hz], obs[Z - hz:] = False, False
    obs[..., :h, :], obs[..., H - h:, :], obs[..., :h], obs[..., W - h:] = False, False, False, False
    Ax = torch.where(obs, Ax, y)  # left-out entries: no residual
    return x, y, Ax, obs, noise


def audit_planes(out: storage.OutputStore, stack: storage.Stack, t0: int, t1: int, *, alpha=0.05, window=16,
                 control="sidak"):
    """:func:`flows.audit.audit_frames` for a volume output: frames ``[t0, t1)`` (whole volumes) audited
    plane by plane against the 3-D re-measurement. Returns ``(AuditResult, x̂, y, operator stand-in)``."""
    Z = out.layout.sizes["z"]
    if t0 % Z or (t1 % Z and t1 != out.n_frames):
        raise ValueError(f"volume audit: frames [{t0}, {t1}) are not whole volumes of {Z} planes")
    parts = [remeasure(out, stack, t) for t in range(t0 // Z, -(-t1 // Z))]
    x, y, Ax, obs = (torch.cat([p[i] for p in parts]) for i in range(4))
    op = _Remeasured(int(out.plan.halo or 0), obs)
    res = audit(x, y, op, parts[0][4], alpha=alpha, window=window, control=control,
                exclude_border=int(out.plan.halo or 0), Ax=Ax)
    skipped = res.dof == 0  # planes within halo_z of the stack's ends: not audited
    for name in ("chi2_nu", "z", "p_value", "p_value_low", "chi2_paper"):
        getattr(res, name)[skipped] = float("nan")
    res.tile_flag[skipped] = False
    return res, x, y, op


def _sums(maps, obs: torch.Tensor, zs: slice, box) -> tuple[float, ...]:
    y0, y1, x0, x1 = box
    return tuple(float(m[zs, :, y0:y1, x0:x1].sum()) for m in maps) + (int(obs[zs, :, y0:y1, x0:x1].sum()),)


def volume_statistics(y, Ax, obs, noise, zplan: ZPlan, plan: storage.TilePlan) -> dict:
    """Per-plane ``(Z,)`` and per-brick ``(n_chunks, n_tiles)`` statistics of one volume (planes as a
    batch ``(Z, C, H, W)``, :func:`remeasure`): ``{"plane"|"brick": (χ²_ν, m, z-score, p)}``, NaN where
    nothing is observed."""
    maps = [torch.where(obs, m, 0.0) for m in elementwise_stats(y, Ax, noise)]
    H, W = plan.frame_shape
    sums = {"plane": np.array([_sums(maps, obs, slice(z, z + 1), (0, H, 0, W)) for z in range(zplan.planes)]).T,
            "brick": np.array([[_sums(maps, obs, slice(*zplan.core(j)), plan[k].core) for k in range(plan.n_tiles)]
                               for j in range(zplan.n_chunks)]).transpose(2, 0, 1)}
    stats = {}
    for name, a in sums.items():
        S, E, V, K3, m = (torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for v in a)
        nan = torch.full_like(S, float("nan"))
        p = torch.where(m > 0, scaled_chi2_sf(S, E, V, K3), nan)
        stats[name] = (torch.where(m > 0, S / m.clamp_min(1), nan).numpy(), m.numpy(),
                       torch.where(m > 0, (S - E) / V.clamp_min(1e-300).sqrt(), nan).numpy(), p.numpy())
    return stats


def brick_flags(p: np.ndarray, alpha: float, control: str) -> np.ndarray:
    """Bricks flagged in one volume: p-values ``(n_chunks, n_tiles)`` against the family-wise
    threshold over the volume's audited bricks (``control``, as the region test)."""
    pt = torch.from_numpy(np.asarray(p, dtype=np.float64)).reshape(1, -1)
    return (fwer_threshold(pt, alpha, control).reshape(p.shape).numpy() & np.isfinite(p))


def audit_volumes(out: storage.OutputStore, *, alpha: float = 0.05, control: str = "sidak") -> dict:
    """Per-plane and per-brick statistics of every volume (module docstring), written to
    ``audit_volume/``; returns ``{"planes": [[χ²_ν per plane] per t], "bricks_flagged": [(t, j, k)],
    "bricks": n, "dataset": path}``."""
    import xarray as xr
    from zarr.storage import LocalStore

    stack = storage.open_input(out)
    zplan, plan, s = ZPlan(**out.manifest["config"]["volume"]["zplan"]), out.plan, out.layout.sizes
    T, Z, nb, nk = s["t"], s["z"], zplan.n_chunks, plan.n_tiles
    per_t = []
    for t in range(T):
        x, y, Ax, obs, noise = remeasure(out, stack, t)
        per_t.append(volume_statistics(y, Ax, obs, noise, zplan, plan))
    pc, pm, pz, pp = (np.stack([st["plane"][i] for st in per_t]) for i in range(4))
    bc, bm, bz, bp = (np.stack([st["brick"][i] for st in per_t]) for i in range(4))
    flags = np.stack([brick_flags(bp[t], alpha, control) for t in range(T)])
    scale, units = out.geometry
    dz, dy, dx = (float(scale.get(a, 1.0)) for a in "zyx")
    cores = np.array([plan[k].core for k in range(nk)], dtype=np.float64)
    zc = np.array([zplan.core(j) for j in range(nb)])
    coords = {"z": ("z", np.arange(Z) * dz, {"units": units.get("z", ""), "long_name": "depth of the plane"}),
              "z_index": ("z", np.arange(Z)),
              "brick_z0": ("brick", zc[:, 0]), "brick_z1": ("brick", zc[:, 1]),
              "brick_depth": ("brick", (zc[:, 0] + zc[:, 1] - 1) / 2 * dz, {"units": units.get("z", ""),
                                                                            "long_name": "brick core centre z"}),
              "tile_y": ("tile", (cores[:, 0] + cores[:, 1] - 1) / 2 * dy, {"units": units.get("y", "")}),
              "tile_x": ("tile", (cores[:, 2] + cores[:, 3] - 1) / 2 * dx, {"units": units.get("x", "")})}
    if "t" in out.layout.axes:
        coords["time"] = ("t", np.arange(T) * float(scale.get("t", 1.0)), {"units": units.get("t", "")})
    ds = xr.Dataset({"plane_chi2_nu": (("t", "z"), pc), "plane_dof": (("t", "z"), pm), "plane_zscore": (("t", "z"), pz),
                     "plane_p_value": (("t", "z"), pp), "plane_audited": (("t", "z"), pm > 0),
                     "brick_chi2_nu": (("t", "brick", "tile"), bc), "brick_dof": (("t", "brick", "tile"), bm),
                     "brick_zscore": (("t", "brick", "tile"), bz), "brick_p_value": (("t", "brick", "tile"), bp),
                     "brick_flag": (("t", "brick", "tile"), flags)},
                    coords=coords, attrs={"alpha": alpha, "control": control, "halo": int(plan.halo or 0),
                                          "halo_z": zplan.halo, "brick_planes": zplan.brick,
                                          "statistic": "S = Σ d over observed entries (3-D re-measurement); χ²_ν = S/m; "
                                                       "p = P(a + c·χ²_k ≥ S) (exact χ²_m for Gaussian noise)"})
    try:
        ds.to_zarr(LocalStore(out.path), group="audit_volume", mode="w", consolidated=False, zarr_format=3)
    except OSError as exc:  # a full disk: the same one line (store, errno, fix) as every other stage
        raise storage.safety.write_error("the volume audit (audit_volume/)", out.path, exc) from exc
    return {"planes": [[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in pc],
            "bricks_flagged": [(int(t), int(j), int(k)) for t, j, k in zip(*np.nonzero(flags))],
            "bricks": int(T * nb * nk), "dataset": f"{out.path}/audit_volume"}
