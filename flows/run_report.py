"""What a reconstruction run publishes in the Prefect UI besides its progress bar: the run summary
(:func:`summary_markdown`, with :func:`frame_table`, :func:`chi2_flags`), the per-frame fit
table (one χ²_ν definition, shared with the audit), and — when it fails or is interrupted — a
failure summary, the progress artifact marked as failed, and a ``ddiff.run.failed`` event; and
what a parent run (``process_stack``, ``ddiff demo``) publishes: the verdict (:func:`publish_verdict`).

Room: ``flows`` — prefect artifacts, ``storage`` (ledger counts), :mod:`flows.ui`,
:class:`flows.audit_regions.RegionAudit` / :func:`flows.audit.audit_frames` (the frame statistics). No
torch math here.

**χ²_ν, one definition.** The number reported for a *frame* — in this summary, in the audit table
and in ``ddiff demo`` — is the audit's: the assembled reconstruction ``x̂`` re-measured on the whole
frame, ``χ²_ν = ‖y − A(x̂)‖² / (m σ²)`` over the measurement entries at least the operator's halo
away from the frame edge (there ``A(x̂)`` depends on the scene outside the frame, which ``x̂`` does
not contain). The solver's own per-*tile* value (``diagnostics/chi2_nu``, what the self-calibrated
data step drives to τ) is computed on each tile's blend window against its reflect-padded read
window, border included; it is shown as a separate column and can differ by a few percent
(``docs/audit.md`` §1, "Frame and tile χ²_ν").
"""
from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

import numpy as np

import storage

from .ui import abspath, artifact_key, interrupted, report_failure

if TYPE_CHECKING:
    from .params import ReconstructParams

__all__ = ["frame_fit_rows", "publish_fit_table", "publish_failure", "resume_command", "publish_verdict", "frame_table",
           "chi2_flags", "noise_text", "settings_text", "summary_markdown", "prior_only_tiles", "prior_only_frames"]


def _finite(fn, a) -> float | None:
    """``fn`` over the finite values of ``a``; None when there are none (a tile with no measurement has
    no χ²_ν — said as "—", never as a number or a numpy warning)."""
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(fn(a)) if a.size else None


def prior_only_tiles(out) -> np.ndarray:
    """``(N, n_tiles)`` bool: tiles whose blend window held fewer than ``MIN_MEASUREMENTS`` valid
    measured values (the solver's ``dof``) — reconstructed from the prior alone. (Outputs that record
    no per-tile ``dof`` — NaN, whole frames — are judged by the audit's count instead.)"""
    from .audit_report import MIN_MEASUREMENTS

    ds = out.open_diagnostics()
    if "dof" not in ds:
        return np.zeros((out.n_frames, out.plan.n_tiles), bool)
    dof = np.asarray(ds["dof"].values, dtype=np.float64)
    return np.isfinite(dof) & (dof < MIN_MEASUREMENTS)


def prior_only_result(out, logger=None) -> dict:
    """``{"frames_prior_only": [...], "tiles_prior_only": n}`` for a run's result (warned in its log)."""
    from .audit_report import PRIOR_ONLY

    frames, tiles = prior_only_frames(out), int(prior_only_tiles(out).sum())
    if (frames or tiles) and logger is not None:
        logger.warning("%s: frames %s, %d tile(s) — flagged by the audit", PRIOR_ONLY, frames[:50], tiles)
    return {"frames_prior_only": frames, "tiles_prior_only": tiles}


def prior_only_text(r: dict) -> str:
    """The console line for a result (``ddiff reconstruct`` / ``ddiff audit``) with prior-only frames or tiles."""
    from .audit_report import MIN_MEASUREMENTS, PRIOR_ONLY

    tiles = f", {r['tiles_prior_only']} tile(s)" if r.get("tiles_prior_only") else ""
    return (f"[yellow]{PRIOR_ONLY}[/yellow]: frames {r.get('frames_prior_only', [])}{tiles} had fewer than "
            f"{MIN_MEASUREMENTS} valid measured values — their content is the prior's invention (flagged by the audit)")


def kept_and_resume(p) -> str:
    """What a reconstruction that stops now keeps, and the command that resumes it (one line)."""
    try:
        out = storage.open_output(p.output_store)
        done = f"{out.ledger.count('solved')} of {out.n_frames * out.plan.n_tiles} tiles are solved and kept in {out.path}"
    except Exception:  # noqa: BLE001 - not created yet
        done = f"nothing was written to {p.output_store} yet"
    return f"{done}; start the server again (or unset PREFECT_API_URL) and resume with: {resume_command(p)[-1]}"


