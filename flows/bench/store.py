"""A benchmark's output folder: one record file per finished cell, resumable, plus the tidy tables.

Room: ``flows`` (the benchmark package :mod:`flows.bench`) — numpy, xarray/zarr, pandas and
``storage`` (its safety helpers and readers); never torch, prefect or ``ddiff``. It lives here, not
in ``storage``, because it is the benchmark's own output format rather than a pipeline store.

Layout of ``folder``::

    config.json              the run's configuration (and its hash): a rerun with another
                             configuration is refused unless ``overwrite``
    cells/<key>.json         per-image records of one finished cell (task, solver, σ_y, NFE budget)
    cells/<key>.npy          that cell's reconstruction of the first image (for the qualitative grid)
    results.csv              tidy: one row per (task, solver, sigma_y, nfe_budget, image)
    results.zarr             the same as an xarray Dataset, dims (task, solver, sigma_y, nfe_budget, image)

A cell's files are written atomically (temp file + rename) and the JSON last, so a cell either
exists whole or not at all: an interrupted benchmark resumes at the first missing cell and never
recomputes or loses a finished one. The folder is held by a :class:`~storage.safety.RunLock`.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np

from storage.safety import (ConfigMismatchError, RunLock, atomic_write, atomic_write_json, canonical_hash, read_json,
                             require_lock, safe_subpath)

__all__ = ["BenchmarkStore", "put_cell", "cell_key", "METRICS", "RECORD_COLUMNS", "load_eval_images", "match_channels"]

#: per-image quality and data-fit metrics of a record
METRICS = ("psnr", "ssim", "lpips", "chi2_nu", "residual")
#: the columns of ``results.csv``, in order
RECORD_COLUMNS = ("task", "solver", "sigma_y", "nfe_budget", "image", "image_index", "run", "runs", *METRICS,
                  "nfe", "seconds", "floor_seconds", "setting")
_KEYS = ("task", "solver", "sigma_y", "nfe_budget")


def cell_key(task: str, solver: str, sigma_y: float, nfe_budget: int) -> str:
    """File-name-safe key of a cell, e.g. ``gaussian_blur__ddiff__s0.05__n50``."""
    key = f"{task}__{solver}__s{float(sigma_y):g}__n{int(nfe_budget)}"
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
        raise ValueError(f"task and solver names may use letters, digits, '_', '-' and '.' only: {key!r}")
    return key


class BenchmarkStore:
    """Open (or create) a benchmark folder for ``config``; see the module docstring."""

    def __init__(self, folder: str | os.PathLike, config: dict, overwrite: bool = False):
        self.folder = Path(folder)
        self.config_hash = canonical_hash(config)
        self.lock = RunLock(self.folder).acquire()
        try:
            cfg_path = self.folder / "config.json"
            if cfg_path.exists():
                old = read_json(cfg_path)
                if old.get("hash") != self.config_hash:
                    if not overwrite:
                        raise ConfigMismatchError(
                            f"{self.folder} holds a benchmark with another configuration; choose a new "
                            "output folder, or pass overwrite to discard its finished cells")
                    shutil.rmtree(self.folder / "cells", ignore_errors=True)
            atomic_write_json(cfg_path, {"hash": self.config_hash, "config": config})
            (self.folder / "cells").mkdir(exist_ok=True)
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> "BenchmarkStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def run_id(self) -> str:
        """The lock's run id: pass it to :func:`put_cell` from tasks of this run."""
        return self.lock.run_id

    def has(self, key: str) -> bool:
        return _cell_path(self.folder, key, ".json").is_file()

    def put(self, key: str, records: list[dict], preview: np.ndarray | None = None) -> None:
        put_cell(self.folder, self.run_id, key, records, preview)

    def preview(self, key: str) -> np.ndarray | None:
        path = _cell_path(self.folder, key, ".npy")
        return np.load(path, allow_pickle=False) if path.is_file() else None

    def records(self) -> list[dict]:
        """Every stored record, ordered by file name (stable)."""
        out = []
        for path in sorted((self.folder / "cells").glob("*.json")):
            out.extend(read_json(path)["records"])
        return out

    def write_tables(self, records: list[dict]) -> dict[str, str]:
        """Write ``results.csv`` and ``results.zarr`` from ``records``; returns their paths."""
        import pandas as pd

        df = pd.DataFrame.from_records(records, columns=list(RECORD_COLUMNS))
        csv = atomic_write(self.folder / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
        zpath = self.folder / "results.zarr"
        tmpz = self.folder / f".results.{uuid.uuid4().hex[:8]}.zarr"
        to_dataset(df).to_zarr(tmpz, mode="w", consolidated=False)
        shutil.rmtree(zpath, ignore_errors=True)
        os.replace(tmpz, zpath)
        return {"results.csv": csv, "results.zarr": str(zpath)}


def _cell_path(folder, key: str, suffix: str) -> Path:
    return safe_subpath(folder, f"cells/{key}{suffix}")


def put_cell(folder: str | os.PathLike, run_id: str, key: str, records: list[dict],
             preview: np.ndarray | None = None) -> None:
    """Store one finished cell of the run holding ``folder``'s lock (``run_id``): its per-image
    ``records`` and optionally a ``preview`` image; the JSON is written last (it marks the cell done)."""
    require_lock(folder, run_id)
    if preview is not None:
        def save(tmp: str) -> None:  # through a handle: np.save would append ".npy" to a path
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(preview, dtype=np.float32))

        atomic_write(_cell_path(folder, key, ".npy"), save)
    atomic_write_json(_cell_path(folder, key, ".json"), {"key": key, "records": records})


