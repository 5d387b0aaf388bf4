"""Tile plans: which pixels each tile reads, solves, blends and finally writes.

Room: ``storage`` — numpy only (no zarr here; pure geometry, picklable, cheap to pass to tasks).

Geometry for a frame ``(H, W)``, tile core size ``(ty, tx)``, overlap ``o`` and operator halo ``h``
(all in pixels, boxes are half-open ``(y0, y1, x0, x1)``):

* **core** — the grid cells ``[i·ty, min((i+1)·ty, H)) × [j·tx, …)``. Cores partition the frame
  exactly, and the output arrays use chunks of exactly ``(ty, tx)`` spatially, so every core is
  exactly one chunk: the *final* write regions of different tiles never share a chunk.
* **blend** (= the region the solver reconstructs) — the core grown by ``o`` on every side,
  clamped to the frame. Neighbouring blend windows overlap by ``2·o`` around each core boundary.
* **read** — the blend window grown by ``h`` on every side. Parts outside the frame are filled by
  ``reflect`` padding (numpy ``"reflect"`` = torch ``"reflect"``: mirror without repeating the
  edge pixel), so the read array always has shape ``blend + 2·h``; ``Tile.inner`` slices the
  blend window back out of it. ``halo=None`` (global operators) gives one tile per frame: core =
  blend = read = the whole frame, no overlap, no padding.
* **weights** — separable raised-cosine ramps: across a core boundary at ``b`` the left tile has
  ``cos²(π/2·s)`` and the right one ``sin²(π/2·s)``, ``s = (u − (b − o) + ½)/(2o)`` for
  ``u ∈ [b − o, b + o)``; 1 elsewhere inside the blend window, 0 outside. ``cos² + sin² = 1`` and
  the 2-D weight is the product of the 1-D ones, so the weights of all tiles covering a pixel sum
  to 1 everywhere (requires ``2·o ≤ min(ty, tx)`` so ramps of one tile never overlap).

Why two passes (see :mod:`storage.output`): a pixel near a boundary needs the solutions of up to
four tiles, so no single tile can write its final core alone. Pass 1: each tile writes its
unweighted blend-window solution into its *own* staging slot (one chunk per (frame, tile)).
Pass 2: ``assemble`` computes each core as ``Σ w_j x_j`` over the tiles whose blend windows touch
it and writes the core's single chunk. Writers never share a chunk in either pass.

``TilePlan.scaled(f)`` is the same plan on an ``f``-times finer grid (super-resolution outputs).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

__all__ = ["TilePlan", "Tile"]

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TilePlan`. Boxes are ``(y0, y1, x0, x1)`` in frame pixels."""

    index: int
    row: int
    col: int
    core: Box
    blend: Box
    read: Box

    @property
    def blend_shape(self) -> tuple[int, int]:
        return self.blend[1] - self.blend[0], self.blend[3] - self.blend[2]

    @property
    def read_shape(self) -> tuple[int, int]:
        return self.read[1] - self.read[0], self.read[3] - self.read[2]

    @property
    def inner(self) -> tuple[slice, slice]:
        """Slices of the blend window inside the read array."""
        oy, ox = self.blend[0] - self.read[0], self.blend[2] - self.read[2]
        return slice(oy, oy + self.blend_shape[0]), slice(ox, ox + self.blend_shape[1])

    @property
    def core_in_blend(self) -> tuple[slice, slice]:
        """Slices of the core inside the blend window."""
        oy, ox = self.core[0] - self.blend[0], self.core[2] - self.blend[2]
        return slice(oy, oy + self.core[1] - self.core[0]), slice(ox, ox + self.core[3] - self.core[2])


def _ramp_1d(a: int, b: int, lo: int, hi: int, n: int, o: int) -> np.ndarray:
    """1-D raised-cosine weight on ``[lo, hi)`` for the core ``[a, b)`` of a length-``n`` axis."""
    u = np.arange(lo, hi, dtype=np.float64)
    w = np.ones_like(u)
    if o > 0:
        if a > 0:  # left neighbour exists: rising ramp over [a - o, a + o)
            m = (u >= a - o) & (u < a + o)
            w[m] = np.sin(0.5 * np.pi * (u[m] - (a - o) + 0.5) / (2 * o)) ** 2
        if b < n:  # right neighbour exists: falling ramp over [b - o, b + o)
            m = (u >= b - o) & (u < b + o)
            w[m] = np.cos(0.5 * np.pi * (u[m] - (b - o) + 0.5) / (2 * o)) ** 2
    return w


