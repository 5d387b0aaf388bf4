"""Benchmark report: summary statistics, paper-style markdown tables and PNG figures.

Room: ``flows`` (the benchmark package :mod:`flows.bench`) — pandas, numpy, scipy, matplotlib, and
``storage.safety.atomic_write`` for every file (no torch, nothing else from ``flows``).
Figures are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg canvas, so importing
this module never changes the global pyplot backend.

Input is a tidy DataFrame of per-image benchmark records, one row per
``(task, solver, sigma_y, nfe_budget, image)`` with metric columns ``psnr, ssim, lpips, chi2_nu,
residual`` and cost columns ``nfe, runs, seconds, floor_seconds`` (see :func:`summarize`).

* :func:`summarize` — per-cell means and 95 % t-interval half-widths;
* :func:`table1_markdown` / :func:`table2_markdown` — the DDiff paper's Table 1 (methods) and
  Table 2 (ablation) layout, one renderer; :func:`timing_markdown` — cost against the NFE floor;
* :func:`plot_noise_sweep`, :func:`plot_nfe_sweep`, :func:`plot_qualitative` — PNG figures;
* :func:`write_report` — all of the above into a folder, every file written atomically.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from storage.safety import atomic_write

__all__ = ["summarize", "mean_ci95", "task_label", "markdown_table", "table1_markdown", "table2_markdown", "timing_markdown",
           "plot_noise_sweep", "plot_nfe_sweep", "plot_qualitative", "write_report"]

TASK_LABELS = {
    "super_resolution": "Super-resolution ×4", "inpainting_box": "Inpainting (box)",
    "inpainting_random": "Inpainting (random)", "gaussian_blur": "Gaussian deblurring",
    "motion_blur": "Motion deblurring", "phase_retrieval": "Phase retrieval",
    "nonlinear_blur": "Nonlinear deblurring", "hdr": "HDR",
}
SOLVER_LABELS = {
    "ddiff": "DDiff", "ddiff_auto": "DDiff (auto)", "ddiff_hqs": "DDiff-HQS", "diffpnp_admm": "Diff-PnP-ADMM",
    "diffpnp_hqs": "Diff-PnP-HQS", "dps": "DPS", "diffpir": "DiffPIR", "daps": "DAPS", "tv": "TV",
}
COLUMN_LABELS = {"truth": "Ground truth", "measurement": "Measurement", **SOLVER_LABELS}
TASK_ORDER = tuple(TASK_LABELS)
SOLVER_ORDER = tuple(SOLVER_LABELS)
TABLE1_SOLVERS = ("ddiff", "ddiff_auto", "daps", "dps", "diffpir", "tv")
TABLE2_SOLVERS = ("ddiff", "ddiff_hqs", "diffpnp_admm", "diffpnp_hqs")
METRICS = ("psnr", "ssim", "lpips", "chi2_nu", "residual", "seconds")
KEYS = ["task", "solver", "sigma_y", "nfe_budget"]
# (metric, header, decimals, best-of rule: value → score, higher score is better)
TABLE_COLUMNS = (
    ("psnr", "PSNR ↑", 2, lambda v: v), ("ssim", "SSIM ↑", 3, lambda v: v),
    ("lpips", "LPIPS ↓", 3, lambda v: -v), ("residual", "Residual ↓", 4, lambda v: -v),
    ("chi2_nu", "χ²_ν (→1)", 2, lambda v: -abs(v - 1)),
)


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def _rank(value: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(value) if value in order else len(order), value)


def mean_ci95(values) -> tuple[float, float]:
    """Mean and 95 % t-interval half-width of the finite values (half-width NaN below 2 values)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan
    if v.size < 2:
        return float(v.mean()), np.nan
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, solver, sigma_y, nfe_budget): ``n``, ``<metric>_mean``/``_ci95``, cost columns."""
    columns = KEYS + ["n"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "ci95")] + [
        "nfe", "runs", "floor_seconds", "time_ratio"]
    rows = []
    for key, g in df.groupby(KEYS, sort=False):
        row = dict(zip(KEYS, key), n=len(g))
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_ci95"] = mean_ci95(g[m] if m in g else [])
        floor = float(g["floor_seconds"].mean())
        row.update(nfe=float(g["nfe"].mean()), runs=int(g["runs"].max()), floor_seconds=floor,
                   time_ratio=row["seconds_mean"] / floor if floor > 0 else np.nan)
        rows.append(row)
    rows.sort(key=lambda r: (_rank(r["task"], TASK_ORDER), _rank(r["solver"], SOLVER_ORDER),
                             r["sigma_y"], r["nfe_budget"]))
    return pd.DataFrame(rows, columns=columns)


def _select(summary: pd.DataFrame, sigma_y=None, nfe_budget=None, task=None) -> pd.DataFrame:
    """Rows at ``sigma_y`` (isclose) and ``nfe_budget`` (TV kept at any budget) and ``task``."""
    keep = np.ones(len(summary), dtype=bool)
    if sigma_y is not None:
        keep &= np.isclose(summary["sigma_y"].to_numpy(float), sigma_y)
    if nfe_budget is not None:
        keep &= ((summary["nfe_budget"] == nfe_budget) | (summary["solver"] == "tv")).to_numpy()
    if task is not None:
        keep &= (summary["task"] == task).to_numpy()
    return summary[keep]


def markdown_table(header: Sequence[str], rows: list[list[str]]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _pm(mean: float, ci: float, decimals: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{decimals}f}" + (f" ± {ci:.{decimals}f}" if np.isfinite(ci) else "")


def _nfe(r: pd.Series, runs: bool = False) -> str:
    if not r["nfe"] > 0:
        return "—"
    return f"{r['nfe']:.0f}" + (f" ×{int(r['runs'])}" if runs and r["runs"] > 1 else "")


def _caption(sel: pd.DataFrame, sigma_y: float, nfe_budget: int) -> str:
    ns = sorted(set(sel["n"].astype(int)))
    n = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    text = f"σ_y = {sigma_y:g}, NFE budget {nfe_budget}, {n} images per task"
    runs = sel.loc[sel["task"] == "phase_retrieval", "runs"]
    if len(runs) and runs.max() > 1:
        text += f" (phase retrieval: best of {int(runs.max())} runs per image, chosen by PSNR)"
    return text


def table1_markdown(summary: pd.DataFrame, sigma_y: float, nfe_budget: int,
                    solvers: Sequence[str] = TABLE1_SOLVERS) -> str:
    """Paper Table 1 layout: a block per task, a row per method in ``solvers``; best mean bold."""
    sel = _select(summary, sigma_y, nfe_budget)
    sel = sel[sel["solver"].isin(solvers)]
    if sel.empty:
        return f"σ_y = {sigma_y:g}, NFE budget {nfe_budget}: no results\n"
    columns, note = TABLE_COLUMNS, ""
    if not np.isfinite(sel["lpips_mean"].to_numpy(float)).any():  # no NaN column: say why, and the fix
        columns, note = tuple(c for c in TABLE_COLUMNS if c[0] != "lpips"), lpips_note()
    header = ["Task", "Method"] + [c[1] for c in columns] + ["NFE", "s/image"]
    rows = []
    for task, block in sel.groupby("task", sort=False):
        best = {}
        for m, _, _, score in columns:
            s = score(block[f"{m}_mean"].to_numpy(float))
            best[m] = np.nanmax(s) if np.isfinite(s).any() else np.nan
        first = True
        for solver in solvers:
            hit = block[block["solver"] == solver]
            if hit.empty:
                continue
            r = hit.iloc[0]
            row = [task_label(task) if first else "", SOLVER_LABELS.get(solver, solver)]
            for m, _, dec, score in columns:
                cell = _pm(r[f"{m}_mean"], r[f"{m}_ci95"], dec)
                bold = len(block) > 1 and score(r[f"{m}_mean"]) == best[m]
                row.append(f"**{cell}**" if bold else cell)
            # one batch is timed per cell, so seconds per image carry no spread over images
            rows.append(row + [_nfe(r, runs=True), _pm(r["seconds_mean"], np.nan, 2)])
            first = False
    return _caption(sel, sigma_y, nfe_budget) + (f". {note}" if note else "") + "\n\n" + markdown_table(header, rows)


def lpips_note() -> str:
    """Why a table has no LPIPS column: this machine's missing AlexNet weights, or the results' own NaNs."""
    from ddiff.metrics import lpips_missing

    return lpips_missing() or "LPIPS not computed (the AlexNet weights were absent when these results ran)"


def table2_markdown(summary: pd.DataFrame, sigma_y: float, nfe_budget: int) -> str:
    """Paper Table 2 (ablation): DDiff against its HQS and Diff-PnP variants."""
    return table1_markdown(summary, sigma_y, nfe_budget, solvers=TABLE2_SOLVERS)


def timing_markdown(summary: pd.DataFrame, sigma_y: float, nfe_budget: int) -> str:
    """Seconds per image against the floor NFE × one prior forward, per (task, solver)."""
    sel = _select(summary, sigma_y, nfe_budget)
    header = ["Task", "Method", "NFE", "s/image", "floor s/image (NFE × one forward)",
              "ratio to floor"]

    def row(task, solver, nfe, sec, floor, ratio):
        tv = solver == "tv"
        return [task, SOLVER_LABELS.get(solver, solver), nfe, f"{sec:.3g}",
                "—" if tv else f"{floor:.3g}", "—" if tv or np.isnan(ratio) else f"{ratio:.2f}×"]

    rows, prev = [], None
    for _, r in sel.iterrows():
        rows.append(row(task_label(r["task"]) if r["task"] != prev else "", r["solver"],
                        _nfe(r), r["seconds_mean"], r["floor_seconds"], r["time_ratio"]))
        prev = r["task"]
    by_solver = sorted(sel.groupby("solver"), key=lambda kv: _rank(kv[0], SOLVER_ORDER))
    for i, (solver, g) in enumerate(by_solver):  # means over tasks
        rows.append(row("all tasks" if i == 0 else "", solver, "", g["seconds_mean"].mean(),
                        g["floor_seconds"].mean(), g["time_ratio"].mean()))
    return f"σ_y = {sigma_y:g}, NFE budget {nfe_budget}\n\n" + markdown_table(header, rows)


def _save(fig: Figure, path) -> str:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def _log_x(ax, xs) -> None:
    """Log x axis ticked at the data values (symlog when one of them is 0)."""
    xs = np.unique(np.asarray(xs, dtype=float))
    pos = xs[xs > 0]
    if len(pos) == len(xs) or not len(pos):
        ax.set_xscale("log")
    else:  # a zero-noise point: logarithmic above the smallest positive value, linear below
        ax.set_xscale("symlog", linthresh=float(pos.min()))
    ax.set_xticks(xs, [f"{x:g}" for x in xs], minor=False)
    ax.set_xticks([], minor=True)


def _solvers_in(sel: pd.DataFrame, solvers) -> list[str]:
    present = sorted(set(sel["solver"]), key=lambda s: _rank(s, SOLVER_ORDER))
    return present if solvers is None else [s for s in solvers if s in present]


def plot_noise_sweep(summary: pd.DataFrame, task: str, nfe_budget: int, path,
                     solvers: Sequence[str] | None = None) -> str:
    """PSNR and LPIPS (SSIM when LPIPS is unavailable) against σ_y, one line per solver."""
    sel = _select(summary, nfe_budget=nfe_budget, task=task)
    second = "lpips" if np.isfinite(sel["lpips_mean"].to_numpy(float)).any() else "ssim"
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for solver in _solvers_in(sel, solvers):
        g = sel[sel["solver"] == solver].sort_values("sigma_y")
        for ax, m in zip(axes, ("psnr", second)):
            ax.errorbar(g["sigma_y"], g[f"{m}_mean"], yerr=np.nan_to_num(g[f"{m}_ci95"]),
                        marker="o", capsize=3, label=SOLVER_LABELS.get(solver, solver))
    for ax, m in zip(axes, ("PSNR (dB)", second.upper())):
        _log_x(ax, sel["sigma_y"])
        ax.set(xlabel="σ_y", ylabel=m)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{task_label(task)} — NFE {nfe_budget}")
    return _save(fig, path)


def plot_nfe_sweep(summary: pd.DataFrame, task: str, sigma_y: float, path,
                   solvers: Sequence[str] | None = None) -> str:
    """PSNR and seconds/image against NFE per solver; TV as a dashed level, DDiff's NFE floor."""
    sel = _select(summary, sigma_y=sigma_y, task=task)
    names = _solvers_in(sel, solvers)
    fig = Figure(figsize=(10, 4))
    ax_q, ax_t = fig.subplots(1, 2)
    for solver in names:
        g = sel[sel["solver"] == solver].sort_values("nfe")
        label = SOLVER_LABELS.get(solver, solver)
        if solver == "tv":
            ax_q.axhline(g["psnr_mean"].mean(), color="gray", linestyle="--", label="TV")
            continue
        g = g[g["nfe_budget"] > 0]
        ax_q.errorbar(g["nfe"], g["psnr_mean"], yerr=np.nan_to_num(g["psnr_ci95"]), marker="o",
                      capsize=3, label=label)
        ax_t.errorbar(g["nfe"], g["seconds_mean"], yerr=np.nan_to_num(g["seconds_ci95"]),
                      marker="o", capsize=3, label=label)
        if solver == "ddiff":
            ax_t.plot(g["nfe"], g["floor_seconds"], "k:", label="DDiff floor (NFE × forward)")
    ax_q.set(xlabel="NFE", ylabel="PSNR (dB)")
    ax_t.set(yscale="log", xlabel="NFE", ylabel="seconds / image")
    for ax in (ax_q, ax_t):
        _log_x(ax, sel.loc[sel["nfe_budget"] > 0, "nfe"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{task_label(task)} — σ_y = {sigma_y:g}")
    return _save(fig, path)


def plot_qualitative(images: Mapping[str, Mapping[str, np.ndarray]], path,
                     titles: Mapping[str, str] | None = None) -> str:
    """Grid of images: a row per task, a column per name (first-seen order), blanks where absent.

    ``titles`` optionally overrides column titles (column name → title).
    """
    cols = list(dict.fromkeys(c for row in images.values() for c in row))
    titles = {**COLUMN_LABELS, **(titles or {})}
    nr, nc = max(len(images), 1), max(len(cols), 1)
    fig = Figure(figsize=(1.3 * nc + 0.4, 1.3 * nr + 0.3))
    axes = fig.subplots(nr, nc, squeeze=False)
    for i, (task, row) in enumerate(images.items()):
        for j, col in enumerate(cols):
            ax = axes[i, j]
            ax.set(xticks=[], yticks=[])
            if i == 0:
                ax.set_title(titles.get(col, col), fontsize=8)
            if j == 0:
                ax.set_ylabel(task_label(task), fontsize=8)
            if col not in row:  # blank cell; spines hidden rather than axis off, keeping labels
                for s in ax.spines.values():
                    s.set_visible(False)
                continue
            a = np.asarray(row[col])
            a = np.abs(a) if np.iscomplexobj(a) else a.astype(float)
            a = a.squeeze()
            a = a[0] if a.ndim == 3 else a
            if col == "measurement":
                lo, hi = np.nanpercentile(a, [1, 99])
                kw = dict(vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
            else:
                kw = dict(vmin=-1.0, vmax=1.0)
            ax.imshow(a, cmap="gray", interpolation="nearest", **kw)
    return _save(fig, path)


def write_report(folder, df: pd.DataFrame, *, sigma_y: float, nfe_budget: int,
                 sweep_task: str | None = None, noise_solvers=None, nfe_solvers=None, images=None,
                 header: str = "", comparison: str = "") -> dict[str, str]:
    """Write summary.csv, the tables, the figures that the data allow and report.md into ``folder``.

    ``sweep_task`` defaults to the first task of the summary; ``noise_solvers`` / ``nfe_solvers``
    restrict the sweep plots (default: every solver present). ``comparison`` (markdown, e.g. the
    claim checks of :mod:`flows.bench.claims`) is written to claims.md and appended to report.md.
    Returns ``{file name: path}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(df)
    out: dict[str, str] = {}

    def text(name: str, content: str) -> None:
        out[name] = atomic_write(folder / name, lambda tmp: Path(tmp).write_text(content, "utf-8"))

    out["summary.csv"] = atomic_write(folder / "summary.csv", lambda t: summary.to_csv(t, index=False))
    sections = {"table1.md": ("Table 1 — methods", table1_markdown(summary, sigma_y, nfe_budget)),
                "table2.md": ("Table 2 — ablation", table2_markdown(summary, sigma_y, nfe_budget)),
                "timing.md": ("Timing", timing_markdown(summary, sigma_y, nfe_budget))}
    for name, (_, content) in sections.items():
        text(name, content)

    if sweep_task is None and len(summary):
        sweep_task = summary["task"].iloc[0]
    figures = []
    if sweep_task is not None:
        at_nfe = _select(summary, nfe_budget=nfe_budget, task=sweep_task)
        if at_nfe["sigma_y"].nunique() >= 2:
            out["noise_sweep.png"] = plot_noise_sweep(summary, sweep_task, nfe_budget,
                                                      folder / "noise_sweep.png", solvers=noise_solvers)
            figures.append(("Noise sweep", "noise_sweep.png"))
        at_sigma = _select(summary, sigma_y=sigma_y, task=sweep_task)
        if at_sigma.loc[at_sigma["nfe_budget"] > 0, "nfe_budget"].nunique() >= 2:
            out["nfe_sweep.png"] = plot_nfe_sweep(summary, sweep_task, sigma_y,
                                                  folder / "nfe_sweep.png", solvers=nfe_solvers)
            figures.append(("NFE sweep", "nfe_sweep.png"))
    if images:
        out["qualitative.png"] = plot_qualitative(images, folder / "qualitative.png")
        figures.append(("Qualitative results", "qualitative.png"))

    parts = [header.rstrip() + "\n"] if header.strip() else []
    parts += [f"## {title}\n\n{content}" for title, content in sections.values()]
    parts += [f"## {title}\n\n![{title}]({name})\n" for title, name in figures]
    if comparison.strip():
        text("claims.md", comparison)
        parts.append(comparison.rstrip() + "\n")
    text("report.md", "\n".join(parts))
    return out
