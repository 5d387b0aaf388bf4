"""``audit_reconstruction``: the hallucination audit of a finished reconstruction, per frame and tile.

Room: ``flows`` — prefect, ``ddiff.audit`` (the statistics), ``flows.audit_report`` (the report),
``storage`` (reading the stores, writing the ``audit/`` dataset).

For each chunk of frames: re-measure the assembled reconstruction ``A(x̂)`` on whole frames (the
operator of the run, rebuilt from the output manifest), run :func:`ddiff.audit.audit` against the
measurement with ``exclude_border = halo`` (near a frame's edge ``A`` sees its boundary extension,
not the scene the instrument saw), and write into the output store the group ``audit/`` (xarray):
per frame ``chi2_nu``, ``z``, ``p_value``, ``p_value_low``, ``frame_flag``, ``n_flagged_windows``;
per (frame, tile) ``tile_flagged`` (a flagged window touches the tile's core); maps ``flag_map``
and ``window_p`` (frame grid). The markdown/PNG report (``flows.audit_report``) is rendered for
the first chunk (at most ``CHUNK`` frames) into ``report_dir``; a markdown artifact summarises it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import storage
from ddiff.audit import audit

from . import tiles as T
from .audit_report import render_audit_report, summary_markdown
from .params import AuditParams, NoiseSpec

__all__ = ["audit_reconstruction", "audit_frames", "CHUNK"]

CHUNK = 16  # frames audited (and held in memory) at once


def _frames(out: storage.OutputStore, stack: storage.Stack, t0: int, t1: int):
    g = out.group("r")
    x = torch.from_numpy(out.intensity.to_model(np.asarray(g["recon/0"][t0:t1])))
    y = torch.from_numpy(stack.to_model(np.asarray(stack.array[t0:t1])))
    return x, y


def audit_frames(output_store, t0: int, t1: int, *, alpha=0.05, window=16, control="sidak"):
    """Audit frames ``[t0, t1)`` of a finished output; returns ``(AuditResult, x̂, y, operator)``."""
    out = storage.open_output(output_store)
    if not out.complete:
        raise storage.StorageError(f"{out.path} is not complete; finish `ddiff reconstruct` (rerun it to resume) first")
    cfg = out.manifest["config"]
    stack = storage.open_stack(out.manifest["input"]["path"])
    if storage.is_frame_output(out):  # measurements of a global operator: whole-frame tests only
        from .frames import audit_inputs

        x, y, op, noise = audit_inputs(out, stack, t0, t1)
        return audit(x, y, op, noise, alpha=alpha, window=window, control=control), x, y, op
    f = int(out.manifest["scale"])
    H, W = out.plan.frame_shape
    op = T.build_operator(cfg["operator"]["name"], cfg["operator"]["params"], (H * f, W * f))
    noise = NoiseSpec(**cfg["noise"]).build()
    x, y = _frames(out, stack, t0, t1)
    halo = getattr(op, "halo", None)
    res = audit(x, y, op, noise, alpha=alpha, window=window, control=control,
                exclude_border=0 if halo is None else int(halo))
    return res, x, y, op


@flow(name="audit-reconstruction", persist_result=False)
def audit_reconstruction(params: AuditParams) -> dict:
    """Audit every frame of ``params.output_store``; returns a small dict (report path, flags)."""
    import xarray as xr
    from zarr.storage import LocalStore

    from .reconstruct import artifact_key, settings_text

    p = params if isinstance(params, AuditParams) else AuditParams.model_validate(params)
    logger = get_run_logger()
    out = storage.open_output(p.output_store)
    report_dir = Path(p.report_dir) if p.report_dir else out.path.with_name(out.path.name + ".audit")
    plan, f, n = out.plan, int(out.manifest["scale"]), out.n_frames
    chi, pv, flags_frame, tile_flags, first = [], [], [], np.zeros((n, plan.n_tiles), bool), None
    with storage.RunLock(out.path):
        for c0 in range(0, n, CHUNK):
            c1 = min(n, c0 + CHUNK)
            res, x, y, op = audit_frames(out.path, c0, c1, alpha=p.alpha, window=p.window, control=p.control)
            if first is None:
                first = (res, x, y)
            B = c1 - c0
            dv = {name: (("t",), getattr(res, name).double().cpu().numpy())
                  for name in ("chi2_nu", "z", "p_value", "p_value_low")}
            dv["frame_flag"] = (("t",), res.flagged.cpu().numpy())
            nwin = (res.region_flag.flatten(1).sum(1).cpu().numpy() if res.region_flag is not None
                    else np.zeros(B, np.int64))
            dv["n_flagged_windows"] = (("t",), nwin.astype(np.int64))
            if res.flag_map is not None:
                fm = res.flag_map.cpu().numpy()
                dv["flag_map"] = (("t", "y", "x"), fm)
                dv["window_p"] = (("t", "y", "x"), res.window_p.float().cpu().numpy())
                op_plan = plan.scaled(f)
                for k, tile in enumerate(op_plan):
                    y0, y1, x0, x1 = tile.core
                    tile_flags[c0:c1, k] = fm[:, y0:y1, x0:x1].reshape(B, -1).any(1)
            else:  # global operator: one tile per frame = the frame test
                tile_flags[c0:c1, :] = res.flagged.cpu().numpy()[:, None]
            dv["tile_flagged"] = (("t", "tile"), tile_flags[c0:c1])
            ds = xr.Dataset(dv, coords={"t": np.arange(c0, c1)}, attrs={k: str(v) for k, v in res.attrs().items()})
            kw = {"mode": "w"} if c0 == 0 else {"mode": "a", "append_dim": "t"}
            ds.to_zarr(LocalStore(out.path), group="audit", consolidated=False, zarr_format=3, **kw)
            chi += [float(v) for v in res.chi2_nu]
            pv += [float(v) for v in res.p_value]
            flags_frame += [bool(v) for v in res.flagged]
            logger.info("audited frames %d-%d: %d flagged", c0, c1 - 1, int(res.flagged.sum()))
    res, x, y = first
    if y.is_complex():  # k-space is shown as its magnitude
        y = y.abs()
    md_path = render_audit_report(res, report_dir, x_hat=x, y=y, max_samples=p.max_figures,
                                  title=f"Hallucination audit — {out.path.name}",
                                  sample_names=[f"frame {t}" for t in range(x.shape[0])])
    flagged_tiles = [(int(t), int(k)) for t, k in zip(*np.nonzero(tile_flags))]
    if p.artifacts:
        md = [summary_markdown(res), "", f"- {settings_text(out.manifest['config'])}",
              f"- report: `{md_path}`", f"- dataset: `{out.path}/audit`",
              f"- frames flagged: {sum(flags_frame)} / {n}; tiles touching a flagged window: {len(flagged_tiles)}", ""]
        md += [f"- frame {t} tile {k}" for t, k in flagged_tiles[:50]]
        create_markdown_artifact("\n".join(md), key=artifact_key("audit", str(out.path)),
                                 description="hallucination audit summary")
    return {"report": str(md_path), "dataset": f"{out.path}/audit", "chi2_nu": chi, "p_value": pv,
            "frames_flagged": [t for t, b in enumerate(flags_frame) if b], "tiles_flagged": flagged_tiles}
