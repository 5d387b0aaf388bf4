"""Tests for flows.bench.report on a small synthetic, seeded benchmark DataFrame."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flows.bench import report as br

TASKS = ("phase_retrieval", "super_resolution")  # deliberately not in table order
SOLVERS = ("tv", "dps", "ddiff")
SIGMAS = (0.01, 0.05)
NFES = (20, 50)
BEST = ("super_resolution", "ddiff", 0.05, 50)  # constructed to have the best PSNR of its block
ABSENT = ("phase_retrieval", "dps", 0.05, 50)  # dropped from the data
SINGLE = ("phase_retrieval", "ddiff", 0.01, 20)  # one image only


def make_df(lpips_nan: bool = False, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for task in TASKS:
        for solver in SOLVERS:
            for sigma in SIGMAS:
                for budget in ((0,) if solver == "tv" else NFES):
                    key = (task, solver, sigma, budget)
                    if key == ABSENT:
                        continue
                    for i in range(1 if key == SINGLE else 4):
                        nfe = budget
                        runs = 5 if task == "phase_retrieval" else 1
                        rows.append(dict(
                            task=task, solver=solver, sigma_y=sigma, nfe_budget=budget,
                            image=f"img{i}",
                            psnr=20 + rng.normal() + (10 if key == BEST else 0),
                            ssim=0.6 + 0.05 * rng.normal(),
                            lpips=np.nan if lpips_nan else 0.3 + 0.02 * rng.normal(),
                            chi2_nu=1 + 0.2 * rng.normal(), residual=abs(1e-3 * rng.normal()),
                            nfe=nfe, runs=runs, seconds=0.01 * (nfe + 1) * (1 + 0.1 * rng.random()),
                            floor_seconds=0.005 * nfe))
    return pd.DataFrame(rows)


def cell(summary, key):
    t, s, sig, b = key
    hit = summary[(summary.task == t) & (summary.solver == s) & np.isclose(summary.sigma_y, sig)
                  & (summary.nfe_budget == b)]
    assert len(hit) == 1
    return hit.iloc[0]


def table_rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_summarize_mean_ci_and_order():
    df = make_df()
    s = br.summarize(df)
    key = ("super_resolution", "dps", 0.05, 20)
    vals = df[(df.task == key[0]) & (df.solver == key[1]) & (df.sigma_y == key[2])
              & (df.nfe_budget == key[3])]
    row = cell(s, key)
    assert row["n"] == 4
    for m in ("psnr", "seconds"):
        v = vals[m].to_numpy()
        assert row[f"{m}_mean"] == pytest.approx(v.mean())
        ci = stats.t.ppf(0.975, 3) * v.std(ddof=1) / 2
        assert row[f"{m}_ci95"] == pytest.approx(ci)
    assert row["time_ratio"] == pytest.approx(vals.seconds.mean() / vals.floor_seconds.mean())
    single = cell(s, SINGLE)
    assert single["n"] == 1 and np.isnan(single["psnr_ci95"]) and np.isfinite(single["psnr_mean"])
    assert cell(s, ("super_resolution", "tv", 0.05, 0))["time_ratio"] != cell(s, key)["time_ratio"]
    assert np.isnan(cell(s, ("super_resolution", "tv", 0.05, 0))["time_ratio"])
    assert cell(s, ("phase_retrieval", "dps", 0.01, 20))["runs"] == 5
    # fixed order: super_resolution before phase_retrieval; ddiff, dps, tv within a task
    assert list(dict.fromkeys(s.task)) == ["super_resolution", "phase_retrieval"]
    assert list(dict.fromkeys(s[s.task == "super_resolution"].solver)) == ["ddiff", "dps", "tv"]
    pd.testing.assert_frame_equal(s, br.summarize(df.sample(frac=1, random_state=1)))


def test_summarize_nan_lpips():
    s = br.summarize(make_df(lpips_nan=True))
    assert s["lpips_mean"].isna().all() and s["lpips_ci95"].isna().all()
    assert s["psnr_mean"].notna().all()


def test_table1_bold_absent_and_na():
    s = br.summarize(make_df())
    md = br.table1_markdown(s, 0.05, 50)
    assert md.startswith("σ_y = 0.05, NFE budget 50, 4 images per task (phase retrieval: best of 5")
    rows = table_rows(md)
    best = cell(s, BEST)
    sr_ddiff = next(r for r in rows if r[0] == "Super-resolution ×4")
    assert sr_ddiff[1] == "DDiff"
    assert sr_ddiff[2] == f"**{best.psnr_mean:.2f} ± {best.psnr_ci95:.2f}**"
    # exactly one bold PSNR per task block, and none in the other rows of the SR block
    assert sum(r[2].startswith("**") for r in rows) == 2
    # absent cell: phase-retrieval block has DDiff and TV only
    i = next(k for k, r in enumerate(rows) if r[0] == "Phase retrieval")
    assert [r[1] for r in rows[i:]] == ["DDiff", "TV"]
    assert [r[1] for r in rows[:i]] == ["DDiff", "DPS", "TV"]
    assert "n/a" not in md
    nan_md = br.table1_markdown(br.summarize(make_df(lpips_nan=True)), 0.05, 50)
    # no LPIPS (no AlexNet weights): no NaN column; the caption says so and where the weights go
    assert "LPIPS" not in nan_md.splitlines()[2] and "n/a" not in nan_md
    assert "LPIPS not computed" in nan_md.splitlines()[0] and br.lpips_note() in nan_md
    assert [len(r) for r in table_rows(nan_md)] == [len(r) - 1 for r in rows]
    # table 2 uses the same renderer; here only DDiff of its solvers exists
    t2 = br.table2_markdown(s, 0.05, 50)
    assert [r[1] for r in table_rows(t2)] == ["DDiff", "DDiff"]
    assert "**" not in t2  # a lone method is not marked best
    assert all(r[7] == "—" for r in rows if r[1] == "TV")  # TV has no NFE
    assert next(r for r in rows if r[0] == "Phase retrieval")[7] == "50 ×5"


def test_timing_markdown():
    s = br.summarize(make_df())
    rows = table_rows(br.timing_markdown(s, 0.05, 50))
    tv = [r for r in rows if r[1] == "TV"]
    assert tv and all(r[4] == "—" and r[5] == "—" for r in tv)
    i = next(k for k, r in enumerate(rows) if r[0] == "all tasks")
    assert [r[1] for r in rows[i:]] == ["DDiff", "DPS", "TV"]
    sel = s[np.isclose(s.sigma_y, 0.05) & (s.nfe_budget == 50) & (s.solver == "ddiff")]
    assert rows[i][5] == f"{sel.time_ratio.mean():.2f}×"


def test_write_report_all_files(tmp_path):
    df = make_df()
    images = {"super_resolution": {"truth": np.zeros((64, 64)), "measurement": np.ones((16, 16)),
                                   "ddiff": np.full((64, 64), 0.5)},
              "phase_retrieval": {"truth": np.zeros((64, 64)), "tv": np.zeros((64, 64))}}
    out = br.write_report(tmp_path / "r", df, sigma_y=0.05, nfe_budget=50,
                          sweep_task="super_resolution", images=images, header="# Bench")
    names = {"summary.csv", "table1.md", "table2.md", "timing.md", "noise_sweep.png",
             "nfe_sweep.png", "qualitative.png", "report.md"}
    assert set(out) == names
    assert {p.name for p in (tmp_path / "r").iterdir()} == names  # no temp files left
    for name in names:
        if name.endswith(".png"):
            img = mpimg.imread(out[name])
            assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    back = pd.read_csv(out["summary.csv"])
    pd.testing.assert_frame_equal(back, br.summarize(df), check_exact=False, rtol=1e-12)
    report = (tmp_path / "r" / "report.md").read_text()
    assert report.startswith("# Bench")
    for png in ("noise_sweep.png", "nfe_sweep.png", "qualitative.png"):
        assert f"]({png})" in report
    assert (tmp_path / "r" / "table1.md").read_text() in report


def test_write_report_skips_sweeps(tmp_path):
    df = make_df(lpips_nan=True)
    df = df[np.isclose(df.sigma_y, 0.01) & df.nfe_budget.isin([0, 20])]
    out = br.write_report(tmp_path, df, sigma_y=0.01, nfe_budget=20)
    assert set(out) == {"summary.csv", "table1.md", "table2.md", "timing.md", "report.md"}
    assert ".png" not in (tmp_path / "report.md").read_text()


def test_plots_direct(tmp_path):
    s = br.summarize(make_df(lpips_nan=True))  # noise sweep falls back to SSIM
    p = br.plot_noise_sweep(s, "phase_retrieval", 20, tmp_path / "a.png", solvers=["ddiff", "tv"])
    q = br.plot_nfe_sweep(s, "super_resolution", 0.01, tmp_path / "b.png")
    assert mpimg.imread(p).ndim == 3 and mpimg.imread(q).ndim == 3


def test_atomic_write_failure_leaves_nothing(tmp_path):
    from storage.safety import atomic_write

    def boom(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.md", boom)
    assert list(tmp_path.iterdir()) == []