@dataclass(frozen=True)
class TilePlan:
    """Tiles of a ``(H, W)`` frame: ``TilePlan((H, W), tile=256, halo=op.halo, overlap=32)``.

    ``tile`` int or ``(ty, tx)`` (clipped to the frame), ``halo`` int ≥ 0 or ``None`` (whole
    frames), ``overlap`` int with ``0 ≤ 2·overlap ≤ min(ty, tx)``.
    """

    frame_shape: tuple[int, int]
    tile: int | tuple[int, int] = 256
    halo: int | None = 0
    overlap: int = 0

    def __post_init__(self):
        H, W = (int(v) for v in self.frame_shape)
        if H < 1 or W < 1:
            raise ValueError(f"frame_shape {self.frame_shape} must be positive")
        object.__setattr__(self, "frame_shape", (H, W))
        if self.halo is None:
            object.__setattr__(self, "tile", (H, W))
            object.__setattr__(self, "overlap", 0)
            return
        ty, tx = (self.tile, self.tile) if isinstance(self.tile, (int, np.integer)) else tuple(self.tile)
        ty, tx = min(int(ty), H), min(int(tx), W)
        if ty < 1 or tx < 1:
            raise ValueError(f"tile {self.tile} must be positive")
        object.__setattr__(self, "tile", (ty, tx))
        if int(self.halo) < 0:
            raise ValueError(f"halo={self.halo} must be >= 0 or None (whole frames)")
        o = int(self.overlap)
        if o < 0 or 2 * o > min(ty, tx):
            raise ValueError(f"overlap={o} must satisfy 0 <= 2*overlap <= min(tile)={min(ty, tx)}; "
                             "lower the overlap or raise the tile size")

    # ---- grid -------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of tiles."""
        (H, W), (ty, tx) = self.frame_shape, self.tile
        return math.ceil(H / ty), math.ceil(W / tx)

    @property
    def n_tiles(self) -> int:
        r, c = self.grid
        return r * c

    @property
    def chunks(self) -> tuple[int, int]:
        """Spatial chunk shape the output arrays must use (= the core size)."""
        return self.tile

    @property
    def slot_shape(self) -> tuple[int, int]:
        """Largest blend window: the staging slot shape."""
        (H, W), (ty, tx), o = self.frame_shape, self.tile, self.overlap
        return min(H, ty + 2 * o), min(W, tx + 2 * o)

    @cached_property
    def tiles(self) -> tuple[Tile, ...]:
        (H, W), (ty, tx), o = self.frame_shape, self.tile, self.overlap
        h = 0 if self.halo is None else int(self.halo)
        rows, cols = self.grid
        out = []
        for r in range(rows):
            for c in range(cols):
                core = (r * ty, min(H, (r + 1) * ty), c * tx, min(W, (c + 1) * tx))
                blend = (max(0, core[0] - o), min(H, core[1] + o), max(0, core[2] - o), min(W, core[3] + o))
                read = (blend[0] - h, blend[1] + h, blend[2] - h, blend[3] + h)
                out.append(Tile(r * cols + c, r, c, core, blend, read))
        return tuple(out)

    def __getitem__(self, k: int) -> Tile:
        return self.tiles[k]

    def __len__(self) -> int:
        return self.n_tiles

    def __iter__(self):
        return iter(self.tiles)

    def tile_of(self, tile: "int | Tile") -> Tile:
        if isinstance(tile, Tile):
            return tile
        k = int(tile)
        if not 0 <= k < self.n_tiles:
            raise ValueError(f"tile {k} out of range: this plan has {self.n_tiles} tiles")
        return self.tiles[k]

    # ---- blending ---------------------------------------------------------------------------
    def weights(self, tile: "int | Tile") -> np.ndarray:
        """Raised-cosine blend weights over the tile's blend window, float64 ``(bh, bw)``."""
        t = self.tile_of(tile)
        (H, W), o = self.frame_shape, self.overlap
        wy = _ramp_1d(t.core[0], t.core[1], t.blend[0], t.blend[1], H, o)
        wx = _ramp_1d(t.core[2], t.core[3], t.blend[2], t.blend[3], W, o)
        return np.outer(wy, wx)

    def contributors(self, tile: "int | Tile") -> list[Tile]:
        """Tiles whose blend windows intersect the core of ``tile`` (itself included)."""
        t = self.tile_of(tile)
        y0, y1, x0, x1 = t.core
        return [s for s in self.tiles
                if abs(s.row - t.row) <= 1 and abs(s.col - t.col) <= 1
                and s.blend[0] < y1 and s.blend[1] > y0 and s.blend[2] < x1 and s.blend[3] > x0]

    # ---- reading ----------------------------------------------------------------------------
    def read_window(self, tile: "int | Tile") -> tuple[tuple[slice, slice], tuple[tuple[int, int], tuple[int, int]]]:
        """In-frame slices to read and the ``((top, bottom), (left, right))`` reflect padding."""
        t = self.tile_of(tile)
        H, W = self.frame_shape
        y0, y1, x0, x1 = t.read
        cy0, cy1, cx0, cx1 = max(0, y0), min(H, y1), max(0, x0), min(W, x1)
        return (slice(cy0, cy1), slice(cx0, cx1)), ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1))

    def pad(self, arr: np.ndarray, pads) -> np.ndarray:
        """Reflect-pad the last two axes of ``arr`` (mirror without repeating the edge pixel)."""
        if not any(p for pair in pads for p in pair):
            return arr
        width = [(0, 0)] * (arr.ndim - 2) + list(pads)
        mode = "reflect" if min(arr.shape[-2:]) > 1 else "edge"  # reflect of one pixel is undefined
        return np.pad(arr, width, mode=mode)

    # ---- serialisation ----------------------------------------------------------------------
    def scaled(self, f: int) -> "TilePlan":
        """The same plan on an ``f``-times finer grid (for super-resolved outputs)."""
        f = int(f)
        if f < 1:
            raise ValueError(f"scale factor {f} must be a positive integer")
        (H, W), (ty, tx) = self.frame_shape, self.tile
        return TilePlan((H * f, W * f), None if self.halo is None else (ty * f, tx * f),
                        None if self.halo is None else self.halo * f, self.overlap * f)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["frame_shape"], d["tile"] = list(self.frame_shape), list(self.tile)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TilePlan":
        return cls(tuple(d["frame_shape"]), tuple(d["tile"]), d["halo"], d["overlap"])