def to_dataset(df):
    """Tidy records -> ``xarray.Dataset`` with dims (task, solver, sigma_y, nfe_budget, image);
    cells that were not run are NaN."""
    numeric = [*METRICS, "nfe", "seconds", "floor_seconds", "run", "runs"]
    frame = df.set_index([*_KEYS, "image"])[numeric].astype("float64")
    ds = frame.to_xarray()
    ds.attrs["description"] = "ddiff benchmark: per-image metrics; see results.csv for each cell's setting"
    return ds


def match_channels(x: np.ndarray, channels: int, what: str = "images") -> np.ndarray:
    """``(N, C, H, W)`` images with ``channels`` channels: grayscale repeated for an RGB prior,
    colour averaged for a grayscale one; anything else is an error naming ``what``."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return np.repeat(x, channels, axis=1)
    if channels == 1:
        return x.mean(axis=1, keepdims=True)
    raise ValueError(f"{what}: images have {x.shape[1]} channels but the prior takes {channels}")


def load_eval_images(source: str | os.PathLike, size: int, n: int, channels: int) -> tuple[np.ndarray, list[str]]:
    """The user's evaluation images as float32 ``(n, channels, size, size)`` in ``[−1, 1]``.

    ``source``: a folder of PNG/JPEG/TIFF images or a ``.npy`` stack ``(N, H, W)`` /
    ``(N, C, H, W)``. Integer images are scaled by their dtype's maximum, float images must lie in
    ``[0, 1]``. Each image is centre-cropped to ``size``; grayscale is repeated to 3 channels when
    the prior is RGB. Errors name the file and the fix.
    """
    from storage.readers import open_source

    reader = open_source(source)
    T, C, H, W = reader.shape
    if T < n:
        raise ValueError(f"{source} holds {T} images but the benchmark needs {n}; lower n_images or add images")
    if H < size or W < size:
        raise ValueError(f"{source}: images are {H}×{W}, smaller than the benchmark size {size}; lower size")
    raw = reader.read(0, n)
    if np.issubdtype(raw.dtype, np.integer):
        x = raw.astype(np.float32) / np.iinfo(raw.dtype).max
    else:
        x = raw.astype(np.float32)
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError(f"{source}: float images must be finite and lie in [0, 1]; rescale them first")
    top, left = (H - size) // 2, (W - size) // 2
    x = match_channels(x[:, :, top:top + size, left:left + size], channels, str(source))
    names = [Path(f).stem for f in getattr(reader, "files", [])][:n] if getattr(reader, "kind", "") == "folder" else []
    names = names if len(names) == n else [f"{Path(source).stem}[{i}]" for i in range(n)]
    return np.ascontiguousarray(2.0 * x - 1.0, dtype=np.float32), names
