"""Calibrated per-pixel bounds (ddiff.audit.bounds + RCPS): coverage over random calibration/test splits,
width against a constant band, corr(width, |error|), the hallucination experiment, and the cost of K seeds.

Room: ``benchmarks`` — a script over ``ddiff``, ``operators`` and ``flows.sample_data`` (the Python API the
flows call: ``SeedMean(DDiff auto, K, keep_samples=True)`` + ``bound_features`` per frame batch).

Data: ``--size``² crops of the HELD-OUT parts (right 25 %) of scikit-image's pictures (model units
[−1, 1]), seeded; five tasks: Gaussian deblurring (the demo's 25 px, std 2), ×4 super-resolution, box
inpainting (a centred box of half the side), MRI R = 4 (Cartesian, σ per real/imag part), CT 30 views.
Per task ``--fit`` frames fit the scale rule (once per α and K) and a pool of ``--pool`` frames is split
``--splits`` times at random into calibration (``--cal``) and test frames; each split chooses λ by RCPS
(WSR, δ) on its calibration frames for the fitted rule and for a constant width (the band that ignores
the seeds and the operator), and measures on its test frames the pixel miscoverage and the mean width.
The reconstructions are made once and reused by every split (cached in ``--cache``).

Hallucination: frames with a structure the measurements cannot see inserted into the truth — a bright
disk inside the inpainting hole, a period-2 line pattern (beyond the ×4 cutoff), a small lesion at MRI
R = 8 (its own rule and λ, calibrated on a pool at R = 8), a thin feature in a 30-view CT — reconstructed,
bounded with λ from the whole pool, and scored: the truth's coverage inside the region and elsewhere,
and the fraction of regions marked unresolved (≥ half its pixels wider than ``--max-width`` = the
inserted contrast) against the fraction of the other pixels marked.

    OMP_NUM_THREADS=1 python benchmarks/bounds.py                     # 32 px, 20 steps, K = 4
    OMP_NUM_THREADS=1 python benchmarks/bounds.py --tasks inpaint --splits 5 --pool 60   # a quick look
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ddiff  # noqa: E402
import operators  # noqa: E402
from ddiff.audit import ScaleRule, bound_features, fit_scale_rule, rcps_lambda  # noqa: E402
from ddiff.priors.loading import load_prior  # noqa: E402
from flows.demo import DEMO_OPERATOR  # noqa: E402
from flows.sample_data import crops, sample_images  # noqa: E402

TASKS = ("deblur", "sr4", "inpaint", "mri4", "ct30")


def task_operator(task: str, n: int):
    """``(operator, noise σ in the measurement's units, hallucination kind)``."""
    if task == "deblur":
        return operators.get_operator(DEMO_OPERATOR["name"], **DEMO_OPERATOR["params"]), 0.05, None
    if task == "sr4":
        return operators.get_operator("super_resolution", scale=4), 0.05, "lines"
    if task == "inpaint":
        m, q = torch.ones(n, n), n // 4  # a centred box hole of half the side
        m[q:n - q, q:n - q] = 0
        return operators.MaskOperator(m, name="inpainting_box"), 0.05, "disk"
    if task in ("mri4", "mri8"):
        R = 4 if task == "mri4" else 8
        return operators.get_operator("mri_cartesian", acceleration=R, image_size=n, seed=1), 0.04, "lesion"
    if task == "ct30":
        return operators.get_operator("ct_parallel_beam", angles=30), 0.02 * n / 2, "thin"
    raise ValueError(task)


def insert(x: torch.Tensor, kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(x with the structure, region mask (H, W) bool, contrast)``: the structure the data cannot see."""
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    c = n // 2
    x = x.clone()
    if kind == "disk":  # inside the box hole (the hole is centred, half the side)
        reg = (yy - c) ** 2 + (xx - c) ** 2 <= (n // 8) ** 2
        x[..., reg] = (x[..., reg] + 0.8).clamp(max=1.0)
        return x, reg, 0.8
    if kind == "lines":  # period-2 stripes: far above the ×4 low-resolution grid's Nyquist frequency
        reg = (yy >= c - n // 8) & (yy < c + n // 8) & (xx >= c - n // 8) & (xx < c + n // 8)
        x[..., reg] = x[..., reg] + torch.where(xx[reg] % 2 == 0, 0.3, -0.3)
        return x.clamp(-1, 1), reg, 0.6
    if kind == "lesion":  # a small bright lesion
        reg = (yy - c + 3) ** 2 + (xx - c - 2) ** 2 <= 4
        x[..., reg] = (x[..., reg] + 0.5).clamp(max=1.0)
        return x, reg, 0.5
    if kind == "thin":  # a thin bright segment (1 px wide): detail between the 30 views
        reg = (yy == c + 3) & (xx >= c - 5) & (xx < c + 5)
        x[..., reg] = (x[..., reg] + 0.6).clamp(max=1.0)
        return x, reg, 0.6
    raise ValueError(kind)


def measure(A, x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = A(x)
    if y.is_complex():
        return y + sigma * torch.complex(torch.randn(y.shape, generator=g), torch.randn(y.shape, generator=g))
    return y + sigma * torch.randn(y.shape, generator=g)


def reconstruct(prior, A, x: torch.Tensor, sigma: float, steps: int, K: int, seed: int, batch: int) -> dict:
    """K seeded runs per frame (in batches) and the solver seconds (cached; the features are not)."""
    samples, secs = [], 0.0
    noise = operators.GaussianNoise(sigma)
    for b0 in range(0, x.shape[0], batch):
        xb = x[b0:b0 + batch]
        y = measure(A, xb, sigma, seed + b0)
        gens = [torch.Generator().manual_seed(seed * 100003 + b0 + i) for i in range(xb.shape[0])]
        t = time.perf_counter()
        r = ddiff.SeedMean(ddiff.DDiff(prior, **ddiff.DDiff.auto(steps)), K, keep_samples=True).solve(
            y, A, noise, generator=gens)
        secs += time.perf_counter() - t
        samples.append(r.samples.float())
    return {"samples": torch.cat(samples, 1).numpy(), "solver_seconds": secs}


def features(A, x: torch.Tensor, sigma: float, samples: np.ndarray, seed: int, batch: int, ks) -> np.ndarray:
    """``(len(ks), N, F, H, W)``: the bound features from the first k seeds, the measurements re-drawn."""
    noise, out = operators.GaussianNoise(sigma), []
    s = torch.from_numpy(samples)
    for b0 in range(0, x.shape[0], batch):
        y = measure(A, x[b0:b0 + batch], sigma, seed + b0)
        out.append(torch.stack([bound_features(s[:k, b0:b0 + batch], A, noise, y) for k in ks]))
    return torch.cat(out, 1).numpy()


def load_or_run(cache: Path, key: str, fn) -> dict:
    f = cache / f"{key}.npz"
    if f.is_file():
        return dict(np.load(f, allow_pickle=False))
    r = fn()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(f, **{k: np.asarray(v) for k, v in r.items()})
    return r


def ratios(err: np.ndarray, s: np.ndarray) -> list[np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return list(np.where(s > 0, err / np.where(s > 0, s, 1), np.where(err > 0, np.inf, 0.0)))


def evaluate(truth, mean, feats, fit, alpha, delta, splits, n_cal, seed, objective="balanced") -> dict:
    """Rule fitted on the first ``fit`` frames; λ per split on ``n_cal`` pool frames, the rest tested."""
    err = np.abs(truth - mean)[:, 0]
    rule = fit_scale_rule(feats[:fit], err[:fit], alpha, objective=objective)
    const = ScaleRule((1.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    pool = np.arange(fit, len(err))
    rng = np.random.default_rng(seed)
    s_rule, s_const = rule.scale(feats), np.ones_like(err)
    out = {"rule": rule.weights, "risk": [], "risk_const": [], "width": [], "width_const": [], "lambda": []}
    for _ in range(splits):
        perm = rng.permutation(pool)
        cal, test = perm[:n_cal], perm[n_cal:]
        lam = rcps_lambda(ratios(err[cal], s_rule[cal]), alpha, delta)["lambda"]
        lam_c = rcps_lambda(ratios(err[cal], s_const[cal]), alpha, delta)["lambda"]
        out["risk"].append(float((err[test] > lam * s_rule[test]).mean()))
        out["risk_const"].append(float((err[test] > lam_c).mean()))
        out["width"].append(float(2 * lam * s_rule[test].mean()))
        out["width_const"].append(float(2 * lam_c))
        out["lambda"].append(lam)
    lam_all = rcps_lambda(ratios(err[pool], s_rule[pool]), alpha, delta)["lambda"]
    w = 2 * lam_all * s_rule[pool]
    out["corr"] = float(np.corrcoef(w.ravel(), err[pool].ravel())[0, 1])
    out["lambda_pool"], out["rule_obj"] = lam_all, rule
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--fit", type=int, default=12, help="frames that fit the scale rule")
    ap.add_argument("--pool", type=int, default=84, help="frames split into calibration and test")
    ap.add_argument("--cal", type=int, default=60, help="calibration frames per split")
    ap.add_argument("--splits", type=int, default=40)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.05])
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--hallucination", type=int, default=8, help="frames per hallucination experiment")
    ap.add_argument("--mri8-pool", type=int, default=40, help="frames that calibrate λ for the MRI R = 8 lesions")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--cache", default="/tmp/ddiff_bounds_cache")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bounds"))
    ap.add_argument("--report", default=None, help="print the tables of a finished run's JSON and stop")
    a = ap.parse_args()
    if a.report:
        return report(json.loads(Path(a.report).read_text()))
    torch.manual_seed(0)
    prior = load_prior(a.prior)
    _, held, _ = sample_images()
    n, cache = a.size, Path(a.cache)
    tag = f"s{n}_t{a.steps}_k{a.seeds}_f{a.fit}_p{a.pool}"
    x_all = torch.from_numpy(crops(held, a.fit + a.pool, n, seed=11))
    print(f"# DDiff auto, {a.steps} steps, K = {a.seeds}, {n}² held-out crops; rule fitted on {a.fit} frames, "
          f"{a.splits} splits of {a.pool} frames into {a.cal} calibration / {a.pool - a.cal} test; WSR, δ = {a.delta}; "
          "widths in model units [-1, 1]")
    rows, summary = [], {"settings": vars(a), "tasks": {}}
    for task in a.tasks:
        A, sigma, kind = task_operator(task, n)
        t0 = time.perf_counter()
        r = load_or_run(cache, f"{task}_{tag}", lambda: reconstruct(prior, A, x_all, sigma, a.steps, a.seeds, 1, a.batch))
        truth = x_all.numpy()
        t1 = time.perf_counter()
        ks = (1, 2, a.seeds)
        feats = features(A, x_all, sigma, r["samples"], 1, a.batch, ks)
        res = {"K": {}, "solver_seconds": float(r["solver_seconds"]), "feature_seconds": time.perf_counter() - t1}
        for ki, K, obj in [(i, k, "balanced") for i, k in enumerate(ks)] + [(len(ks) - 1, a.seeds, "narrow")]:
            mean = r["samples"][:K].mean(0)
            for alpha in a.alphas:
                ev = evaluate(truth, mean, feats[ki], a.fit, alpha, a.delta, a.splits, a.cal, seed=3, objective=obj)
                res["K"][f"{K}_{alpha}_{obj}"] = {k: v for k, v in ev.items() if k != "rule_obj"}
                ok = float(np.mean(np.array(ev["risk"]) <= alpha))
                okc = float(np.mean(np.array(ev["risk_const"]) <= alpha))
                rows.append(f"| {task} | {K}{'' if obj == 'balanced' else ' narrow'} | {alpha:g} | {ok:.2f} ({np.mean(ev['risk']):.4f}) | {okc:.2f} "
                            f"({np.mean(ev['risk_const']):.4f}) | {np.mean(ev['width']):.4f} | "
                            f"{np.mean(ev['width_const']):.4f} | {1 - np.mean(ev['width']) / np.mean(ev['width_const']):+.0%} | "
                            f"{ev['corr']:.2f} | {', '.join(f'{w:.2f}' for w in ev['rule'])} |")
                print(rows[-1], flush=True)
                if K == a.seeds and alpha == a.alphas[0] and obj == "balanced":
                    res["rule_obj"], res["lambda_pool"] = ev["rule_obj"], ev["lambda_pool"]
        res["frames_needed"] = frames_needed(truth, r["samples"].mean(0), feats[-1], a.fit, a.alphas, a.delta)
        print(f"  frames needed {task}: {res['frames_needed']}", flush=True)
        if kind is not None and a.hallucination:
            res["hallucination"] = hallucination(prior, task, kind, x_all, res, a, cache, tag)
            print(f"  hallucination {task}: {res['hallucination']}", flush=True)
        res.pop("rule_obj", None)
        res["wall_seconds"] = time.perf_counter() - t0
        summary["tasks"][task] = res
    print("\n| task | K | α | splits with test miscoverage ≤ α (mean) | constant band: same | mean width | constant "
          "width | narrower | corr(width, \\|err\\|) | rule weights (const, spread, posterior sd, structure) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    cost(prior, a, x_all, summary)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"bounds_{tag}.json").write_text(json.dumps(summary, indent=1, default=float))
    report(summary)


def report(summary: dict) -> None:
    """The summary tables of docs/audit.md §6.3 from a run's JSON (``--report FILE`` prints them again)."""
    tasks, K = summary["tasks"], summary["settings"]["seeds"]
    alphas = summary["settings"]["alphas"]
    print("\n| task | α | splits with test miscoverage ≤ α | mean test miscoverage | mean width | constant band "
          "| narrower | corr(width, \\|error\\|) |\n|---|---|---|---|---|---|---|---|")
    for t, r in tasks.items():
        for al in alphas:
            e = r["K"][f"{K}_{al}_balanced"]
            print(f"| {t} | {al:g} | {np.mean(np.array(e['risk']) <= al):.2f} | {np.mean(e['risk']):.4f} | "
                  f"{np.mean(e['width']):.3f} | {np.mean(e['width_const']):.3f} | "
                  f"{1 - np.mean(e['width']) / np.mean(e['width_const']):.0%} | {e['corr']:.2f} |")
    print(f"\n| task | α | narrower than the constant band: K = 1 / 2 / {K} (balanced) | K = {K} narrow | corr K = 1 / 2 / "
          f"{K} / narrow |\n|---|---|---|---|---|")
    for t, r in tasks.items():
        for al in alphas:
            es = [r["K"][f"{k}_{al}_balanced"] for k in (1, 2, K)] + [r["K"][f"{K}_{al}_narrow"]]
            nar = [f"{1 - np.mean(e['width']) / np.mean(e['width_const']):.0%}" for e in es]
            corr = " / ".join(f"{e['corr']:.2f}" for e in es)
            print(f"| {t} | {al:g} | {' / '.join(nar[:3])} | {nar[3]} | {corr} |")
    print("\n| task: inserted structure | truth covered: region / rest | region's width / rest (model units) | "
          "regions unresolved at --max-width = contrast (rest) | at the default 0.2 (rest) |\n|---|---|---|---|---|")
    names = {"sr4": "×4 SR: period-2 lines", "inpaint": "box hole: bright disk", "mri4": "MRI R = 8: lesion",
             "ct30": "CT 30 views: 1-px line"}
    for t, r in tasks.items():
        h = r.get("hallucination")
        if h:
            print(f"| {names.get(t, t)} (contrast {h['max_width']:g}) | {h['covered_in_region']:.2f} / {h['covered_elsewhere']:.2f} | "
                  f"{h['width_in_region']:.3f} / {h['width_elsewhere']:.3f} | {h['regions_unresolved']:.2f} "
                  f"({h['pixels_unresolved_elsewhere']:.2f}) | {h['regions_unresolved_default']:.2f} "
                  f"({h['pixels_unresolved_elsewhere_default']:.2f}) |")
    if "cost" in summary:
        c = summary["cost"]
        print(f"\ncost: one run {c['one_run_s']:.1f} s, K = {K} + features {c['bounds_K_s']:.1f} s: {c['ratio']:.2f}×")


def frames_needed(truth, mean, feats, fit, alphas, delta, draws=20) -> dict:
    """How the calibration-set size n sets the width: λ certified on n frames drawn (with replacement
    beyond the pool) from the pool, its risk on the whole pool, and its width relative to the λ that
    gives exactly α on the pool (the width an infinite calibration set would approach)."""
    err = np.abs(truth - mean)[:, 0]
    out = {}
    for alpha in alphas:
        rule = fit_scale_rule(feats[:fit], err[:fit], alpha)
        s = rule.scale(feats[fit:])
        r = ratios(err[fit:], s)
        ideal = float(np.quantile(np.concatenate([x.ravel() for x in r]), 1 - alpha))
        rng = np.random.default_rng(5)
        for n in (30, 60, 120, 240, 480):
            lam, risk = [], []
            for _ in range(draws):
                idx = rng.choice(len(r), n, replace=n > len(r))
                try:
                    lam.append(rcps_lambda([r[i] for i in idx], alpha, delta)["lambda"])
                except ValueError:  # fewer frames than α, δ need
                    break
                risk.append(float((err[fit:] > lam[-1] * s).mean()))
            if lam:
                out[f"{alpha:g}_{n}"] = {"risk": float(np.mean(risk)), "width_vs_ideal": float(np.mean(lam) / ideal)}
    return out


def hallucination(prior, task, kind, x_all, res, a, cache, tag) -> dict:
    """Insert the structure into ``--hallucination`` pool frames, reconstruct, bound, score."""
    n = a.size
    rule, lam = res["rule_obj"], res["lambda_pool"]
    if task == "mri4":  # the lesion experiment runs at R = 8: its own rule and λ from a pool at R = 8
        task = "mri8"
        A8, s8, _ = task_operator("mri8", n)
        m = a.fit + a.mri8_pool
        x8 = x_all[:m]
        r8 = load_or_run(cache, f"mri8_{tag}_{m}", lambda: reconstruct(prior, A8, x8, s8, a.steps, a.seeds, 1, a.batch))
        f8 = features(A8, x8, s8, r8["samples"], 1, a.batch, (a.seeds,))[0]
        ev = evaluate(x8.numpy(), r8["samples"].mean(0), f8, a.fit, a.alphas[0], a.delta, 1, min(a.cal, m - a.fit), 3)
        rule, lam = ev["rule_obj"], ev["lambda_pool"]
    A, sigma, _ = task_operator(task, n)
    x0 = x_all[a.fit:a.fit + a.hallucination]
    xs, reg, contrast = insert(x0, kind, n)
    r = load_or_run(cache, f"hall_{task}_{tag}_{a.hallucination}",
                    lambda: reconstruct(prior, A, xs, sigma, a.steps, a.seeds, 2, a.batch))
    mean = r["samples"].mean(0)[:, 0]
    s = rule.scale(features(A, xs, sigma, r["samples"], 2, a.batch, (a.seeds,))[0])
    err = np.abs(xs.numpy()[:, 0] - mean)
    width = 2 * lam * s
    reg = reg.numpy()
    un = width > contrast
    ud = width > 0.2  # the audit's default --max-width: 10 % of the intensity range (0.2 model units)
    return {"covered_in_region": float((err[:, reg] <= lam * s[:, reg]).mean()),
            "covered_elsewhere": float((err[:, ~reg] <= lam * s[:, ~reg]).mean()),
            "regions_unresolved": float((un[:, reg].mean(1) >= 0.5).mean()),
            "pixels_unresolved_elsewhere": float(un[:, ~reg].mean()),
            "regions_unresolved_default": float((ud[:, reg].mean(1) >= 0.5).mean()),
            "pixels_unresolved_elsewhere_default": float(ud[:, ~reg].mean()),
            "width_in_region": float(width[:, reg].mean()), "width_elsewhere": float(width[:, ~reg].mean()),
            "error_in_region": float(err[:, reg].mean()), "max_width": contrast, "frames": int(x0.shape[0])}


def cost(prior, a, x_all, summary) -> None:
    """K seeds + features against one run, side by side on the same 8 frames (deblurring)."""
    A, sigma, _ = task_operator("deblur", a.size)
    x = x_all[:8]
    y = measure(A, x, sigma, 0)
    noise = operators.GaussianNoise(sigma)

    def one_run() -> float:
        t = time.perf_counter()
        ddiff.DDiff(prior, **ddiff.DDiff.auto(a.steps)).solve(y, A, noise, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - t

    ddiff.DDiff(prior, **ddiff.DDiff.auto(2)).solve(y, A, noise)  # warm-up (thread pools, first-call costs)
    before = one_run()
    t = time.perf_counter()
    r = ddiff.SeedMean(ddiff.DDiff(prior, **ddiff.DDiff.auto(a.steps)), a.seeds, keep_samples=True).solve(
        y, A, noise, generator=torch.Generator().manual_seed(0))
    bound_features(r.samples, A, noise, y)
    k = time.perf_counter() - t
    one = 0.5 * (before + one_run())  # the single run timed before and after: load drifts on a shared machine
    summary["cost"] = {"one_run_s": one, "bounds_K_s": k, "ratio": k / one}
    print(f"\ncost (8 frames {a.size}², {a.steps} steps, side by side): one run {one:.1f} s, K = {a.seeds} seeds + "
          f"features {k:.1f} s: {k / one:.2f}×")


if __name__ == "__main__":
    main()
