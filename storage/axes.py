"""Axes of stored images: which of ``t, c, z, y, x`` an array has, and its frames (2-D planes).

Room: ``storage`` — numpy only (zarr arrays are used through ``__getitem__``/``__setitem__``).

Stores keep the axes the data has, in OME-NGFF order (``t``, ``c``, then space ``z, y, x``; ``y``
and ``x`` always present): a z-stack is ``(z, y, x)``, a time-lapse of RGB volumes
``(t, c, z, y, x)``, a single grey image ``(y, x)``. The solvers work on 2-D planes, so the
pipeline sees a stack as **frames**: one frame = one ``(t, z)`` plane with all its channels,
``(C, H, W)``, numbered ``frame = t·Z + z`` (time-major; ``T = 1`` / ``Z = 1`` when the axis is
absent). :class:`Layout` does that bookkeeping and :class:`Planes` presents any stored array as
the ``(N, C, H, W)`` frame view (``N = T·Z``) that the tile plans, ledger and tasks index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ORDER", "AXIS_TYPES", "Layout", "Planes", "check_axes", "canonical_axes"]

ORDER = "tczyx"
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def check_axes(axes: str, ndim: int, who: str) -> str:
    """``axes`` lower-cased and checked against an array of ``ndim`` dimensions (any order)."""
    axes = str(axes).lower()
    if len(axes) != ndim or len(set(axes)) != ndim or not set(axes) <= set(ORDER) or not {"y", "x"} <= set(axes):
        raise ValueError(f"{who}: axes={axes!r} does not describe a {ndim}-D array; use one letter per "
                         "dimension from 'tczyx' including y and x, e.g. 'zyx', 'tcyx' or 'tzcyx'")
    return axes


def canonical_axes(axes: str) -> str:
    """The letters of ``axes`` in storage (OME-NGFF) order ``t, c, z, y, x``."""
    return "".join(a for a in ORDER if a in axes)


@dataclass(frozen=True)
class Layout:
    """A stored array's ``axes`` (canonical order) and ``shape``; frames are its ``(t, z)`` planes."""

    axes: str
    shape: tuple[int, ...]

    def __post_init__(self):
        axes = str(self.axes).lower()
        if axes != canonical_axes(axes) or len(axes) != len(self.shape) or not {"y", "x"} <= set(axes):
            raise ValueError(f"layout axes {axes!r} must be letters of 'tczyx' in that order, with y and x, "
                             f"one per dimension of {tuple(self.shape)}")
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @classmethod
    def from_sizes(cls, sizes: dict) -> "Layout":
        """From ``{axis: size}`` (any subset of ``tczyx`` with y and x)."""
        axes = canonical_axes("".join(sizes))
        return cls(axes, tuple(int(sizes[a]) for a in axes))

    @property
    def sizes(self) -> dict[str, int]:
        """Size of each of ``t, c, z, y, x`` (1 for an absent axis)."""
        d = dict(zip(self.axes, self.shape))
        return {a: d.get(a, 1) for a in ORDER}

    @property
    def n_frames(self) -> int:
        s = self.sizes
        return s["t"] * s["z"]

    @property
    def frames_shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)``: the frame view's shape."""
        s = self.sizes
        return self.n_frames, s["c"], s["y"], s["x"]

    def frame_tz(self, frame: int) -> tuple[int, int]:
        """``(t, z)`` of ``frame`` (``frame = t·Z + z``)."""
        frame = int(frame)
        if not 0 <= frame < self.n_frames:
            raise IndexError(f"frame {frame} out of range: the stack has {self.n_frames} frames")
        return divmod(frame, self.sizes["z"])

    def frame_of(self, t: int = 0, z: int = 0) -> int:
        s = self.sizes
        if not (0 <= t < s["t"] and 0 <= z < s["z"]):
            raise IndexError(f"(t={t}, z={z}) out of range for sizes t={s['t']}, z={s['z']}")
        return int(t) * s["z"] + int(z)

    def with_sizes(self, **sizes) -> "Layout":
        """The same axes with some sizes replaced (e.g. ``y=..., x=...`` for a scaled grid)."""
        d = dict(zip(self.axes, self.shape))
        d.update({k: int(v) for k, v in sizes.items() if k in d})
        return Layout(self.axes, tuple(d[a] for a in self.axes))

    def key(self, frame: int, c=slice(None), y=slice(None), x=slice(None)) -> tuple:
        """Index into the stored array for one frame (``c``/``y``/``x`` keys as given)."""
        t, z = self.frame_tz(frame)
        parts = {"t": t, "z": z, "c": c, "y": y, "x": x}
        return tuple(parts[a] for a in self.axes)

    def chunks(self, cy: int, cx: int) -> tuple[int, ...]:
        """Chunk shape of one frame tile: ``1`` on t and z, all channels, ``(cy, cx)`` in space."""
        s = self.sizes
        return tuple({"t": 1, "z": 1, "c": s["c"], "y": min(cy, s["y"]), "x": min(cx, s["x"])}[a] for a in self.axes)


