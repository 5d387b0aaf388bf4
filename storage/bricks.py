"""Bricks: the unit a volume (z-stack) is solved in — a tile of the y/x plan times a chunk of planes.

Room: ``storage`` — numpy only (reads go through :func:`storage.read_tile`; no torch).

A 3-D operator couples planes (``halo_z`` planes of axial context, e.g. a widefield PSF), so the
frames of one ``(t, ·)`` volume cannot be solved alone. A **brick** is ``(t, j, k)``: the volume at
time ``t``, the ``j``-th chunk of planes of :class:`ZPlan` and tile ``k`` of the 2-D
:class:`~storage.tiling.TilePlan`. Along z:

* **core** — planes ``[j·bz, min((j+1)·bz, Z))``; cores partition the z axis, so every plane (frame)
  is written by exactly one brick per tile and the 2-D staging/blending of :mod:`storage.output`
  (one staging slot per (frame, tile), raised-cosine blend in y/x) is reused unchanged;
* **blend** — the core grown by ``overlap`` planes on both sides, clamped to the stack: the planes
  whose measurements the brick fits (so neighbouring bricks fit the same measurements around their
  common boundary and agree there; only core planes are written — a hard cut, no blending in z);
* **read** — the blend range grown by ``halo_z`` planes on both sides; planes beyond the stack's
  ends are its mirror images (``reflect``: without repeating the end plane — the rule of the volume
  operators' boundary extension).

In y/x a brick reads its tile's read window (``TilePlan``: blend window + halo, reflect padded).
The ledger unit stays ``(frame, tile)``: a brick is done when all its core planes are, and a brick
with any pending plane is solved again whole (deterministic, so the rewritten planes are identical).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .axes import Layout
from .stack import Stack
from .tile_io import read_tile
from .tiling import Tile, TilePlan

__all__ = ["ZPlan", "BrickInput", "reflect_index", "read_brick", "brick_frames", "all_bricks"]


def reflect_index(z: np.ndarray | int, n: int) -> np.ndarray:
    """Plane indices ``z`` (any integers) mirrored into ``[0, n)`` without repeating the end planes."""
    z = np.asarray(z, dtype=np.int64)
    if n == 1:
        return np.zeros_like(z)
    period = 2 * (n - 1)
    m = np.mod(z, period)
    return np.where(m < n, m, period - m)


@dataclass(frozen=True)
class ZPlan:
    """Chunks of ``brick`` planes of a ``planes``-plane stack: each solved with the measurements of its
    core ± ``overlap`` planes (the blend range, clamped to the stack) and read with ``halo`` more
    planes of context on each side."""

    planes: int
    brick: int
    halo: int = 0
    overlap: int = 0

    def __post_init__(self):
        if self.planes < 1 or self.brick < 1 or self.halo < 0 or self.overlap < 0:
            raise ValueError(f"ZPlan(planes={self.planes}, brick={self.brick}, halo={self.halo}, overlap={self.overlap}):"
                             " planes and brick must be >= 1, halo and overlap >= 0")
        object.__setattr__(self, "brick", min(int(self.brick), int(self.planes)))

    @property
    def n_chunks(self) -> int:
        return -(-self.planes // self.brick)

    def core(self, j: int) -> tuple[int, int]:
        """Planes ``[z0, z1)`` chunk ``j`` solves and writes."""
        if not 0 <= j < self.n_chunks:
            raise ValueError(f"z chunk {j} out of range: {self.n_chunks} chunks")
        return j * self.brick, min(self.planes, (j + 1) * self.brick)

    def blend(self, j: int) -> tuple[int, int]:
        """Planes ``[b0, b1)`` whose measurements brick ``j`` fits: the core ± ``overlap``, clamped."""
        z0, z1 = self.core(j)
        return max(0, z0 - self.overlap), min(self.planes, z1 + self.overlap)

    def read(self, j: int) -> np.ndarray:
        """Source plane of every plane the brick reads (blend ± halo, mirrored at the ends)."""
        b0, b1 = self.blend(j)
        return reflect_index(np.arange(b0 - self.halo, b1 + self.halo), self.planes)

    def offset(self, j: int) -> int:
        """Index of the first core plane among the brick's read planes."""
        return self.core(j)[0] - self.blend(j)[0] + self.halo

    def chunk_of(self, z: int) -> int:
        return int(z) // self.brick

    def to_dict(self) -> dict:
        return {"planes": self.planes, "brick": self.brick, "halo": self.halo, "overlap": self.overlap}


@dataclass
class BrickInput:
    """A brick read for solving: ``data`` float32 ``(C, Zr, rh, rw)`` model space, ``valid`` bool of the
    same shape or None (all valid), the y/x ``tile``, and the ``frames`` of its core planes."""

    data: np.ndarray
    valid: np.ndarray | None
    tile: Tile
    frames: list[int]


def brick_frames(layout: Layout, zplan: ZPlan, t: int, j: int) -> list[int]:
    """The frames (``t·Z + z``) of the core planes of chunk ``j`` of volume ``t``."""
    z0, z1 = zplan.core(j)
    return [layout.frame_of(t, z) for z in range(z0, z1)]


def all_bricks(layout: Layout, zplan: ZPlan, plan: TilePlan) -> list[tuple[int, int, int]]:
    """Every ``(t, j, k)`` in a fixed order (time, z chunk, tile)."""
    return [(t, j, k) for t in range(layout.sizes["t"]) for j in range(zplan.n_chunks) for k in range(plan.n_tiles)]


def read_brick(stack: Stack, t: int, j: int, tile: int, plan: TilePlan, zplan: ZPlan) -> BrickInput:
    """Read brick ``(t, j, tile)`` from the (read-only) input: every plane's tile read window
    (:func:`storage.read_tile`, model space) stacked along z, mirrored planes read once."""
    if stack.sizes["z"] != zplan.planes:
        raise ValueError(f"z plan of {zplan.planes} planes does not fit the stack's {stack.sizes['z']}")
    reads: dict[int, object] = {}
    for z in zplan.read(j):
        if int(z) not in reads:
            reads[int(z)] = read_tile(stack, stack.layout.frame_of(t, int(z)), tile, plan)
    planes = [reads[int(z)] for z in zplan.read(j)]
    data = np.stack([p.data for p in planes], axis=1)
    valid = None
    if any(p.valid is not None for p in planes):
        valid = np.stack([np.ones(p.data.shape, bool) if p.valid is None else p.valid for p in planes], axis=1)
    return BrickInput(data, valid, planes[0].tile, brick_frames(stack.layout, zplan, t, j))
