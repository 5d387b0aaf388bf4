"""The calibrated bounds in the audit: per-frame widths, ``labels/unresolved`` and a width picture.

Room: ``flows`` — numpy, matplotlib (the picture), ``storage``. Called by :mod:`flows.audit` for an
output made with ``ddiff reconstruct --calibration`` (``uncertainty/lower``, ``upper``, ``halfwidth``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import storage

from .calibration import guarantee_sentence

__all__ = ["bounds_audit", "default_max_width"]


def default_max_width(out: storage.OutputStore) -> float:
    """10 % of the intensity range the input maps to model space [−1, 1] (0.2 model units), image units."""
    return 0.1 * abs(float(out.intensity.high) - float(out.intensity.low))


def bounds_audit(out: storage.OutputStore, max_width: float | None, run_id: str, report_dir: Path) -> dict | None:
    """Per frame the mean bound width and the fraction of pixels wider than ``max_width`` (image units;
    None: :func:`default_max_width`), ``labels/unresolved`` (width > max_width), a width picture of frame
    0 in ``report_dir``, and the guarantee line. None for an output without calibrated bounds."""
    if not storage.is_bounded(out.manifest):
        return None
    mw = default_max_width(out) if max_width is None else float(max_width)
    whole = storage.is_frame_output(out)
    if whole:
        cores = [(0, int(out.manifest["image_shape"][0]), 0, int(out.manifest["image_shape"][1]))]
    else:
        cores = [tile.core for tile in out.out_plan]
    rows, first = [], None
    for t in range(out.n_frames):
        wsum = wide = total = 0
        for y0, y1, x0, x1 in cores:
            width = 2 * storage.read_uncertainty(out, t, slice(y0, y1), slice(x0, x1))["halfwidth"].astype(np.float64)
            un = width > mw
            storage.write_flag_label(out, "unresolved", t, un, run_id=run_id, origin=(y0, x0), pyramid=False)
            wsum, wide, total = wsum + float(width.sum()), wide + int(un.sum()), total + un.size
            if t == 0 and whole:
                first = width
        storage.label_pyramid(out, "unresolved", t, run_id=run_id)
        rows.append({"frame": t, "mean_width": wsum / max(total, 1), "unresolved_fraction": wide / max(total, 1)})
    if first is None and out.n_frames and np.prod(out.recon().shape[-2:]) <= 4096 * 4096:
        first = 2 * storage.read_uncertainty(out, 0)["halfwidth"]
    png = None
    if first is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        report_dir.mkdir(parents=True, exist_ok=True)
        png = report_dir / "bounds_width_0.png"
        fig, ax = plt.subplots(figsize=(4.5, 4))
        im = ax.imshow(first, cmap="magma")
        ax.contour(first > mw, levels=[0.5], colors="cyan", linewidths=0.6)
        ax.set_title(f"frame 0: bound width (image units); cyan: > {mw:.3g}")
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.savefig(png, dpi=90, bbox_inches="tight")
        plt.close(fig)
    b = out.manifest["config"]["bounds"]
    frac = float(np.mean([r["unresolved_fraction"] for r in rows])) if rows else 0.0
    line = (f"calibrated bounds (α {b['alpha']:g}, δ {b['delta']:g}, {out.manifest['config'].get('seeds', 1)} seeds): "
            f"mean width {np.mean([r['mean_width'] for r in rows]):.4g} image units; {100 * frac:.2f} % of pixels wider "
            f"than --max-width {mw:.4g} (labels/unresolved). " + guarantee_sentence(b))
    return {"line": line, "frames": rows, "max_width": mw, "unresolved_fraction": frac, "png": png}