def prior_only_frames(out) -> list[int]:
    """Frames whose tiles together held fewer than ``MIN_MEASUREMENTS`` valid measured values."""
    from .audit_report import MIN_MEASUREMENTS

    ds = out.open_diagnostics()
    if "dof" not in ds:
        return []
    dof = np.asarray(ds["dof"].values, dtype=np.float64)
    rec = np.isfinite(dof).all(axis=1)  # every tile recorded its count
    return [int(t) for t in np.flatnonzero(rec & (np.where(rec[:, None], dof, 0).sum(axis=1) < MIN_MEASUREMENTS))]


def frame_fit_rows(output_store) -> list[dict]:
    """Per frame of a finished output: the frame χ²_ν (the audit's definition), its expectation, z, p,
    and the range of the solver's tile χ²_ν."""
    from .audit import audit_frames, frames_per_chunk
    from .audit_regions import RegionAudit
    from .audit_report import frame_rows

    out = storage.open_output(output_store)
    tile_chi = np.asarray(out.open_diagnostics()["chi2_nu"].values, dtype=np.float64)
    rows, step = [], frames_per_chunk(out)
    whole = storage.is_frame_output(out) or "volume" in out.manifest["config"]  # z-stacks: whole volumes
    ra = None if whole else RegionAudit(out, storage.open_input(out))
    for c0 in range(0, out.n_frames, step):
        c1 = min(out.n_frames, c0 + step)
        # tiled outputs: block by block (no frame in memory); whole-frame outputs and volumes: a chunk of frames
        res = ra.result([ra.frame(t) for t in range(c0, c1)]) if ra is not None else audit_frames(out.path, c0, c1)[0]
        for t, r in zip(range(c0, c1), frame_rows(res)):
            lo, hi = _finite(np.min, tile_chi[t]), _finite(np.max, tile_chi[t])
            rows.append({"frame": t, "chi2_nu": r["chi2_nu"], "expected": r["expected"], "z": r["z"],
                         "p_misfit": r["p_misfit"], "tile_chi2_nu_min": None if lo is None else round(lo, 4),
                         "tile_chi2_nu_max": None if hi is None else round(hi, 4),
                         "measurements": r["measurements"], "note": r["note"]})
    return rows


def publish_fit_table(output_store, rows: list[dict]) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(rows, key=artifact_key("reconstruct-frames", output_store),
                          description=f"per-frame fit of {abspath(output_store)}: chi2_nu = the audit's frame χ²_ν "
                                      "(assembled frame, halo border excluded); tile_chi2_nu_* = the solver's own "
                                      "per-tile fit (blend windows, border included)")


def resume_command(p) -> list[str]:
    """The commands that resume the run of :class:`flows.params.ReconstructParams` ``p``: the same
    ``ddiff reconstruct`` command line, and the deployment run when it came from one."""
    args = ["ddiff", "reconstruct", abspath(p.input_store), abspath(p.output_store)]
    try:
        own = storage.measurement_of(p.input_store) is not None  # a measurement store brings its operator
    except Exception:  # noqa: BLE001
        own = False
    if not own:
        args += ["--operator", p.operator.name]
        for k, v in (p.operator.params or {}).items():
            args += ["--op-param", f"{k}={v}"]
    args += ["--noise", p.noise.kind]  # the parameters as given (those left out are re-estimated identically)
    for name in ("sigma", "gain", "offset", "read_noise"):
        if getattr(p.noise, name) is not None:
            args += ["--" + name.replace("_", "-"), f"{getattr(p.noise, name):g}"]
    args += ["--prior", p.prior, "--solver", p.solver.name]
    if p.solver.steps is not None:
        args += ["--steps", str(p.solver.steps)]
    if p.solver.settings != "auto":
        args += ["--hp", p.solver.settings]
    for k, v in p.solver.hyperparameters.items():
        args += ["--hp", f"{k}={v}"]
    ex = p.execution
    if p.solver.seeds > 1:
        args += ["--seeds", str(p.solver.seeds)]
    args += ["--tile", str(p.tile), "--overlap", str(p.overlap), "--seed", str(p.seed), "--batch-size",
             str(ex.batch_size), "--dtype", ex.dtype, "--device", ex.device]
    if ex.torch_threads is not None:  # part of the configuration: a resume with another count is refused
        args += ["--threads", str(ex.torch_threads)]
    for name in ("brick_z", "overlap_z"):  # volumes: the z plan is part of the configuration
        if getattr(p, name) != type(p).model_fields[name].default:
            args += ["--" + name.replace("_", "-"), str(getattr(p, name))]
    cmds = [shlex.join(args)]
    line = deployment_run_command()
    if line:
        cmds.insert(0, line)
    return cmds


