"""``benchmark``: run solvers on held-out crops for one task and write a tidy CSV (minimal wiring).

Room: ``flows`` — prefect, torch, ``operators``, ``ddiff`` (solvers + metrics). The full benchmark
(tables of the paper, baselines, many tasks) is issue 7; this flow is the honest minimum: the
crops are the centre ``crop × crop`` of the held-out parts of scikit-image's bundled images (see
:mod:`flows.demo`), the measurement is ``A(x) + n`` with a seeded generator, and every solver
sees the same measurements. One CSV row per (solver, image, metric):
``solver, image, metric, value, steps, nfe, seconds``; metrics ``psnr``, ``ssim`` (vs. truth)
and ``chi2_nu`` (data fit, ideal 1).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from ddiff.metrics import chi2_reduced, psnr, ssim

from . import tiles as T
from .demo import heldout_images
from .params import SOLVER_NAMES, BenchmarkParams

__all__ = ["benchmark", "heldout_crops"]


def heldout_crops(n: int, crop: int) -> tuple[torch.Tensor, list[str]]:
    """``(n, 1, crop, crop)`` centre crops of the first ``n`` held-out parts (model space)."""
    imgs = heldout_images(crop)[:n]
    if len(imgs) < n:
        raise ValueError(f"only {len(imgs)} held-out images are at least {crop}px; lower n_images or crop")
    out = []
    for _, im in imgs:
        H, W = im.shape
        y0, x0 = (H - crop) // 2, (W - crop) // 2
        out.append(im[y0:y0 + crop, x0:x0 + crop])
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32)), [n for n, _ in imgs]


@flow(name="benchmark", persist_result=False)
def benchmark(params: BenchmarkParams, artifacts: bool = True) -> dict:
    """Write ``params.csv``; returns ``{"csv", "rows", "mean": {solver: {metric: mean}}}``."""
    import ddiff

    from .reconstruct import artifact_key

    p = params if isinstance(params, BenchmarkParams) else BenchmarkParams.model_validate(params)
    logger = get_run_logger()
    x, names = heldout_crops(p.n_images, p.crop)
    prior = T.load_prior_cached(p.prior if p.prior == "default" else str(Path(p.prior)), p.device)
    A = T.build_operator(p.operator.name, p.operator.params, (p.crop, p.crop)).to(p.device)
    noise = p.noise.build()
    x = x.to(p.device)
    with torch.no_grad():
        y = noise.sample(A(x), torch.Generator(device=p.device).manual_seed(p.seed))
    rows, means = [], {}
    for spec in p.solvers:
        kw = spec.resolve(p.operator.name)
        solver = getattr(ddiff, SOLVER_NAMES[spec.name])(prior, **kw)
        gens = [torch.Generator(device=p.device).manual_seed(T.tile_seed(p.seed, 0, i)) for i in range(len(names))]
        res = solver.solve(y, A, noise, generator=gens, x_shape=tuple(x.shape))
        with torch.no_grad():
            metrics = {"psnr": psnr(res.x, x), "ssim": ssim(res.x, x),
                       "chi2_nu": chi2_reduced(y, A(res.x), noise.effective_sigma(y))}
        label = f"{spec.name}(steps={kw.get('steps')})"
        for name, vals in metrics.items():
            for i, img in enumerate(names):
                rows.append({"solver": label, "image": img, "metric": name, "value": float(vals[i]),
                             "steps": kw.get("steps"), "nfe": res.nfe, "seconds": res.seconds / len(names)})
        means[label] = {k: float(v.double().mean()) for k, v in metrics.items()}
        logger.info("%s: %s (%.1fs)", label, means[label], res.seconds)
    path = Path(p.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if artifacts:
        create_table_artifact([{"solver": s, **{k: round(v, 4) for k, v in m.items()}} for s, m in means.items()],
                              key=artifact_key("benchmark", p.csv), description=f"{p.operator.name}: means over {len(names)} crops")
    return {"csv": str(path), "rows": len(rows), "mean": means}
