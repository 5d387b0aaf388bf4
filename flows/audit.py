"""``audit_reconstruction``: the hallucination audit of a finished reconstruction, per frame and tile.

Room: ``flows`` — prefect, ``ddiff.audit`` (the statistics), ``flows.audit_report`` (the report),
``storage`` (reading the stores, writing the ``audit/`` dataset and the labels).

Tiled outputs (local operators) are audited region by region (:class:`flows.audit_regions.RegionAudit`:
no step holds a frame): the assembled reconstruction is re-measured with the run's operator
(rebuilt from the output manifest) block by block and tested against the measurement as
:func:`ddiff.audit.audit` does on a whole frame with ``exclude_border = halo`` (near a frame's edge
``A`` sees its boundary extension, not the scene the instrument saw) — the same numbers. Whole-frame
outputs (global operators) are audited a chunk of frames at a time. Written into the output store:
the group ``audit/`` (:mod:`storage.audit`, xarray): per frame ``chi2_nu``, ``z``, ``p_value``,
``p_value_low``, ``frame_flag``, ``n_flagged_windows``; per (frame, tile) ``tile_flagged`` (a flagged
window touches the tile's core); maps ``flag_map`` and ``window_p`` (output grid, physical
``y``/``x`` coordinates; frames carry their ``t``/``z``); the flag map again as the OME-NGFF label
image ``labels/audit_flags``; and, for a run with ``--seeds K``, ``labels/prior_filled`` from
``uncertainty/prior_filled`` (:mod:`storage.uncertainty`) — napari shows both over the image.
Without seeds the audit says in one line that no uncertainty was computed and how to get it.
The markdown/PNG report (``flows.audit_report``) is rendered for the first frames (at most
``CHUNK``, at most ``REPORT_CHUNK_BYTES`` of them) when a frame is at most ``REPORT_BYTES``, else
for every frame with numbers only; a markdown artifact summarises it, every frame in its table.
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
from .audit_bounds import bounds_audit
from .audit_regions import RegionAudit
from .bricks import is_volume_output
from .audit_report import PRIOR_ONLY, frame_rows, render_audit_report, summary_markdown, unmeasured
from .checks import check_audit
from .noise import noise_model
from .params import AuditParams
from .run_report import prior_only_tiles
from .ui import abspath, artifact_key, emit, flow_run_namer, png_markdown, report_failure, run_tags, tag_this_run
from .volume_audit import audit_planes, audit_volumes, volumes_chunk

__all__ = ["audit_reconstruction", "audit_frames", "frames_per_chunk", "CHUNK"]

CHUNK = 16  # frames audited (and held in memory) at once, at most ...
CHUNK_BYTES = 256 << 20  # ... and fewer when their float32 reconstructions pass this (big frames: one at a time)
REPORT_BYTES = 16 << 20  # the report draws frames (a whole-frame audit of a few) up to this size; larger: numbers only
REPORT_CHUNK_BYTES = 64 << 20  # ... and as many of the first frames as fit in this (at most CHUNK)


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
    from .run_report import settings_text

    logger = get_run_logger()
    check_audit(p.output_store)  # complete, and its input is still the one it was made from
    out = storage.open_output(p.output_store)
    cfg = out.manifest["config"]
    tag_this_run(run_tags(operator=cfg["operator"]["name"], solver=cfg.get("solver"), prior=cfg.get("prior")))
    report_dir = Path(p.report_dir) if p.report_dir else out.path.with_name(out.path.name + ".audit")
    n = out.n_frames
    with storage.RunLock(out.path) as lock:
        vol = None
        if storage.is_frame_output(out) or is_volume_output(out):  # a global operator, or whole z-stacks
            (res, tile_flags, first), windows_none = _audit_whole_frames(out, p, lock.run_id, logger), {}
        else:
            res, tile_flags, first, windows_none = _audit_regions(out, p, lock.run_id, logger)
        if is_volume_output(out):  # per plane and per brick (audit_volume/), bricks flagged over each volume's
            vol = audit_volumes(out, alpha=p.alpha, control=p.control)
            storage.consolidate(out.path)
            logger.info("volume audit: %d of %d bricks flagged", len(vol["bricks_flagged"]), vol["bricks"])
        unc = _prior_filled_label(out, lock.run_id)
        bnd = bounds_audit(out, p.max_width, lock.run_id, report_dir)
    logger.info(unc["line"])
    if bnd is not None:
        logger.info(bnd["line"])
        unc = {**unc, "line": unc["line"] + "\n\n" + bnd["line"]}
    chi, pv = [float(v) for v in res.chi2_nu], [float(v) for v in res.p_value]
    none = unmeasured(res)  # no (or too few) valid measurements: the prior's invention, never "fine"
    flags_frame = [bool(v) or b in none for b, v in enumerate(res.flagged)]
    if none:
        logger.warning("%s: frames %s", PRIOR_ONLY, none[:50])
    rows = [{"frame": b, **{k: v for k, v in r.items() if k != "sample"}, "tiles_flagged": int(tile_flags[b].sum()),
             "flagged": flags_frame[b], **({} if bnd is None else {k: bnd["frames"][b][k] for k in
                                                                    ("mean_width", "unresolved_fraction")})}
            for b, r in enumerate(frame_rows(res))]
    if first is None:  # frames too large to draw: the report has the numbers, napari shows the maps
        pics, x, y = res, None, None
    else:
        pics, x, y = first
        if y.is_complex():  # k-space is shown as its magnitude
            y = y.abs()
    md_path = render_audit_report(pics, report_dir, x_hat=x, y=y, max_samples=p.max_figures if x is not None else 0,
                                  title=f"Hallucination audit — {out.path.name}",
                                  sample_names=[f"frame {t}" for t in range(int(pics.tile_flag.shape[0]))])
    with open(md_path, "a", encoding="utf-8") as fh:
        fh.write(f"\n## Uncertainty (seed spread)\n\n{unc['line']}\n")
        if bnd is not None:
            fh.write("\n| frame | mean bound width (image units) | unresolved fraction |\n|---|---|---|\n"
                     + "".join(f"| {r['frame']} | {r['mean_width']:.4g} | {r['unresolved_fraction']:.4f} |\n"
                               for r in bnd["frames"]))
    flagged_tiles = [(int(t), int(k)) for t, k in zip(*np.nonzero(tile_flags))]
    n_flag = sum(flags_frame)
    if p.artifacts:
        _publish(out, p, res, rows, md_path, report_dir, n_flag, flagged_tiles, settings_text(cfg), unc["line"])
    if n_flag:
        emit("ddiff.audit.flagged", out.path, {"frames_flagged": n_flag, "frames": n, "tiles_flagged": len(flagged_tiles),
                                               "flagged_frames": [t for t, b in enumerate(flags_frame) if b][:100],
                                               "report": abspath(md_path), "alpha": p.alpha})
    return {"report": str(md_path), "dataset": f"{out.path}/audit", "chi2_nu": chi, "p_value": pv,
            "frames_flagged": [t for t, b in enumerate(flags_frame) if b], "tiles_flagged": flagged_tiles,
            "frames_prior_only": none, "windows_prior_only": windows_none,
            "prior_filled_fraction": unc["fraction"], "uncertainty": unc["line"], **({"volume": vol} if vol else {}),
            **({} if bnd is None else {"bounds": {k: v for k, v in bnd.items() if k != "png"}})}


def _audit_regions(out: storage.OutputStore, p: AuditParams, run_id: str, logger):
    """The audit of a tiled output block by block (:class:`flows.audit_regions.RegionAudit`): the
    ``audit/`` dataset and ``labels/audit_flags`` are written region by region. Returns the frames'
    :class:`AuditResult` (no per-pixel maps), the tile flags and, for frames small enough to draw,
    the whole-frame audit of the first frames for the report's pictures (else None)."""
    stack = storage.open_input(out)
    ra = RegionAudit(out, stack, alpha=p.alpha, window=p.window, control=p.control)
    n = out.n_frames
    storage.create_audit(out, maps=True)
    tile_flags, frames = np.zeros((n, out.plan.n_tiles), bool), []
    no_data, windows_none = prior_only_tiles(out), {}
    for t in range(n):
        fa = ra.frame(t, on_window_p=lambda y0, x0, a, t=t: storage.write_audit_block(out, "window_p", t, y0, x0, a))
        for y0, x0, fm in ra.flag_blocks(fa):
            storage.write_audit_block(out, "flag_map", t, y0, x0, fm)
            storage.write_flag_label(out, "audit_flags", t, fm, run_id=run_id, origin=(y0, x0), pyramid=False)
        storage.label_pyramid(out, "audit_flags", t, run_id=run_id)
        if fa.cell_none.any():  # windows without a valid measurement: labelled, never shown as "fine"
            for y0, x0, fm in ra.flag_blocks(fa, fa.cell_none):
                storage.write_flag_label(out, "prior_only", t, fm, run_id=run_id, origin=(y0, x0), pyramid=False)
            storage.label_pyramid(out, "prior_only", t, run_id=run_id)
            windows_none[t] = int(fa.cell_none.sum())
        tile_flags[t] = ra.tile_flags(fa) | no_data[t]  # a tile with no valid measurement is flagged too
        frames.append(fa)
        r = ra.result([fa])
        _write_frame(out, t, r, 0, tile_flags[t])
        logger.info("audited frame %d/%d: chi2_nu %.4f, %d flagged windows", t + 1, n, float(r.chi2_nu[0]),
                    int(fa.cell_flag.sum()))
    res = ra.result(frames)
    storage.finish_audit(out, res.attrs())
    _, C, Ho, Wo = out.recon().shape
    first = None
    nbytes = 4 * C * Ho * Wo
    if nbytes <= REPORT_BYTES:  # small frames: the report draws the first ones (a whole-frame audit of those)
        k = min(n, CHUNK, max(1, REPORT_CHUNK_BYTES // nbytes))
        r0, x, y, _ = audit_frames(out.path, 0, k, alpha=p.alpha, window=p.window, control=p.control)
        first = (r0, x, y)
    if windows_none:
        logger.warning("%s: %d audit windows (labels/prior_only) in frames %s", PRIOR_ONLY, sum(windows_none.values()),
                       sorted(windows_none)[:50])
    return res, tile_flags, first, windows_none


def _audit_whole_frames(out: storage.OutputStore, p: AuditParams, run_id: str, logger):
    """The audit of a whole-frame output (a global operator), or of whole z-stacks (a volume run: the
    3-D re-measurement, :mod:`flows.volume_audit`, with its window maps and flag label), a chunk at a time."""
    n, maps = out.n_frames, is_volume_output(out)
    storage.create_audit(out, maps=maps)
    tile_flags, results, first = np.zeros((n, out.plan.n_tiles), bool), [], None
    step = frames_per_chunk(out)
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        res, x, y, _ = audit_frames(out.path, c0, c1, alpha=p.alpha, window=p.window, control=p.control)
        if first is None:
            first = (res, x, y)
        if maps:  # a tile is flagged when a flagged window touches its core (as the region audit)
            fm = res.flag_map.cpu().numpy()
            for b in range(c1 - c0):
                storage.write_audit_block(out, "flag_map", c0 + b, 0, 0, fm[b])
                storage.write_audit_block(out, "window_p", c0 + b, 0, 0, res.window_p[b].float().cpu().numpy())
                storage.write_flag_label(out, "audit_flags", c0 + b, fm[b], run_id=run_id)
                tile_flags[c0 + b] = [fm[b, y0:y1, x0:x1].any() for y0, y1, x0, x1 in (t.core for t in out.plan)]
        else:  # one tile per frame = the frame test (a frame without measurements flagged too)
            tile_flags[c0:c1, :] = (res.flagged.cpu().numpy() | np.isin(np.arange(c1 - c0), unmeasured(res)))[:, None]
        for b in range(c1 - c0):
            _write_frame(out, c0 + b, res, b, tile_flags[c0 + b])
        results.append(res)
        logger.info("audited frames %d-%d: %d flagged", c0, c1 - 1, int(res.flagged.sum()))
    storage.finish_audit(out, results[0].attrs())
    return _cat(results), tile_flags, first


def _write_frame(out: storage.OutputStore, frame: int, res, b: int, tile_flags: np.ndarray) -> None:
    """Sample ``b`` of an audit result as the numbers of ``frame`` in ``audit/``."""
    vals = {k: float(getattr(res, k)[b]) for k in ("chi2_nu", "z", "p_value", "p_value_low")}
    vals["frame_flag"] = bool(res.flagged[b]) or b in unmeasured(res)
    vals["n_flagged_windows"] = int(res.region_flag[b].sum()) if res.region_flag is not None else 0
    storage.write_audit_frame(out, frame, vals, tile_flags)


def _cat(results: list):
    """The per-frame numbers of several whole-frame audit results as one (for the table and report)."""
    if len(results) == 1:
        return results[0]
    import dataclasses

    first = results[0]
    kw = {}
    for fld in dataclasses.fields(first):
        v = getattr(first, fld.name)
        if isinstance(v, torch.Tensor) and v.ndim == 1:
            kw[fld.name] = torch.cat([getattr(r, fld.name) for r in results])
        elif isinstance(v, torch.Tensor):  # maps: not carried across chunks
            kw[fld.name] = None if fld.default is None else torch.empty(sum(int(r.tile_flag.shape[0]) for r in results), 0)
        else:
            kw[fld.name] = v
    return type(first)(**kw)


def _prior_filled_label(out: storage.OutputStore, run_id: str) -> dict:
    """``labels/prior_filled`` from ``uncertainty/prior_filled`` (> 0.5), core by core; or the line
    saying no uncertainty was computed and how to get it."""
    K = int(out.manifest["config"].get("seeds", 1) or 1)
    if storage.has_uncertainty(out) and K < 2:  # calibrated bounds of a one-seed run: no spread to label
        return {"fraction": None, "line": "seed spread: not computed (one seed); the calibrated bounds below use "
                                          "the operator's and the image's features only"}
    if not storage.has_uncertainty(out):
        return {"fraction": None, "line": "uncertainty: not computed (one seed per tile); rerun `ddiff reconstruct` "
                                          "with --seeds K (K >= 2, K x the solver cost) for the seed spread and "
                                          "the prior-filled label"}
    filled = total = 0
    whole = storage.is_frame_output(out)
    if whole:  # whole frames: one core, the image grid (the plan covers the measurements)
        cores = [(0, int(out.manifest["image_shape"][0]), 0, int(out.manifest["image_shape"][1]))]
    else:
        cores = [tile.core for tile in out.out_plan]
    p90 = []  # whole frames: the spread's upper decile per frame, from the maps read here
    for t in range(out.n_frames):
        for y0, y1, x0, x1 in cores:
            u = storage.read_uncertainty(out, t, slice(y0, y1), slice(x0, x1))
            pf = u["prior_filled"] > 0.5
            storage.write_flag_label(out, "prior_filled", t, pf, run_id=run_id, origin=(y0, x0), pyramid=False)
            filled, total = filled + int(pf.sum()), total + pf.size
            if whole:
                p90.append(float(np.nanquantile(u["spread"], 0.9)))
        storage.label_pyramid(out, "prior_filled", t, run_id=run_id)
    frac = filled / max(total, 1)
    line = (f"uncertainty from {K} seeds: {100 * frac:.2f} % of pixels prior-filled (seed spread > 0.1 model units "
            "where the data cannot tell the seeds apart) — labels/prior_filled, maps in uncertainty/; reported, not flagged")
    if whole:  # a global operator sees every pixel a little: the spread is what to read
        line += (f". Whole frames of a global operator: prior-filled marks only pixels the measurements do not see; "
                 f"what the prior decided shows in the seed spread (uncertainty/spread, p90 per frame "
                 f"{min(p90):.3g}–{max(p90):.3g} image units; docs/audit.md §3)")
    return {"fraction": frac, "line": line}


def _publish(out, p: AuditParams, res, rows: list[dict], md_path: Path, report_dir: Path, n_flag: int,
             flagged_tiles: list, settings: str, unc_line: str) -> None:
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
    settings_rows += [{"setting": "uncertainty (seed spread)", "value": unc_line}]
    create_table_artifact(settings_rows, key=artifact_key("audit-settings", out.path),
                          description=f"calibration and audit settings of {where}")
    md = [f"# Hallucination audit — `{where}`", "", summary_markdown(res), f"- {settings}",
          f"- frames flagged: **{n_flag} / {out.n_frames}**; tiles touching a flagged window: {len(flagged_tiles)}",
          f"- {unc_line}", f"- report: `{abspath(md_path)}`", f"- dataset: `{where}/audit`", ""]
    md += [f"- frame {t} tile {k}" for t, k in flagged_tiles[:20]]
    # the frames the report drew, in its order (flagged first, most significant first)
    order = sorted(range(int(res.flagged.shape[0])), key=lambda b: (not bool(res.flagged[b]), float(res.p_value[b])))
    pictures = [report_dir / f"audit_sample_{b}.png" for b in order]
    md += ["", "## Pictures", "", "Per frame: measurement, reconstruction, normalised residual (noise sd), −log₁₀ p of "
           "sliding windows, flagged regions over the reconstruction (flagged frames first).", ""]
    for q in [q for q in pictures if q.is_file()][: p.max_figures]:
        if q.is_file():
            md += [f"### frame {q.stem.rsplit('_', 1)[-1]}", "", png_markdown(q, q.stem), ""]
    md += ["### χ²_ν against its expected density", "", png_markdown(report_dir / "audit_chi2_hist.png", "chi2 histogram")]
    if (report_dir / "bounds_width_0.png").is_file():  # calibrated bounds: where they are wide
        md += ["", "### Calibrated bound width, frame 0", "", png_markdown(report_dir / "bounds_width_0.png", "width")]
    create_markdown_artifact("\n".join(md), key=artifact_key("audit", out.path),
                             description=f"hallucination audit: {n_flag}/{out.n_frames} frames flagged — {where}")
