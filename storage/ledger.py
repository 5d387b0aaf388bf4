"""The ledger of an output store: atomic per-(frame, tile) completion markers.

Room: ``storage`` — standard library (+ :mod:`storage.safety`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .safety import atomic_write_json, read_json, safe_subpath

__all__ = ["Ledger"]


class Ledger:
    """Completion markers ``_ledger/<stage>/t<frame>/k<tile>.json`` (stages: solved, assembled)."""

    STAGES = ("solved", "assembled", "pyramid")  # pyramid: one marker per frame, tile 0

    def __init__(self, root: str | os.PathLike, n_frames: int, n_tiles: int):
        self.root = Path(root) / "_ledger"
        self.n_frames, self.n_tiles = n_frames, n_tiles

    def _path(self, frame: int, tile: int, stage: str) -> Path:
        if stage not in self.STAGES:
            raise ValueError(f"stage={stage!r}; use one of {self.STAGES}")
        if not (0 <= int(frame) < self.n_frames and 0 <= int(tile) < self.n_tiles):
            raise ValueError(f"(frame {frame}, tile {tile}) out of range ({self.n_frames} frames, {self.n_tiles} tiles)")
        return safe_subpath(self.root, f"{stage}/t{int(frame):06d}/k{int(tile):06d}.json")

    def is_done(self, frame: int, tile: int, stage: str = "solved") -> bool:
        return self._path(frame, tile, stage).exists()

    def record(self, frame: int, tile: int, stage: str = "solved") -> dict | None:
        p = self._path(frame, tile, stage)
        return read_json(p) if p.exists() else None

    def mark_done(self, frame: int, tile: int, stage: str = "solved", **info) -> None:
        atomic_write_json(self._path(frame, tile, stage), {"frame": int(frame), "tile": int(tile), "stage": stage,
                                                           "time": time.time(), **info})

    def pending(self, stage: str = "solved", frames: range | None = None) -> list[tuple[int, int]]:
        frames = range(self.n_frames) if frames is None else frames
        return [(t, k) for t in frames for k in range(self.n_tiles) if not self.is_done(t, k, stage)]

    def count(self, stage: str = "solved") -> int:
        d = self.root / stage
        return sum(1 for _ in d.glob("t*/k*.json")) if d.exists() else 0
