"""Flag maps as OME-NGFF label images over the reconstruction (``labels/<name>`` of an output).

Room: ``storage`` — numpy, zarr (through :mod:`storage.pyramid`).
"""
from __future__ import annotations

import numpy as np
import zarr
from zarr.storage import LocalStore

from .output import _as_output
from .pyramid import build_pyramid, label_layout, write_label
from .safety import require_lock, writes

__all__ = ["LABELS", "write_flag_label", "label_pyramid"]


#: label images the pipeline writes: name -> (colours, properties)
LABELS = {
    "audit_flags": ({1: (255, 0, 255, 160)}, {1: {"class": "flagged: residual structure the noise model does not "
                                                           "explain (hallucination audit, windows with p < alpha)"}}),
    "prior_filled": ({1: (255, 160, 0, 160)}, {1: {"class": "prior-filled: seeds differ where the data is blind"}}),
    "prior_only": ({1: (0, 160, 255, 160)}, {1: {"class": "no measurements: prior only (audit windows without one "
                                                           "valid measured value; the audit cannot test them)"}}),
    "unresolved": ({1: (0, 200, 255, 160)}, {1: {"class": "unresolved: the calibrated bounds are wider than "
                                                          "--max-width (the data cannot pin the value there)"}}),
}


@writes("frame {frame} of the label image labels/{name}")
def write_flag_label(out, name: str, frame: int, mask: np.ndarray, *, run_id: str | None = None,
                     origin: tuple[int, int] | None = None, pyramid: bool = True) -> None:
    """Write a boolean ``(H·f, W·f)`` map of ``frame`` as the OME-NGFF label image ``labels/<name>``
    (value 1 where True), with the reconstruction's axes, levels and physical scale, so viewers
    overlay it on the image (names and colours: :data:`LABELS`; other names get magenta).
    Region by region (a frame larger than memory): ``origin=(y0, x0)`` writes an ``(h, w)`` block
    there, ``pyramid=False`` defers the coarser levels to :func:`label_pyramid` after the last block."""
    out = _as_output(out)
    require_lock(out.path, run_id)
    if not 0 <= int(frame) < out.n_frames:
        raise ValueError(f"frame {frame} out of range: the output has {out.n_frames} frames")
    colors, props = LABELS.get(name, ({1: (255, 0, 255, 160)}, {1: {"class": name}}))
    scale, units = out.geometry
    write_label(out.path, name, int(frame), np.asarray(mask).astype(np.uint8), layout=out.layout, levels=out.levels,
                chunks=tuple(out.manifest["recon"]["chunks"]), scale=scale, units=units, colors=colors,
                properties=props, origin=origin, pyramid=pyramid)


@writes("the pyramid of frame {frame} of the label image labels/{name}")
def label_pyramid(out, name: str, frame: int, *, run_id: str | None = None) -> None:
    """Build the coarser levels of ``frame`` of ``labels/<name>`` (max of 2×2 blocks, chunk by chunk)."""
    out = _as_output(out)
    require_lock(out.path, run_id)
    g = zarr.open_group(LocalStore(out.path), mode="r+", use_consolidated=False)[f"labels/{name}"]
    build_pyramid(g, label_layout(out.layout), out.levels, int(frame), reduce="max")