def _frame_range(key, n: int) -> tuple[list[int], bool]:
    if isinstance(key, (int, np.integer)):
        k = int(key) + (n if key < 0 else 0)
        if not 0 <= k < n:
            raise IndexError(f"frame {key} out of range: {n} frames")
        return [k], True
    if isinstance(key, slice):
        return list(range(*key.indices(n))), False
    raise TypeError(f"frames are indexed by an int or a slice, not {type(key).__name__}")


class Planes:
    """The ``(N, C, H, W)`` frame view of a stored array (zarr or numpy) with :class:`Layout` axes.

    ``planes[f]`` -> ``(C, H, W)``, ``planes[f0:f1, :, ys, xs]`` -> ``(n, C, h, w)`` (an int
    drops its axis, as in numpy); assignment takes the same shapes (or broadcasts). Only basic
    int/slice keys; every read touches just the chunks of the requested region, so a tile read
    never loads a whole frame.
    """

    def __init__(self, array, layout: Layout):
        if tuple(array.shape) != layout.shape:
            raise ValueError(f"array shape {tuple(array.shape)} != layout {layout.shape} ({layout.axes})")
        self.array, self.layout = array, layout

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.layout.frames_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def chunks(self) -> tuple[int, int, int, int]:
        d = dict(zip(self.layout.axes, self.array.chunks))
        return 1, d.get("c", 1), d["y"], d["x"]

    def _split(self, key) -> tuple[list[int], bool, tuple, tuple]:
        """Frames, whether one frame was asked, (c, y, x) slices and the axes given as ints."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 4:
            raise IndexError(f"too many indices for the (N, C, H, W) frame view: {key}")
        key = key + (slice(None),) * (4 - len(key))
        frames, single = _frame_range(key[0], self.shape[0])
        rest, squeeze = [], []
        for axis, (k, n) in enumerate(zip(key[1:], self.shape[1:])):
            if isinstance(k, (int, np.integer)):
                k = int(k) + (n if k < 0 else 0)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} out of range for size {n}")
                rest.append(slice(k, k + 1))
                squeeze.append(axis)
            elif isinstance(k, slice):
                rest.append(k)
            else:
                raise TypeError(f"the frame view takes ints and slices only, not {type(k).__name__}")
        return frames, single, tuple(rest), tuple(squeeze)

    def _read(self, frame: int, c, y, x) -> np.ndarray:
        if "c" in self.layout.axes:
            return np.asarray(self.array[self.layout.key(frame, c, y, x)])
        return np.asarray(self.array[self.layout.key(frame, y=y, x=x)])[np.newaxis][c]

    def __getitem__(self, key) -> np.ndarray:
        frames, single, (c, y, x), squeeze = self._split(key)
        parts = [self._read(f, c, y, x) for f in frames]
        if single:
            return parts[0].squeeze(axis=squeeze) if squeeze else parts[0]
        if not parts:
            out = np.empty((0,) + tuple(len(range(*s.indices(n))) for s, n in zip((c, y, x), self.shape[1:])), self.dtype)
        else:
            out = np.stack(parts)
        return out.squeeze(axis=tuple(a + 1 for a in squeeze)) if squeeze else out

    def __setitem__(self, key, value) -> None:
        frames, single, (c, y, x), squeeze = self._split(key)
        value = np.asarray(value, dtype=self.dtype)
        if single:
            value = value[np.newaxis]
        value = np.expand_dims(value, tuple(a + 1 for a in squeeze)) if squeeze else value
        value = np.broadcast_to(value, (len(frames),) + tuple(
            len(range(*s.indices(n))) for s, n in zip((c, y, x), self.shape[1:])))
        for f, v in zip(frames, value):
            if "c" in self.layout.axes:
                self.array[self.layout.key(f, c, y, x)] = v
            else:
                if v.shape[0] != 1:
                    raise ValueError(f"this array has no channel axis; got {v.shape[0]} channels")
                self.array[self.layout.key(f, y=y, x=x)] = v[0]