def deployment_run_command() -> str | None:
    """``prefect deployment run '<flow>/<deployment>'`` for the deployment this run (or its parent)
    came from — the flow is the *deployment's* (e.g. ``process-stack``), not this sub-flow's."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment

    try:
        if not deployment.id:
            return None
        with get_client(sync_client=True) as client:
            dep = client.read_deployment(deployment.id)
            flow_name = client.read_flow(dep.flow_id).name
        return f"prefect deployment run '{flow_name}/{dep.name}'   # same parameters"
    except Exception:  # noqa: BLE001 - a resume hint never fails a run
        return None


def publish_failure(p, exc: BaseException, progress_id=None, flow: str = "reconstruct-stack") -> None:
    """After a failed or interrupted reconstruction: mark the progress artifact, publish the failure
    summary under the run's summary key (the latest summary of that output says it failed), emit
    ``ddiff.run.failed``. Never raises (the run's own error is what the caller re-raises)."""
    from prefect.artifacts import update_progress_artifact

    try:
        out = storage.open_output(p.output_store)
        solved, total = out.ledger.count("solved"), out.n_frames * out.plan.n_tiles
    except Exception:  # noqa: BLE001 - the output was never created
        solved, total = 0, None
    where = abspath(p.output_store)
    if total is None:
        safe = [f"nothing was written to `{where}` (the run stopped before creating it)",
                f"the input `{abspath(p.input_store)}` is only ever read"]
    else:
        safe = [f"{solved} of {total} tiles are solved and recorded in the ledger of `{where}`; a rerun skips them "
                "and gives bit-identical output", f"the input `{abspath(p.input_store)}` is only ever read",
                "the reconstruction image is valid only once a run finishes (the COMPLETE marker); do not read "
                "it before"]
    word = "INTERRUPTED" if interrupted(exc) else "FAILED"
    try:
        if progress_id is not None and total:
            update_progress_artifact(progress_id, progress=100.0 * solved / total,
                                     description=f"{word} at {solved}/{total} tiles ({type(exc).__name__}) — "
                                                 "see the reconstruct summary")
    except Exception:  # noqa: BLE001
        pass
    report_failure(flow, p.output_store, exc, safe, resume_command(p), key=artifact_key("reconstruct-summary", p.output_store),
                   payload={"tiles_solved": solved, "tiles_total": total, "input": abspath(p.input_store)})


def _run_link(state) -> str:
    """A markdown link to the flow run of ``state`` (the UI's address when known, else a relative one)."""
    from prefect.utilities.urls import url_for

    run_id = state.state_details.flow_run_id
    try:
        url = url_for("flow-run", obj_id=run_id)
    except Exception:  # noqa: BLE001
        url = None
    return url or f"/runs/flow-run/{run_id}"


def publish_verdict(output_store, rec: dict, aud: dict, states: dict, alpha: float) -> str:
    """The parent run's answer to "can I trust last night's run?": a markdown artifact on the
    parent (``process-…``/``demo-…``) with the verdict, the per-frame audit table and links to the
    child runs (``states``: ``{"reconstruct": State, "audit": State, ...}``). Returns the verdict."""
    from prefect.artifacts import create_markdown_artifact

    from .audit_report import PRIOR_ONLY

    n, flagged = rec["n_frames"], aud["frames_flagged"]
    none = aud.get("frames_prior_only") or []
    chi = np.asarray(aud["chi2_nu"], dtype=np.float64)
    misfit = [t for t in flagged if t not in none]
    parts = ([f"{len(misfit)} of {n} frames contradict their measurements somewhere"] if misfit else []) + (
        [f"{len(none)} of {n} frames have {PRIOR_ONLY}"] if none else [])
    verdict = "OK: no frame contradicts its measurements" if not flagged else "LOOK: " + "; ".join(parts)
    lines = [f"# {verdict}", "", f"- output: `{abspath(output_store)}`",
             f"- reconstruction: complete, {n} frames, {rec['solved']} {rec.get('unit', 'tiles')} solved now, {rec['skipped']} reused; "
             f"wall {rec['wall_seconds']:.1f}s (solver {rec['solver_seconds']:.1f}s)",
             f"- audit (α = {alpha:g} per frame): frames flagged {flagged or 'none'}; tiles touching a flagged window: "
             f"{len(aud['tiles_flagged'])}; frame χ²_ν median {np.median(chi):.4f}, range {chi.min():.4f} – {chi.max():.4f}",
             f"- audit report: `{abspath(aud['report'])}`", "",
             "Child runs (their artifacts hold the tables and pictures): "
             + " · ".join(f"[{k}]({_run_link(s)})" for k, s in states.items()), "",
             "| frame | χ²_ν (frame) | p (misfit) | flagged |", "|---|---|---|---|"]
    for t in range(min(n, 200)):
        flag = f"**{PRIOR_ONLY}**" if t in none else ("**yes**" if t in flagged else "no")
        lines.append(f"| {t} | {chi[t]:.4f} | {float(aud['p_value'][t]):.3g} | {flag} |")
    create_markdown_artifact("\n".join(lines), key=artifact_key("verdict", output_store),
                             description=f"{verdict} — {abspath(output_store)}")
    return verdict


# --- the run summary (markdown artifact) of a reconstruction -------------------------------------

def noise_text(config: dict) -> str:
    """One line: the run's noise model in data units, and where its parameters came from."""
    n = config["noise"]
    est = config.get("noise_estimate")
    if n["kind"] == "gaussian":  # measurement stores (whole frames) say their own units
        s = f"Gaussian σ = {n['sigma']:.4g} " + ("ADU" if not config.get("noise_units") else f"({config['noise_units']})")
    else:
        s = f"camera gain {n['gain']:.4g} e⁻/ADU, offset {n['offset']:.4g} ADU"
        s += f", read noise {n['read_noise']:.4g} e⁻" if n.get("read_noise") is not None else " (pure Poisson)"
    if est:
        fixed = f"; given: {', '.join(est['fixed'])}" if est.get("fixed") else ""
        s += f" — estimated from the data ({est['summary']}{fixed})"
    return s



def frame_table(out: storage.OutputStore) -> list[dict]:
    """Per-frame diagnostics from the output's diagnostics dataset (small: one row per frame)."""
    ds = out.open_diagnostics()
    chi = np.asarray(ds["chi2_nu"].values, dtype=np.float64)
    sec = np.asarray(ds["seconds"].values, dtype=np.float64)
    rows = []
    for t in range(chi.shape[0]):
        rows.append({"frame": t, "chi2_mean": _finite(np.mean, chi[t]), "chi2_max": _finite(np.max, chi[t]),
                     "seconds": float(np.nansum(sec[t]))})
    return rows


def chi2_flags(out: storage.OutputStore, alpha: float = 0.01) -> list[tuple[int, int, float, float]]:
    """Tiles whose χ²_ν is implausible under Gaussian noise: exact χ²_m upper-tail ``p < alpha``
    (m = valid values in the tile's blend window; for photon counts the Gaussian reference is an
    approximation — the audit's tests are exact). Returns ``(frame, tile, chi2_nu, p)``."""
    import torch

    from ddiff.audit import scaled_chi2_sf

    ds = out.open_diagnostics()
    chi = np.asarray(ds["chi2_nu"].values, dtype=np.float64)
    C = out.channels
    m = np.array([C * t.blend_shape[0] * t.blend_shape[1] for t in out.plan], dtype=np.float64)
    m = np.broadcast_to(m, chi.shape).copy()
    if "dof" in ds:  # valid measurements per tile (masked entries do not count)
        m = np.where(np.isfinite(ds["dof"].values), ds["dof"].values, m)
    S = torch.from_numpy(chi * m)
    mm = torch.from_numpy(m)
    p = scaled_chi2_sf(S, mm, 2 * mm, 8 * mm).numpy()
    return [(int(t), int(k), float(chi[t, k]), float(p[t, k])) for t, k in zip(*np.nonzero(p < alpha))]


def settings_text(config: dict) -> str:
    """One line saying how the solver chose its data step (for summaries and the audit)."""
    hp = config.get("hyperparameters", {})
    if hp.get("x_update") == "discrepancy":
        return (f"data step: self-calibrated — every tile's x-update stops where χ²_ν = τ = {hp.get('tau', 1.0):g} "
                f"(discrepancy principle; {hp.get('steps')} steps, noising `{hp.get('noising')}`); χ²_ν near 1 is "
                "by construction, so read the audit's regional tests, not the frame χ²_ν, for structure left unexplained")
    if hp.get("x_update") == "gradient":
        return f"data step: fixed step sizes γ₀ = {hp.get('gamma0')} (a = {hp.get('a')}, b = {hp.get('b')}; the paper's values)"
    return f"solver `{config.get('solver')}` with its own data step"


def _prior_only_lines(out: storage.OutputStore, fit: list[dict] | None) -> list[str]:
    """The frames and tiles reconstructed from the prior alone (no, or too few, valid measurements)."""
    from .audit_report import MIN_MEASUREMENTS, PRIOR_ONLY

    frames = sorted({r["frame"] for r in fit or [] if r.get("note")} | set(prior_only_frames(out)))
    tiles = prior_only_tiles(out)
    if not frames and not tiles.any():
        return []
    return ["", f"**{PRIOR_ONLY}** — frames {frames[:50] or 'none'}; {int(tiles.sum())} tile(s) "
                f"{[(int(t), int(k)) for t, k in zip(*np.nonzero(tiles))][:20]}: fewer than {MIN_MEASUREMENTS} valid "
                "measured values, so their content is the prior's invention (flagged by `ddiff audit`)"]


def _volume_lines(config: dict) -> list[str]:
    """A volume run: how its z axis was cut into bricks (flows.bricks), before the frame (= plane) table."""
    if "volume" not in config:
        return []
    z = config["volume"]["zplan"]
    return [f"- volume: solved as bricks by `{config['solver']}` — {z['brick']} planes per brick core, fitting the "
            f"measurements of {z['overlap']} more planes each side, with {z['halo']} planes of axial context "
            f"(halo_z); frames below are the planes (frame = t·Z + z); per-brick statistics: `ddiff audit` "
            "(`audit_volume/`)", ""]


def summary_markdown(p: ReconstructParams, out: storage.OutputStore, result: dict, rows: list[dict],
                     flags: list, fit: list[dict] | None = None) -> str:
    """The run summary (markdown). ``rows``: :func:`frame_table` (the solver's tile χ²_ν); ``fit``:
    :func:`flows.run_report.frame_fit_rows` (the frame χ²_ν, the audit's definition)."""
    fit_by = {r["frame"]: r for r in fit or []}
    lines = ["# ddiff reconstruction", "",
             f"- input: `{abspath(p.input_store)}`", f"- output: `{abspath(out.path)}` (OME-NGFF image at the root, {out.levels} pyramid levels, axes "
             f"`{out.layout.axes}`; diagnostics: `diagnostics/`)",
             f"- operator: `{p.operator.name}` {p.operator.params or ''}; noise: {noise_text(out.manifest['config'])}",
             f"- prior: `{p.prior}`; solver: `{p.solver.name}` {out.manifest['config']['hyperparameters']}",
             f"- {settings_text(out.manifest['config'])}",
             (f"- whole frames: {out.n_frames} (measurements are solved frame by frame, not tiled)"
              if result.get("unit") == "frames" else
              f"- tiles: {out.plan.n_tiles}/frame × {out.n_frames} frames (tile {list(out.plan.tile)}, overlap "
              f"{out.plan.overlap}, halo {out.plan.halo})") + f"; batch {p.execution.batch_size}; device `{p.execution.device}`",
             f"- this run: {result['solved']} {result.get('unit', 'tiles')} solved, {result['skipped']} already done (resume); "
             f"wall {result['wall_seconds']:.1f}s, solver {result['solver_seconds']:.1f}s", "",
             *_volume_lines(out.manifest["config"]),
             "| frame | χ²_ν (frame) | expected | p (misfit) | tile χ²_ν mean | tile χ²_ν max | solver s |",
             "|---|---|---|---|---|---|---|"]
    def num(v):
        return "—" if v is None else f"{v:.4f}"

    for r in rows[:200]:
        f = fit_by.get(r["frame"], {})
        frame_chi = (f"**{f['note']}**" if f.get("note") else f"{f['chi2_nu']:.4f}") if f else "—"
        lines.append(f"| {r['frame']} | {frame_chi} | {f.get('expected', '—')} | {f.get('p_misfit', '—')} | "
                     f"{num(r['chi2_mean'])} | {num(r['chi2_max'])} | {r['seconds']:.2f} |")
    lines += ["", "*χ²_ν (frame)* is the number the audit and `ddiff demo` report: the assembled frame re-measured, "
              "entries within the operator's halo of the frame edge left out. *tile χ²_ν* is each tile's own fit "
              "(blend window, against its reflect-padded read window, edge included) — what the self-calibrated data "
              "step drives to τ; the two differ by a few percent (docs/audit.md §1).",
              *_prior_only_lines(out, fit), "", f"**Tiles with implausible tile χ²_ν (p < 0.01): {len(flags)}**", ""]
    for t, k, c, pv in flags[:50]:
        lines.append(f"- frame {t} tile {k}: χ²_ν = {c:.3f} (p = {pv:.2g})")
    lines += ["", "Run `ddiff audit` (flow `audit-reconstruction`) for the regional hallucination audit."]
    return "\n".join(lines)
