"""Prefect flows and the ``ddiff`` command line.

Room: ``flows`` — may import everything (``operators``, ``ddiff``, ``storage``, prefect,
prefect-dask, rich, scikit-image). Nothing imports ``flows``.

Public flows (each takes one pydantic parameter model, rendered as a form in the Prefect UI):

* :func:`ingest_stack` — source file/folder -> OME-Zarr input store (``storage.ingest``);
* :func:`reconstruct_stack` — input store -> reconstruction + diagnostics (tiled, batched,
  resumable, locally on threads or on Dask);
* :func:`audit_reconstruction` — per-tile hallucination audit of a finished reconstruction;
* :func:`train_prior` — train a compact diffusion prior on clean images held in a Zarr store;
* :func:`benchmark` — run solvers on held-out crops and write a tidy CSV.

Import-path guard (why the block below exists): a Dask worker puts its scratch directory on
``sys.path`` and that directory contains a spill folder named ``storage/``. With the editable
install's meta-path finder (which runs *after* the normal path search), ``import storage`` in a
worker then resolves to that empty folder as a namespace package. Importing ``flows`` first (every
task of ours lives in ``flows``, so a worker always imports it before ``storage`` when it unpickles
a task) puts the folder holding our packages on ``sys.path``: a regular package anywhere on
``sys.path`` wins over a namespace portion, so the real ``storage`` is found whatever the worker's
directory is. A wrongly resolved namespace ``storage`` already in ``sys.modules`` is dropped.
"""
from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_ROOT = _Path(__file__).resolve().parents[1]
if (_ROOT / "storage" / "__init__.py").is_file() and str(_ROOT) not in _sys.path:
    _sys.path.append(str(_ROOT))
_bad = _sys.modules.get("storage")
if _bad is not None and getattr(_bad, "__file__", None) is None:  # namespace package = the spill folder
    for _name in [n for n in _sys.modules if n == "storage" or n.startswith("storage.")]:
        del _sys.modules[_name]

from .params import (AuditParams, BenchmarkParams, IngestParams, NoiseSpec, OperatorSpec,  # noqa: E402
                     ReconstructParams, SolverSpec, TrainParams)
from .ingest import ingest_stack  # noqa: E402
from .reconstruct import reconstruct_stack  # noqa: E402
from .audit import audit_reconstruction  # noqa: E402
from .train import train_prior  # noqa: E402
from .bench import benchmark  # noqa: E402

__all__ = [
    "ingest_stack", "reconstruct_stack", "audit_reconstruction", "train_prior", "benchmark",
    "IngestParams", "ReconstructParams", "AuditParams", "TrainParams", "BenchmarkParams",
    "OperatorSpec", "NoiseSpec", "SolverSpec",
]
