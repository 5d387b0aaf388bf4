"""An ingested input store, read-only: :class:`Stack`, :func:`open_stack`, :func:`verify_stack`.

Room: ``storage`` — zarr, numpy; never torch/prefect. The store's layout is described in
:mod:`storage.ingest` (which writes it); this module only reads it, through a read-only Zarr
store, so downstream code cannot modify the input.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from .axes import Layout, Planes
from .intensity import IntensityMap
from .safety import StorageError

__all__ = ["INPUT_KIND", "Stack", "open_stack", "verify_stack"]

INPUT_KIND = "ddiff-input-stack"


def _store_kind(path: Path) -> str | None:
    """``ddiff`` kind recorded in the root ``zarr.json`` of ``path``, or None if there is none."""
    try:
        g = zarr.open_group(LocalStore(path, read_only=True), mode="r")
        return g.attrs.get("ddiff", {}).get("kind")
    except Exception:
        return None


def _hash_frame(planes: Planes, frame: int, h, block_bytes: int) -> None:
    """Feed frame ``frame`` to ``h`` in ``(c, y, x)`` C order, a band of rows at a time."""
    _, C, H, W = planes.shape
    rows = max(1, block_bytes // max(1, W * planes.dtype.itemsize))
    for c in range(C):
        for y0 in range(0, H, rows):
            h.update(np.ascontiguousarray(planes[frame, c:c + 1, y0:min(H, y0 + rows), :]))


@dataclass
class Stack:
    """Read-only view of an ingested stack.

    ``array`` is the frame view ``(N, C, H, W)`` (:class:`~storage.axes.Planes`; frame ``= t·Z + z``),
    what tiles and tasks index; ``data`` is the stored Zarr array with the source's axes
    (``axes``, e.g. ``"tczyx"``; ``sizes`` gives every axis' size, 1 when absent); ``scale`` and
    ``units`` its physical steps (``{"z": 0.5, "y": 0.1, "x": 0.1, "t": 2.0}``, OME-NGFF unit
    names). ``volume(t)`` reads one time point as ``(C, Z, H, W)``.
    """

    path: Path
    data: zarr.Array
    meta: dict
    ome: dict
    intensity: IntensityMap
    layout: Layout
    valid: Planes | None = field(default=None)

    @property
    def array(self) -> Planes:
        return Planes(self.data, self.layout)

    @property
    def axes(self) -> str:
        return self.layout.axes

    @property
    def sizes(self) -> dict[str, int]:
        return self.layout.sizes

    @property
    def scale(self) -> dict[str, float]:
        return dict(self.meta["geometry"]["scale"])

    @property
    def units(self) -> dict[str, str]:
        return dict(self.meta["geometry"]["units"])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Frame view shape ``(N, C, H, W)``, ``N = T·Z``."""
        return self.layout.frames_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` (a ``(t, z)`` plane), ``(C, H, W)``."""
        return self.array[t]

    def volume(self, t: int = 0, ys: slice = slice(None), xs: slice = slice(None)) -> np.ndarray:
        """Time point ``t`` as ``(C, Z, h, w)`` (source dtype)."""
        Z = self.sizes["z"]
        return np.stack([self.array[self.layout.frame_of(t, z), :, ys, xs] for z in range(Z)], axis=1)

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """Physical -> model space ``[-1, 1]`` (float32)."""
        return self.intensity.to_model(x)

    def from_model(self, m: np.ndarray) -> np.ndarray:
        """Model space -> physical units (float32)."""
        return self.intensity.from_model(m)

    def dask(self):
        """The stored array (source axes) as a lazy dask array (chunks = Zarr chunks)."""
        import dask.array as da

        return da.from_zarr(self.data)


def open_stack(store) -> Stack:
    """Open an ingested stack read-only (:class:`Stack`); refuse folders that are not one."""
    path = Path(store)
    if not (path / "zarr.json").exists():
        raise StorageError(f"{path} is not a Zarr v3 store (no zarr.json); ingest the source first")
    root = zarr.open_group(LocalStore(path, read_only=True), mode="r")
    meta = dict(root.attrs.get("ddiff", {}))
    if meta.get("kind") != INPUT_KIND:
        raise StorageError(f"{path} is a Zarr store but not an ingested stack (kind={meta.get('kind')!r}); "
                           "give a store written by `ddiff ingest` (storage.ingest)")
    data = root["0"]
    layout = Layout(meta.get("axes") or "".join(data.metadata.dimension_names), data.shape)
    if "geometry" not in meta:  # stores written before axes were recorded: read the OME block
        ms = root.attrs["ome"]["multiscales"][0]
        sc = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
        meta["geometry"] = {"scale": {a["name"]: float(v) for a, v in zip(ms["axes"], sc) if a["name"] != "c"},
                            "units": {a["name"]: a.get("unit") for a in ms["axes"] if a["name"] != "c"},
                            "source": "ome"}
    has_valid = meta.get("validity", {}).get("array") or meta.get("nonfinite", {}).get("mask")
    valid = Planes(root["valid"], layout) if has_valid else None
    return Stack(path=path, data=data, meta=meta, ome=dict(root.attrs["ome"]),
                 intensity=IntensityMap.from_dict(meta["intensity"]), layout=layout, valid=valid)


def verify_stack(store, block_bytes: int = 64 << 20) -> bool:
    """Recompute the SHA-256 of the stored pixels (streamed) and compare with ``data_sha256``
    (frames in order, each in ``(c, y, x)`` C order — for a ``(t, c, y, x)`` store that is its C order)."""
    st = open_stack(store)
    h = hashlib.sha256()
    planes = st.array
    for f in range(st.n_frames):
        _hash_frame(planes, f, h, block_bytes)
    return h.hexdigest() == st.meta["data_sha256"]
