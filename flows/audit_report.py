"""Hallucination-audit report: markdown + PNG figures from a ``ddiff.audit.AuditResult``.

Room: ``flows`` — may import everything (here: torch, numpy, matplotlib with the Agg canvas,
``ddiff.audit``). Figures are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg
canvas directly, so importing this module never changes the global pyplot backend.

``render_audit_report(result, out_dir, x_hat=..., y=..., unc=...)`` writes into ``out_dir``:

* ``audit_report.md`` — settings, a summary (tiles and regions flagged at the chosen false-alarm
  rate), a per-sample table (χ²_ν, expected 1 ± √(2/m), z, p, flags), the figures and how to
  read them (``docs/audit.md``);
* ``audit_sample_<b>.png`` — per sample: measurement, reconstruction, signed normalised residual
  on the measurement grid, sliding-window −log₁₀ p on the image grid, flagged regions overlaid on
  the reconstruction, and (when ``unc`` is given) the seed spread with the prior-filled area;
* ``audit_chi2_hist.png`` — histogram of χ²_ν over samples against its expected density under the
  noise model, and the histogram of the disjoint-window p-values (flat under the null).

:func:`summary_markdown` returns the short summary alone (for a Prefect markdown artifact).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ddiff.audit import AuditResult, UncertaintyResult, scaled_chi2_pdf

__all__ = ["render_audit_report", "summary_markdown", "frame_rows", "MIN_MEASUREMENTS", "PRIOR_ONLY", "prior_only",
           "unmeasured"]

#: A frame or tile with fewer valid measured values than this is reported as invented, never as fine:
#: its χ² test has (next to) no degrees of freedom, so a fit and a pure prior draw look the same.
MIN_MEASUREMENTS = 16
PRIOR_ONLY = "no measurements: prior only"


def prior_only(dof) -> bool:
    """Whether a frame/tile with ``dof`` valid measured values is prior only (< :data:`MIN_MEASUREMENTS`;
    NaN — nothing recorded — counts as none)."""
    return not float(dof) >= MIN_MEASUREMENTS


def unmeasured(result: AuditResult) -> list[int]:
    """The audited samples of ``result`` that are prior only (a volume's planes within halo_z of its
    ends are *not audited* — NaN statistics — which is another statement)."""
    return [b for b in range(int(result.tile_flag.shape[0]))
            if prior_only(result.dof[b]) and math.isfinite(float(result.chi2_nu[b]))]


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _image_for_display(img: torch.Tensor) -> tuple[np.ndarray, dict]:
    """``(C, H, W)`` → an array for ``imshow`` and its keywords.

    Three channels in model space ``[−1, 1]`` are shown as RGB; otherwise the first channel in gray
    scaled to its 1st–99th percentile (intensities, counts, complex magnitudes).
    """
    if img.is_complex():
        img = img.abs()
    a = _np(img.double())
    if a.ndim == 3 and a.shape[0] == 3 and a.min() >= -1.05 and a.max() <= 1.05:
        return np.clip((a.transpose(1, 2, 0) + 1) / 2, 0, 1), {}
    a = a[0] if a.ndim == 3 else a
    lo, hi = np.percentile(a, [1, 99]) if a.size else (0.0, 1.0)
    return a, {"cmap": "gray", "vmin": lo, "vmax": hi if hi > lo else lo + 1e-9}


def _signed_normalised_residual(result: AuditResult, b: int) -> np.ndarray | None:
    """``sign(r)·√d`` summed over channels as RMS (``(h, w)``), or ``None`` if not a 2-D grid."""
    d, r = result.deviance[b], result.residual[b]
    if d.ndim != 3:
        return None
    sign = torch.sign(r.real if r.is_complex() else r).double()
    signed = sign * d.clamp_min(0).sqrt()
    rms = signed.pow(2).mean(0).sqrt() * torch.sign(signed.sum(0))
    return _np(rms)


def frame_rows(result: AuditResult, names: list[str] | None = None) -> list[dict]:
    """One JSON-ready row per audited sample (frame): ``chi2_nu`` with its null ``expected`` mean ± sd,
    ``z``, ``p_misfit`` (upper tail), ``p_overfit`` (lower tail), ``tile_flag`` and
    ``flagged_windows`` — the per-sample table of the report and of the Prefect table artifact."""
    B = int(result.tile_flag.shape[0])
    names = names or [str(b) for b in range(B)]
    rows, nothing = [], set(unmeasured(result))
    for b in range(B):
        m = max(float(result.dof[b]), 1.0)
        none = b in nothing  # nothing to test against: said, and flagged by the flows
        rows.append({"sample": names[b], "chi2_nu": round(float(result.chi2_nu[b]), 4),
                     "expected": "—" if none else f"{float(result.stat_mean[b]) / m:.3f} ± {float(result.stat_std[b]) / m:.3f}",
                     "measurements": int(result.dof[b]) if math.isfinite(float(result.dof[b])) else 0,
                     "note": f"{PRIOR_ONLY} (< {MIN_MEASUREMENTS} valid values)" if none else "",
                     "z": round(float(result.z[b]), 2), "p_misfit": float(f"{float(result.p_value[b]):.3g}"),
                     "p_overfit": float(f"{float(result.p_value_low[b]):.3g}"), "tile_flag": bool(result.tile_flag[b]),
                     "flagged_windows": (int(result.region_flag[b].sum()) if result.region_flag is not None else None)})
    return rows


def summary_markdown(result: AuditResult, unc: UncertaintyResult | None = None) -> str:
    """The short summary (settings + counts) as markdown."""
    B = int(result.tile_flag.shape[0])
    n_tile = int(result.tile_flag.sum())
    lines = [
        f"**Hallucination audit** — {B} sample(s), noise `{result.noise}`, α = {result.alpha:g}",
        "",
        f"- tile test (χ² upper tail, p < α): **{n_tile} / {B}** flagged "
        f"(expected under the null ≈ {result.alpha * B:.1f})",
    ]
    if result.region_flag is not None:
        n_reg = int(result.region_any.sum())
        n_cells = int((~torch.isnan(result.region_p)).sum())
        ctrl = {"sidak": "family-wise error α per sample (Šidák over disjoint windows)",
                "bonferroni": "family-wise error ≤ α per sample (Bonferroni)",
                "bh": "false-discovery rate α per sample (Benjamini–Hochberg)"}[result.control]
        lines.append(
            f"- region test ({result.window} px windows, {ctrl}): **{n_reg} / {B}** samples with "
            f"flagged regions, {int(result.region_flag.sum())} of {n_cells} windows"
        )
    else:
        lines.append("- region test: not available (global operator or unrelated grids) — tile test only")
    none = unmeasured(result)
    if none:
        lines.append(f"- **{PRIOR_ONLY}: {len(none)} / {B}** sample(s) with fewer than {MIN_MEASUREMENTS} valid "
                     f"measured values — their content is the prior's invention, flagged: {none[:20]}")
    chi = _np(result.chi2_nu)
    chi = chi[np.isfinite(chi)] if np.isfinite(chi).any() else np.full(1, np.nan)  # NaN: not audited (dof 0)
    lines.append(f"- χ²_ν: median {np.median(chi):.4f}, range {chi.min():.4f} – {chi.max():.4f}; "
                 f"values well below 1 mean the reconstruction fits the noise")
    if unc is not None:
        frac = float(unc.prior_filled.double().mean())
        lines.append(f"- uncertainty from {unc.K} seeds: {100 * frac:.2f} % of pixels prior-filled "
                     f"(spread > {unc.spread_tol:g} where the data cannot tell the seeds apart) — "
                     "reported, not flagged")
    return "\n".join(lines) + "\n"


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=90, bbox_inches="tight")


def _chi2_figure(result: AuditResult, path: Path) -> None:
    has_regions = result.region_p is not None
    fig = Figure(figsize=(10 if has_regions else 5.5, 3.8))
    ax = fig.add_subplot(1, 2 if has_regions else 1, 1)
    keep = np.flatnonzero(np.isfinite(_np(result.chi2_nu)))  # samples with no observed entry are not audited
    if not len(keep):
        ax.text(0.5, 0.5, "no sample has observed entries", ha="center", va="center")
        return _save(fig, path)
    chi = _np(result.chi2_nu)[keep]
    m = result.dof.clamp_min(1)[keep]
    sd = _np(result.stat_std[keep] / m)
    lo = min(chi.min(), 1 - 5 * sd.max())
    hi = max(chi.max(), 1 + 5 * sd.max())
    bins = max(10, min(60, int(math.sqrt(len(chi))) * 2))
    ax.hist(chi, bins=bins, range=(lo, hi), density=True, alpha=0.6, label="observed χ²_ν")
    grid = torch.linspace(float(lo), float(hi), 400, dtype=torch.float64)
    # expected density of χ²_ν = S/m: average of the per-sample null densities (a mixture when
    # samples differ in m or in their Poisson means)
    dens = torch.zeros_like(grid)
    for b in range(len(chi)):
        mb = float(m[b])
        i = keep[b]
        dens += mb * scaled_chi2_pdf(grid * mb, result.stat_mean[i], result.stat_std[i] ** 2, result.stat_k3[i])
    ax.plot(_np(grid), _np(dens / len(chi)), "k-", lw=1.5, label="expected under the noise model")
    ax.axvline(1.0, color="gray", ls=":", lw=1)
    ax.set_xlabel("χ²_ν per sample")
    ax.set_ylabel("density")
    ax.set_title("tile statistic")
    ax.legend(fontsize=8)
    if has_regions:
        ax2 = fig.add_subplot(1, 2, 2)
        p = _np(result.region_p).ravel()
        p = p[~np.isnan(p)]
        ax2.hist(p, bins=20, range=(0, 1), density=True, alpha=0.6, label="window p-values")
        ax2.axhline(1.0, color="k", lw=1.5, label="null (uniform)")
        ax2.set_xlabel("p-value of disjoint windows")
        ax2.set_title("region statistic")
        ax2.legend(fontsize=8)
    _save(fig, path)


def _sample_figure(result: AuditResult, b: int, x_hat, y, unc, path: Path) -> None:
    panels = []
    if y is not None and y.ndim == 4:
        panels.append(("measurement y", "img", y[b]))
    if x_hat is not None:
        panels.append(("reconstruction x̂", "img", x_hat[b]))
    res = _signed_normalised_residual(result, b)
    if res is not None:
        panels.append(("normalised residual (noise sd)", "res", res))
    if result.window_p is not None:
        panels.append((f"−log₁₀ p, sliding {result.window} px windows", "logp", _np(result.window_p[b])))
    if result.flag_map is not None and x_hat is not None:
        panels.append((f"flagged regions (α = {result.alpha:g})", "flags", b))
    if unc is not None:
        panels.append(("seed spread; hatched: prior-filled", "unc", b))
    if not panels:
        return
    fig = Figure(figsize=(3.2 * len(panels), 3.4))
    for i, (title, kind, data) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if kind == "img":
            arr, kw = _image_for_display(data)
            ax.imshow(arr, interpolation="nearest", **kw)
        elif kind == "res":
            lim = max(3.0, float(np.nanpercentile(np.abs(data), 99.5)))
            im = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046)
        elif kind == "logp":
            lp = -np.log10(np.clip(data, 1e-300, 1))
            im = ax.imshow(lp, cmap="magma", vmin=0, vmax=max(4.0, float(np.nanmax(lp)) if np.isfinite(lp).any() else 4.0),
                           interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046)
        elif kind == "flags":
            arr, kw = _image_for_display(x_hat[b])
            ax.imshow(arr, interpolation="nearest", **kw)
            fm = _np(result.flag_map[b]).astype(float)
            ax.imshow(np.ma.masked_where(fm < 0.5, fm), cmap=ListedColormap(["red"]), alpha=0.45,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xlabel(f"tile p = {float(result.p_value[b]):.3g}", fontsize=8)
        elif kind == "unc":
            im = ax.imshow(_np(unc.spread[b]), cmap="viridis", interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046)
            pf = _np(unc.prior_filled[b]).astype(float)
            if pf.any():
                ax.contourf(pf, levels=[0.5, 1.5], hatches=["////"], colors="none")
                ax.contour(pf, levels=[0.5], colors="white", linewidths=0.8)
    _save(fig, path)


def render_audit_report(
    result: AuditResult,
    out_dir: str | os.PathLike,
    *,
    x_hat: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    unc: UncertaintyResult | None = None,
    title: str = "Hallucination audit",
    max_samples: int = 4,
    sample_names: list[str] | None = None,
) -> Path:
    """Write ``audit_report.md`` and its PNG figures into ``out_dir``; return the markdown path.

    ``x_hat`` ``(B, C, H, W)`` and ``y`` (the audited reconstruction and measurement) are optional
    but needed for the image panels; ``unc`` adds the seed-spread panel. Figures are drawn for the
    flagged samples first (most significant first), then the others, up to ``max_samples``;
    the per-sample table lists every sample (up to 200 rows).
    """
    if not isinstance(result, AuditResult):
        raise ValueError(f"render_audit_report: expected a ddiff.audit.AuditResult, got {type(result).__name__}")
    if max_samples < 0:
        raise ValueError(f"render_audit_report: max_samples must be >= 0, got {max_samples}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    B = int(result.tile_flag.shape[0])
    names = sample_names or [str(b) for b in range(B)]
    if len(names) != B:
        raise ValueError(f"render_audit_report: {len(names)} sample_names for {B} samples")

    _chi2_figure(result, out / "audit_chi2_hist.png")
    order = sorted(range(B), key=lambda b: (not bool(result.flagged[b]), float(result.p_value[b])))
    shown = []
    for b in order[:max_samples]:
        fname = f"audit_sample_{b}.png"
        _sample_figure(result, b, x_hat, y, unc, out / fname)
        if (out / fname).exists():
            shown.append((b, fname))

    md = [f"# {title}", "", summary_markdown(result, unc)]
    md += ["## Settings", "",
           "| setting | value |", "|---|---|"]
    for k, v in result.attrs().items():
        md.append(f"| {k} | `{v}` |")
    md += ["", "## Per sample", "",
           "| sample | χ²_ν | expected | z | p (misfit) | p (overfit) | tile flag | flagged windows |",
           "|---|---|---|---|---|---|---|---|"]
    for r in frame_rows(result, names)[:200]:
        nwin = "—" if r["flagged_windows"] is None else r["flagged_windows"]
        flag = f"**{r['note']}**" if r["note"] else ("**yes**" if r["tile_flag"] else "no")
        md.append(f"| {r['sample']} | {r['chi2_nu']:.4f} | {r['expected']} | {r['z']:+.2f} | {r['p_misfit']:.3g} | "
                  f"{r['p_overfit']:.3g} | {flag} | {nwin} |")
    if B > 200:
        md.append(f"| … | {B - 200} more rows in the diagnostics dataset | | | | | | |")
    md += ["", "## Figures", "", "![χ² histogram](audit_chi2_hist.png)", "",
           "Left: the tile statistic against its density when the reconstruction explains the data to "
           "the noise level. Right: window p-values, flat when no region contradicts the data.", ""]
    for b, fname in shown:
        md += [f"### sample {names[b]}", "", f"![sample {names[b]}]({fname})", ""]
    md += ["## How to read this (and what it cannot see)", "",
           "- A flag means: *the measurements contradict the reconstruction there*, at false-alarm rate α "
           "when the reconstruction is right. No flag does **not** prove the content is real.",
           "- Content in the operator's null space (e.g. inside an inpainting hole, frequencies a blur "
           "removes) leaves the measurements unchanged and can never be flagged by residuals; the seed "
           "spread / prior-filled map shows where the prior, not the data, decided the content.",
           "- χ²_ν well below 1 (p (overfit) small) means the solver fitted the noise.",
           "- Details: `docs/audit.md`.", ""]
    path = out / "audit_report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path
