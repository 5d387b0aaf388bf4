"""The affine intensity map between physical units (stored pixels) and model space ``[-1, 1]``.

Room: ``storage`` — numpy only.

``model = scale * physical + offset`` and ``physical = (model - offset) / scale``, both in float64
arithmetic, returned as float32 for model space. With the default percentile mapping the
``low_percentile`` of the (finite) data goes to ``-1`` and the ``high_percentile`` to ``+1``;
values beyond them map outside ``[-1, 1]`` and are *not* clipped (so the map is exactly
invertible). The percentiles are estimated on a bounded, deterministic subsample gathered while
streaming (:class:`PercentileSampler`), never on the whole stack in memory.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["IntensityMap", "PercentileSampler"]


@dataclass(frozen=True)
class IntensityMap:
    """``model = scale * x + offset``; ``low``/``high`` are the physical values sent to -1/+1."""

    scale: float
    offset: float
    low: float
    high: float
    method: str = "percentile"

    @classmethod
    def from_range(cls, low: float, high: float, method: str = "range") -> "IntensityMap":
        low, high = float(low), float(high)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"intensity range ({low}, {high}) is not finite; the data has no finite values?")
        if high <= low:  # constant image: keep a unit-width window so the map stays invertible
            high = low + 1.0
        scale = 2.0 / (high - low)
        return cls(scale=scale, offset=-1.0 - low * scale, low=low, high=high, method=method)

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """Physical values (any dtype) -> model space float32 (``[-1, 1]`` for in-range values)."""
        return (np.asarray(x, dtype=np.float64) * self.scale + self.offset).astype(np.float32)

    def from_model(self, m: np.ndarray) -> np.ndarray:
        """Model space -> physical units (float32; the caller decides about casting/rounding)."""
        return ((np.asarray(m, dtype=np.float64) - self.offset) / self.scale).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IntensityMap":
        return cls(**{k: d[k] for k in ("scale", "offset", "low", "high", "method")})


class PercentileSampler:
    """Collects a deterministic strided subsample of at most ~``max_samples`` finite values.

    ``total`` is the number of values that will be streamed; every ``stride``-th value of each
    block is kept (stride = ceil(total / max_samples)), so memory is O(max_samples).
    """

    def __init__(self, total: int, max_samples: int = 2_000_000):
        self.stride = max(1, -(-int(total) // int(max_samples)))
        self.parts: list[np.ndarray] = []
        self._phase = 0  # keeps the stride continuous across blocks
        self.lo, self.hi = np.inf, -np.inf  # exact running min/max of the finite values

    def add(self, block: np.ndarray) -> None:
        flat = block.reshape(-1)
        picked = flat[self._phase::self.stride]
        self._phase = (self._phase - flat.size) % self.stride
        if picked.dtype.kind == "f":
            picked = picked[np.isfinite(picked)]
            fin = np.isfinite(flat)
            if fin.any():
                self.lo = min(self.lo, float(np.min(flat, where=fin, initial=np.inf)))
                self.hi = max(self.hi, float(np.max(flat, where=fin, initial=-np.inf)))
        elif flat.size:
            self.lo, self.hi = min(self.lo, float(flat.min())), max(self.hi, float(flat.max()))
        self.parts.append(np.array(picked, dtype=np.float64))

    def percentiles(self, low: float, high: float) -> tuple[float, float]:
        vals = np.concatenate(self.parts) if self.parts else np.empty(0)
        if vals.size == 0:
            raise ValueError("no finite values to compute the intensity percentiles from")
        lo, hi = np.percentile(vals, [low, high])
        return float(lo), float(hi)

    def minmax(self) -> tuple[float, float]:
        """Exact min/max of all finite values streamed (not only the subsample)."""
        if not self.lo <= self.hi:
            raise ValueError("no finite values to compute the intensity range from")
        return self.lo, self.hi
