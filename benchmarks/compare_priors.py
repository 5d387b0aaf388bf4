"""Paired comparison of two priors inside the same solver: two ``ddiff bench`` output folders run
with the same command except ``--prior``, compared image by image.

Room: ``benchmarks`` — a script; reads the benchmark's ``results.csv`` (pandas) and reuses
:func:`flows.bench.claims.paired_difference` for the mean and 95 % CI of the per-image difference.

    python benchmarks/compare_priors.py /tmp/team/pair_default /tmp/team/pair_default-v2 --solver ddiff_auto

Prints, per task (σ_y and NFE as in the runs): mean PSNR of each, the paired ΔPSNR (B − A) with its
95 % CI and verdict, and the mean χ²_ν of each; last, all cells pooled.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.bench.claims import _delta, _verdict, mean_ci95, paired_difference  # noqa: E402


def load(folder: str, label: str, solver: str) -> pd.DataFrame:
    df = pd.read_csv(Path(folder) / "results.csv")
    df = df[df.solver == solver].copy()
    df["solver"] = label
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="bench folder of prior A (the reference)")
    ap.add_argument("b", help="bench folder of prior B")
    ap.add_argument("--solver", default="ddiff_auto")
    a = ap.parse_args(argv)
    cfg = {k: json.loads((Path(f) / "config.json").read_text())["config"] for k, f in (("A", a.a), ("B", a.b))}
    prior = {k: f"{c['prior']} sha256 {c['prior_sha256'][:8]}" for k, c in cfg.items()}
    df = pd.concat([load(a.a, "A", a.solver), load(a.b, "B", a.solver)])
    print(f"solver {a.solver}; A = prior {prior['A']} ({a.a}); B = prior {prior['B']} ({a.b})")
    print("| task | σ_y | NFE | n | PSNR A | PSNR B | B − A (95 % CI) | verdict | χ²_ν A / B |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (task, s, nfe), g in df.groupby(["task", "sigma_y", "nfe_budget"]):
        m, h, n = paired_difference(df, task, "B", "A", s, nfe)
        ga, gb = g[g.solver == "A"], g[g.solver == "B"]
        print(f"| {task} | {s:g} | {nfe} | {n} | {ga.psnr.mean():.2f} | {gb.psnr.mean():.2f} | {_delta(m, h)} | "
              f"{_verdict(m, h)} | {ga.chi2_nu.mean():.3f} / {gb.chi2_nu.mean():.3f} |")
    # all cells pooled (the same images recur across tasks, so this CI is optimistic; read it with the rows)
    key = ["task", "sigma_y", "nfe_budget", "image"]
    d = (df[df.solver == "B"].set_index(key).psnr - df[df.solver == "A"].set_index(key).psnr).dropna()
    m, h = mean_ci95(d.to_numpy())
    print(f"| all cells pooled | | | {d.size} | | | {_delta(m, h)} | {_verdict(m, h)} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
