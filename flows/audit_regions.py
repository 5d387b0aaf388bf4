"""The audit of a tiled reconstruction, region by region: :func:`ddiff.audit.audit`'s frame numbers
and maps without holding a frame.

Room: ``flows`` — torch, ``operators``, ``ddiff.audit`` (every statistic), ``storage`` (reads).

:class:`RegionAudit` cuts a frame's measurement grid (the input's pixels) into blocks of
``REGION`` pixels (a multiple of the audit's cell size ``wm``, so the blocks hold whole cells of the
frame's one cell grid) and, per block, reads ``x̂`` with a margin of ``wm`` measurement pixels plus
the operator's reach (``halo``, rounded up to the grid factor ``f``), applies the operator cut to
that window (:meth:`operators.ForwardModel.tile_operator`), and keeps the entries of the block:

* ``A(x̂)ᵢ`` depends only on the image within ``halo`` of entry ``i``, which the window holds; the
  entries the frame audit leaves out (within ``halo`` of the frame edge, invalid, unobserved) are
  left out here, so the per-entry ``d, e, v, κ₃`` (:func:`ddiff.audit.elementwise_stats`) are the
  frame's and the frame sums ``S, E, V, K₃, m`` are sums over blocks;
* the sliding windows (display map ``window_p``) see the ``wm`` margin; at the frame edge the
  block's zero padding is the frame's;
* the disjoint cells' p-values are collected for the whole frame (``1/wm²`` of its pixels) and the
  multiplicity control (:func:`ddiff.audit.fwer_threshold`) runs once over all of them, as on a
  whole frame; a second pass writes the flag map block by block.

Memory: a few blocks' arrays (``REGION = 512``: ~50 MB) plus the frame's cell p-values, whatever the
frame size. ``tests/test_audit_regions.py`` checks the numbers equal the whole-frame ``audit``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import operators
import storage
from ddiff.audit import AuditResult, elementwise_stats, fwer_threshold, observed_mask, scaled_chi2_cdf, scaled_chi2_sf
from ddiff.audit import window_sums

from . import tiles as T
from .noise import noise_model

__all__ = ["REGION", "RegionAudit", "FrameAudit"]

REGION = 512  # block side on the measurement grid (rounded to whole cells)


@dataclass
class FrameAudit:
    """One frame's audit: sums over observed entries ``S, E, V, K₃``, ``m`` real entries, the cell
    p-values ``(ny, nx)`` (NaN: nothing observed) and their flags."""

    stat: float
    mean: float
    var: float
    k3: float
    dof: float
    cell_p: np.ndarray
    cell_flag: np.ndarray | None = None
    cell_none: np.ndarray | None = None  # cells inside the audited area with no valid measurement: prior only


class RegionAudit:
    """The audit of one tiled output, frame by frame and block by block (see the module docstring)."""

    def __init__(self, out: storage.OutputStore, stack: storage.Stack, *, alpha=0.05, window=16, control="sidak",
                 region: int = REGION):
        cfg = out.manifest["config"]
        self.out, self.stack, self.alpha, self.window, self.control = out, stack, float(alpha), int(window), control
        self.f = int(out.manifest["scale"])
        self.H, self.W = out.plan.frame_shape
        self.op = T.build_operator(cfg["operator"]["name"], cfg["operator"]["params"], (self.H * self.f, self.W * self.f))
        self.noise = noise_model(cfg["noise"], stack)
        halo = getattr(self.op, "halo", None)
        if halo is None:
            raise ValueError("RegionAudit: a global operator (halo=None) is audited on whole frames")
        self.halo = int(halo)
        self.mapping = ("same", 0) if self.f == 1 else ("down", self.f)
        self.wm = max(1, int(round(self.window / self.f)))
        self.step = max(self.wm, (int(region) // self.wm) * self.wm)
        self.border = self.halo if self.f == 1 else -(-self.halo // self.f)  # excluded edge, measurement px
        self.pad = -(-self.halo // self.f)  # the operator's reach in measurement px
        self.ny, self.nx = -(-self.H // self.wm), -(-self.W // self.wm)

    # ---------------------------------------------------------------- geometry
    def blocks(self):
        """``(y0, y1, x0, x1)`` blocks of the measurement grid, in row order."""
        for y0 in range(0, self.H, self.step):
            for x0 in range(0, self.W, self.step):
                yield y0, min(self.H, y0 + self.step), x0, min(self.W, x0 + self.step)

    def _window(self, y0, y1, x0, x1, margin):
        """Measurement window around a block (``margin`` + reach, clipped to the frame)."""
        m = margin + self.pad
        return max(0, y0 - m), min(self.H, y1 + m), max(0, x0 - m), min(self.W, x1 + m)

    # ---------------------------------------------------------------- per block
    def _entries(self, frame: int, block):
        """Per-entry ``(d, e, v, κ₃)`` (1, C', h, w) masked to the frame audit's entries, on the
        block plus ``wm`` margin; and that margin's offsets ``(oy, ox)`` of the block inside it."""
        y0, y1, x0, x1 = block
        wy0, wy1, wx0, wx1 = self._window(y0, y1, x0, x1, self.wm)
        f = self.f
        x = torch.from_numpy(self.out.intensity.to_model(self.out.recon()[frame, :, wy0 * f:wy1 * f, wx0 * f:wx1 * f]))[None]
        y = self.stack.to_model(self.stack.array[frame, :, wy0:wy1, wx0:wx1])
        valid = np.isfinite(y)
        if self.stack.valid is not None:
            valid &= np.asarray(self.stack.valid[frame, :, wy0:wy1, wx0:wx1])
        op = self.op.tile_operator(wy0 * f, wx0 * f, (wy1 - wy0) * f, (wx1 - wx0) * f)
        yt = torch.from_numpy(np.where(valid, y, np.float32(0)))[None]
        if not valid.all():
            op = operators.Validity(op, torch.from_numpy(valid)[None], fill=self.noise.neutral())
            yt = op.apply(yt)
        with torch.no_grad():
            Ax = op(x)
            obs = observed_mask(op, x, yt)
        # the frame audit's exclude_border: entries within `border` of the frame edge
        gy, gx = np.arange(wy0, wy1), np.arange(wx0, wx1)
        b = self.border
        core = torch.from_numpy(((gy >= b) & (gy < self.H - b))[:, None] & ((gx >= b) & (gx < self.W - b))[None, :])
        obs = obs & core
        self.noise.validate(yt)
        if yt.is_complex():  # tiled operators are image-domain; complex data (k-space) is audited on whole frames
            raise ValueError("RegionAudit: complex measurements are audited on whole frames")
        stats = tuple(torch.where(obs, t, 0.0) for t in elementwise_stats(yt, Ax, self.noise))
        # the margin actually kept around the block (the reach `pad` is cut off)
        ky0, ky1, kx0, kx1 = max(0, y0 - self.wm), min(self.H, y1 + self.wm), max(0, x0 - self.wm), min(self.W, x1 + self.wm)
        cut = (slice(ky0 - wy0, ky1 - wy0), slice(kx0 - wx0, kx1 - wx0))
        stats = tuple(t[..., cut[0], cut[1]] for t in stats)
        return stats, obs[..., cut[0], cut[1]], (y0 - ky0, x0 - kx0), core[cut[0], cut[1]]

    def _maps(self, maps, off, shape, sliding: bool):
        """Window sums of the channel-summed ``maps`` for the block at ``off`` of size ``shape``."""
        oy, ox = off
        h, w = shape
        if sliding:
            return [window_sums(t, self.wm, sliding=True)[:, oy:oy + h, ox:ox + w] for t in maps]
        return [window_sums(t[:, oy:oy + h, ox:ox + w], self.wm, sliding=False) for t in maps]

    # ---------------------------------------------------------------- per frame
    def frame(self, frame: int, *, on_window_p: Callable | None = None) -> FrameAudit:
        """Pass 1 over the blocks of ``frame``: frame sums, cell p-values, and (``on_window_p``) the
        sliding-window p map of each block on the image grid: ``on_window_p(y0, x0, map)`` (image px)."""
        S = E = V = K3 = 0.0
        m = 0
        cell_p = np.full((self.ny, self.nx), np.nan)
        cell_none = np.zeros((self.ny, self.nx), bool)
        for block in self.blocks():
            y0, y1, x0, x1 = block
            stats, obs, off, core = self._entries(frame, block)
            oy, ox = off
            inner = [t[..., oy:oy + y1 - y0, ox:ox + x1 - x0] for t in stats]
            S, E, V, K3 = (acc + float(t.sum()) for acc, t in zip((S, E, V, K3), inner))
            m += int(obs[..., oy:oy + y1 - y0, ox:ox + x1 - x0].sum())
            maps = [t.sum(1) for t in stats]  # sum channels: (1, h, w)
            Sc, Ec, Vc, K3c = self._maps(maps, off, (y1 - y0, x1 - x0), sliding=False)
            pc = torch.where(Ec > 0, scaled_chi2_sf(Sc, Ec, Vc, K3c), torch.full_like(Sc, float("nan")))
            cy, cx = slice(y0 // self.wm, y0 // self.wm + pc.shape[-2]), slice(x0 // self.wm, x0 // self.wm + pc.shape[-1])
            cell_p[cy, cx] = pc[0].numpy()
            # a cell of the audited area (not the excluded frame edge) without one valid measurement
            inside = self._maps([core[None].double()], off, (y1 - y0, x1 - x0), sliding=False)[0]
            cell_none[cy, cx] = ((inside > 0) & ~(Ec > 0))[0].numpy()
            if on_window_p is not None:
                Sw, Ew, Vw, K3w = self._maps(maps, off, (y1 - y0, x1 - x0), sliding=True)
                pw = torch.where(Ew > 0, scaled_chi2_sf(Sw, Ew, Vw, K3w), torch.full_like(Sw, float("nan")))
                on_window_p(y0 * self.f, x0 * self.f, self._to_image(pw[0].numpy()))
        fa = FrameAudit(S, E, V, K3, float(m), cell_p, cell_none=cell_none)
        fa.cell_flag = fwer_threshold(torch.from_numpy(cell_p).reshape(1, -1), self.alpha, self.control).reshape(
            cell_p.shape).numpy()
        return fa

    def _to_image(self, a: np.ndarray) -> np.ndarray:
        return a if self.f == 1 else a.repeat(self.f, 0).repeat(self.f, 1)

    def flag_blocks(self, fa: FrameAudit, cells: np.ndarray | None = None):
        """Pass 2: ``(y0, x0, flag map)`` blocks on the image grid (flagged cells, as ``audit``'s ``flag_map``;
        ``cells``: another cell map, e.g. ``fa.cell_none``)."""
        cells = fa.cell_flag if cells is None else cells
        for y0, y1, x0, x1 in self.blocks():
            c = cells[y0 // self.wm:-(-y1 // self.wm), x0 // self.wm:-(-x1 // self.wm)]
            fm = c.repeat(self.wm, 0).repeat(self.wm, 1)[: y1 - y0, : x1 - x0]
            yield y0 * self.f, x0 * self.f, self._to_image(fm)

    def tile_flags(self, fa: FrameAudit) -> np.ndarray:
        """``(n_tiles,)`` bool: a flagged cell touches the tile's core (image grid), as ``flag_map[core].any()``."""
        cell = self.wm * self.f
        out = np.zeros(self.out.plan.n_tiles, bool)
        for k, t in enumerate(self.out.out_plan):
            y0, y1, x0, x1 = t.core
            out[k] = fa.cell_flag[y0 // cell:-(-y1 // cell), x0 // cell:-(-x1 // cell)].any()
        return out

    def result(self, frames: list[FrameAudit]) -> AuditResult:
        """An :class:`~ddiff.audit.AuditResult` of ``frames`` with the per-frame numbers and the
        cell maps; per-pixel maps are not held (``residual``/``deviance``/``observed`` empty), and the
        whole-frame paper numbers ``chi2_paper``, ``nll``, ``residual_gap`` are NaN (the per-tile
        diagnostics carry them)."""
        def t(vals):
            return torch.tensor(vals, dtype=torch.float64)
        S, E, V, K3, m = (t([getattr(fa, k) for fa in frames]) for k in ("stat", "mean", "var", "k3", "dof"))
        p, nan, B = scaled_chi2_sf(S, E, V, K3), torch.full((len(frames),), math.nan, dtype=torch.float64), len(frames)
        sd = V.sqrt()
        return AuditResult(
            alpha=self.alpha, control=self.control, window=self.window, window_meas=self.wm, exclude_border=self.halo,
            noise=repr(self.noise), mapping=self.mapping, chi2_nu=S / m.clamp_min(1), chi2_paper=nan, dof=m, stat=S,
            stat_mean=E, stat_std=sd, stat_k3=K3, z=(S - E) / sd.clamp_min(1e-300), p_value=p,
            p_value_low=scaled_chi2_cdf(S, E, V, K3), nll=nan, residual_gap=nan, tile_flag=p < self.alpha,
            residual=torch.empty(B, 0), deviance=torch.empty(B, 0), observed=torch.empty(B, 0, dtype=torch.bool),
            region_p=torch.from_numpy(np.stack([fa.cell_p for fa in frames])),
            region_flag=torch.from_numpy(np.stack([fa.cell_flag for fa in frames])))
