"""``audit_reconstruction``: the hallucination audit of a finished reconstruction, per frame and tile.

Room: ``flows`` — prefect, ``ddiff.audit`` (the statistics), ``flows.audit_report`` (the report),
``storage`` (reading the stores, writing the ``audit/`` dataset).

For each chunk of frames: re-measure the assembled reconstruction ``A(x̂)`` on whole frames (the
operator of the run, rebuilt from the output manifest), run :func:`ddiff.audit.audit` against the
measurement with ``exclude_border = halo`` (near a frame's edge ``A`` sees its boundary extension,
not the scene the instrument saw), and write into the output store the group ``audit/`` (xarray):
per frame ``chi2_nu``, ``z``, ``p_value``, ``p_value_low``, ``frame_flag``, ``n_flagged_windows``;
per (frame, tile) ``tile_flagged`` (a flagged window touches the tile's core); maps ``flag_map``
and ``window_p`` (output grid, physical ``y``/``x`` coordinates; frames carry their ``t``/``z``);
and the flag map again as the OME-NGFF label image ``labels/audit_flags`` over the
reconstruction, so napari shows it on the image. The markdown/PNG report (``flows.audit_report``) is rendered for
the first chunk (at most ``CHUNK`` frames) into ``report_dir``; a markdown artifact summarises it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import operators
import storage
from ddiff.audit import audit

from . import tiles as T
from .bricks import is_volume_output
from .audit_report import frame_rows, render_audit_report, summary_markdown
from .checks import check_audit
from .noise import noise_model
from .params import AuditParams
from .ui import abspath, artifact_key, emit, flow_run_namer, png_markdown, report_failure, run_tags, tag_this_run
from .volume_audit import audit_planes, audit_volumes, volumes_chunk

__all__ = ["audit_reconstruction", "audit_frames", "frames_per_chunk", "CHUNK"]

CHUNK = 16  # frames audited (and held in memory) at once, at most ...
CHUNK_BYTES = 256 << 20  # ... and fewer when their float32 reconstructions pass this (big frames: one at a time)


def frames_per_chunk(out: storage.OutputStore) -> int:
    """Frames audited at once: at most :data:`CHUNK`, fewer when their float32 reconstructions pass
    :data:`CHUNK_BYTES` (the audit and the reconstruction's frame-fit table share this rule)."""
    _, C, Ho, Wo = out.recon().shape
    n = max(1, min(CHUNK, CHUNK_BYTES // (4 * C * Ho * Wo)))
    return volumes_chunk(out, n) if is_volume_output(out) else n  # volumes: whole z-stacks


def _frames(out: storage.OutputStore, stack: storage.Stack, t0: int, t1: int):
    """``(x̂, y, valid)`` of frames ``[t0, t1)`` in model space; ``valid`` None when every entry is."""
    x = torch.from_numpy(out.intensity.to_model(out.recon()[t0:t1]))
    y = stack.to_model(stack.array[t0:t1])
    valid = np.isfinite(y)
    if stack.valid is not None:
        valid &= np.asarray(stack.valid[t0:t1])
    return x, torch.from_numpy(np.where(valid, y, np.float32(0))), (None if valid.all() else torch.from_numpy(valid))


def audit_frames(output_store, t0: int, t1: int, *, alpha=0.05, window=16, control="sidak"):
    """Audit frames ``[t0, t1)`` of a finished output; returns ``(AuditResult, x̂, y, operator)``."""
    out = storage.open_output(output_store)
    if not out.complete:
        raise storage.StorageError(f"{out.path} is not complete; finish `ddiff reconstruct` (rerun it to resume) first")
    cfg = out.manifest["config"]
    stack = storage.open_input(out)  # refuses an input re-ingested since the reconstruction (one line)
    if is_volume_output(out):  # z-stacks: every plane against the 3-D re-measurement (flows.volume_audit)
        return audit_planes(out, stack, t0, t1, alpha=alpha, window=window, control=control)
    if storage.is_frame_output(out):  # measurements of a global operator: whole-frame tests only
        from .frames import audit_inputs

        x, y, op, noise = audit_inputs(out, stack, t0, t1)
        return audit(x, y, op, noise, alpha=alpha, window=window, control=control), x, y, op
    f = int(out.manifest["scale"])
    H, W = out.plan.frame_shape
    op = T.build_operator(cfg["operator"]["name"], cfg["operator"]["params"], (H * f, W * f))
    noise = noise_model(cfg["noise"], stack)  # exact in the data's units (counts for a camera)
    x, y, valid = _frames(out, stack, t0, t1)
    if valid is not None:  # invalid entries count neither in the statistics nor in m
        op = operators.Validity(op, valid, fill=noise.neutral())
        y = op.apply(y)
    halo = getattr(op, "halo", None)
    res = audit(x, y, op, noise, alpha=alpha, window=window, control=control,
                exclude_border=0 if halo is None else int(halo))
    return res, x, y, op


def _coords(out: storage.OutputStore, c0: int, c1: int, maps: bool) -> dict:
    """Physical coordinates of frames ``[c0, c1)`` (t, z as present) and of the output grid."""
    from storage.diagnostics import frame_coords

    scale, units = out.geometry
    coords = {k: (d, v[c0:c1], *rest) for k, (d, v, *rest) in frame_coords(out.layout, scale, units).items()}
    if maps:
        s = out.layout.sizes
        for a in "yx":
            coords[a] = (a, np.arange(s[a]) * float(scale.get(a, 1.0)), {"units": units.get(a, "")})
    return coords


@flow(name="audit-reconstruction", persist_result=False, flow_run_name=flow_run_namer("audit", "params.output_store"))
def audit_reconstruction(params: AuditParams) -> dict:
    """Audit every frame of ``params.output_store``; returns a small dict (report path, flags).
    A failed or interrupted audit publishes a failure summary and ``ddiff.run.failed``."""
    p = params if isinstance(params, AuditParams) else AuditParams.model_validate(params)
    try:
        return _audit(p)
    except BaseException as exc:
        where = abspath(p.output_store)
        cmd = f"ddiff audit {where} --alpha {p.alpha:g} --window {p.window}" + (
            f" --report-dir {abspath(p.report_dir)}" if p.report_dir else "")
        report_failure("audit-reconstruction", p.output_store, exc,
                       [f"the reconstruction `{where}` is only read; the audit rewrites only its `audit/` group, "
                        "its `audit_flags` label and the report folder"], [cmd],
                       key=artifact_key("audit", p.output_store))
        raise


def _audit(p: AuditParams) -> dict:
    import xarray as xr
    from zarr.storage import LocalStore

    from .run_report import settings_text

    logger = get_run_logger()
    check_audit(p.output_store)  # complete, and its input is still the one it was made from
    out = storage.open_output(p.output_store)
    cfg = out.manifest["config"]
    tag_this_run(run_tags(operator=cfg["operator"]["name"], solver=cfg.get("solver"), prior=cfg.get("prior")))
    report_dir = Path(p.report_dir) if p.report_dir else out.path.with_name(out.path.name + ".audit")
    plan, f, n = out.plan, int(out.manifest["scale"]), out.n_frames
    chi, pv, flags_frame, tile_flags, first = [], [], [], np.zeros((n, plan.n_tiles), bool), None
    rows: list[dict] = []
    with storage.RunLock(out.path) as lock:
        step = frames_per_chunk(out)
        for c0 in range(0, n, step):
            c1 = min(n, c0 + step)
            res, x, y, op = audit_frames(out.path, c0, c1, alpha=p.alpha, window=p.window, control=p.control)
            if first is None:
                first = (res, x, y)
            B = c1 - c0
            dv = {name: (("frame",), getattr(res, name).double().cpu().numpy())
                  for name in ("chi2_nu", "z", "p_value", "p_value_low")}
            dv["frame_flag"] = (("frame",), res.flagged.cpu().numpy())
            nwin = (res.region_flag.flatten(1).sum(1).cpu().numpy() if res.region_flag is not None
                    else np.zeros(B, np.int64))
            dv["n_flagged_windows"] = (("frame",), nwin.astype(np.int64))
            if res.flag_map is not None:
                fm = res.flag_map.cpu().numpy()
                dv["flag_map"] = (("frame", "y", "x"), fm)
                dv["window_p"] = (("frame", "y", "x"), res.window_p.float().cpu().numpy())
                op_plan = plan.scaled(f)
                for k, tile in enumerate(op_plan):
                    y0, y1, x0, x1 = tile.core
                    tile_flags[c0:c1, k] = fm[:, y0:y1, x0:x1].reshape(B, -1).any(1)
            else:  # global operator: one tile per frame = the frame test
                tile_flags[c0:c1, :] = res.flagged.cpu().numpy()[:, None]
            dv["tile_flagged"] = (("frame", "tile"), tile_flags[c0:c1])
            ds = xr.Dataset(dv, coords={"frame": np.arange(c0, c1), **_coords(out, c0, c1, res.flag_map is not None)},
                            attrs={k: str(v) for k, v in res.attrs().items()})
            kw = {"mode": "w"} if c0 == 0 else {"mode": "a", "append_dim": "frame"}
            ds.to_zarr(LocalStore(out.path), group="audit", consolidated=False, zarr_format=3, **kw)
            if res.flag_map is not None:  # the flags as an OME-NGFF label image over the reconstruction
                for b in range(B):
                    storage.write_flag_label(out, "audit_flags", c0 + b, fm[b], run_id=lock.run_id)
            storage.consolidate(out.path)
            chi += [float(v) for v in res.chi2_nu]
            pv += [float(v) for v in res.p_value]
            flags_frame += [bool(v) for v in res.flagged]
            rows += [{"frame": c0 + b, **{k: v for k, v in r.items() if k != "sample"},
                      "tiles_flagged": int(tile_flags[c0 + b].sum()), "flagged": bool(res.flagged[b])}
                     for b, r in enumerate(frame_rows(res))]
            logger.info("audited frames %d-%d: %d flagged", c0, c1 - 1, int(res.flagged.sum()))
        vol = audit_volumes(out, alpha=p.alpha, control=p.control) if is_volume_output(out) else None
        if vol:  # per plane and per brick (audit_volume/), bricks flagged at α over each volume's bricks
            storage.consolidate(out.path)
            logger.info("volume audit: %d of %d bricks flagged", len(vol["bricks_flagged"]), vol["bricks"])
    res, x, y = first
    if y.is_complex():  # k-space is shown as its magnitude
        y = y.abs()
    md_path = render_audit_report(res, report_dir, x_hat=x, y=y, max_samples=p.max_figures,
                                  title=f"Hallucination audit — {out.path.name}",
                                  sample_names=[f"frame {t}" for t in range(x.shape[0])])
    flagged_tiles = [(int(t), int(k)) for t, k in zip(*np.nonzero(tile_flags))]
    n_flag = sum(flags_frame)
    if p.artifacts:
        _publish(out, p, res, rows, md_path, report_dir, n_flag, flagged_tiles, settings_text(cfg))
    if n_flag:
        emit("ddiff.audit.flagged", out.path, {"frames_flagged": n_flag, "frames": n, "tiles_flagged": len(flagged_tiles),
                                               "flagged_frames": [t for t, b in enumerate(flags_frame) if b][:100],
                                               "report": abspath(md_path), "alpha": p.alpha})
    return {"report": str(md_path), "dataset": f"{out.path}/audit", "chi2_nu": chi, "p_value": pv,
            "frames_flagged": [t for t, b in enumerate(flags_frame) if b], "tiles_flagged": flagged_tiles,
            **({"volume": vol} if vol else {})}


def _publish(out, p: AuditParams, res, rows: list[dict], md_path: Path, report_dir: Path, n_flag: int,
             flagged_tiles: list, settings: str) -> None:
    """The audit in the Prefect UI: the per-frame table, the settings table, and a markdown artifact
    with the summary and the pictures (reconstruction, residual, window p, flag overlay) inline."""
    where = abspath(out.path)
    create_table_artifact(rows, key=artifact_key("audit-frames", out.path),
                          description=f"hallucination audit per frame of {where}: chi2_nu (expected mean ± sd under "
                                      "the noise model), z, p_misfit / p_overfit, flagged windows, tiles touching them")
    hp = out.manifest["config"].get("hyperparameters", {})
    settings_rows = [{"setting": k, "value": str(v)} for k, v in res.attrs().items()]
    settings_rows += [{"setting": "solver data step", "value": settings}]
    settings_rows += [{"setting": f"solver.{k}", "value": str(v)} for k, v in hp.items()]
    settings_rows += [{"setting": "uncertainty (seed spread)", "value": "not computed by the pipeline audit: one seed "
                       "per tile (see docs/audit.md §3 for ddiff.audit.uncertainty over K seeds)"}]
    create_table_artifact(settings_rows, key=artifact_key("audit-settings", out.path),
                          description=f"calibration and audit settings of {where}")
    md = [f"# Hallucination audit — `{where}`", "", summary_markdown(res), f"- {settings}",
          f"- frames flagged: **{n_flag} / {out.n_frames}**; tiles touching a flagged window: {len(flagged_tiles)}",
          f"- report: `{abspath(md_path)}`", f"- dataset: `{where}/audit`", ""]
    md += [f"- frame {t} tile {k}" for t, k in flagged_tiles[:20]]
    # the frames the report drew, in its order (flagged first, most significant first)
    order = sorted(range(int(res.flagged.shape[0])), key=lambda b: (not bool(res.flagged[b]), float(res.p_value[b])))
    pictures = [report_dir / f"audit_sample_{b}.png" for b in order]
    md += ["", "## Pictures", "", "Per frame: measurement, reconstruction, normalised residual (noise sd), −log₁₀ p of "
           "sliding windows, flagged regions over the reconstruction (flagged frames first).", ""]
    for q in pictures[: p.max_figures]:
        if q.is_file():
            md += [f"### frame {q.stem.rsplit('_', 1)[-1]}", "", png_markdown(q, q.stem), ""]
    md += ["### χ²_ν against its expected density", "", png_markdown(report_dir / "audit_chi2_hist.png", "chi2 histogram")]
    create_markdown_artifact("\n".join(md), key=artifact_key("audit", out.path),
                             description=f"hallucination audit: {n_flag}/{out.n_frames} frames flagged — {where}")
