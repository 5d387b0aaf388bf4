"""Prefect flows and the ``ddiff`` command line.

Room: ``flows`` — may import everything (``operators``, ``ddiff``, ``storage``, prefect,
prefect-dask, rich, scikit-image). Nothing imports ``flows``.

Public flows (each takes one pydantic parameter model, rendered as a form in the Prefect UI):

* :func:`ingest_stack` — source file/folder -> OME-Zarr input store (``storage.ingest``);
* :func:`reconstruct_stack` — input store -> reconstruction + diagnostics (tiled, batched,
  resumable, locally on threads or on Dask);
* :func:`audit_reconstruction` — per-tile hallucination audit of a finished reconstruction;
* :func:`process_stack` — the nightly job: (ingest ->) reconstruct -> audit as one parent run, stores
  read from Prefect variables at run time (``deployments/prefect.yaml``);
* :func:`demo_pipeline` — ``ddiff demo`` as one parent run (generate, ingest, reconstruct, audit);
* :func:`train_prior` — train a compact diffusion prior on clean images held in a Zarr store;
* :func:`benchmark` — the paper's protocol (Table 1/2, noise and NFE studies) on any prior:
  tidy CSV + xarray, markdown tables, plots and a check of the paper's claims (``docs/benchmark.md``).

Import-path guard (why the block below exists): a Dask worker puts its scratch directory on
``sys.path`` and that directory contains a spill folder named ``storage/``. With the editable
install's meta-path finder (which runs *after* the normal path search), ``import storage`` in a
worker then resolves to that empty folder as a namespace package. Importing ``flows`` first (every
task of ours lives in ``flows``, so a worker always imports it before ``storage`` when it unpickles
a task) puts the folder holding our packages on ``sys.path``: a regular package anywhere on
``sys.path`` wins over a namespace portion, so the real ``storage`` is found whatever the worker's
directory is. A wrongly resolved namespace ``storage`` already in ``sys.modules`` is dropped.
Moving the scratch directory does not help: ``distributed`` (2026.8, ``core.py``) inserts whatever
``local_directory`` a worker gets at ``sys.path[0]`` and its spill buffer is always
``<local_directory>/storage`` (``worker_memory.py``); only disabling spilling or a non-editable
install would, so the guard stays (held by ``tests/test_flows.py::test_dask_worker_imports_the_real_storage_package``).
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

# Lazy exports (PEP 562): `import flows` stays cheap and does not import prefect, so the CLI can
# configure Prefect's logging (environment variables) before Prefect is first imported.
_EXPORTS = {
    "ingest_stack": ".ingest", "reconstruct_stack": ".reconstruct", "audit_reconstruction": ".audit",
    "process_stack": ".process", "demo_pipeline": ".demo",
    "train_prior": ".train", "benchmark": ".bench",
    "IngestParams": ".params", "ReconstructParams": ".params", "AuditParams": ".params", "TrainParams": ".params",
    "BenchmarkParams": ".params", "OperatorSpec": ".params", "NoiseSpec": ".params", "SolverSpec": ".params",
    "ExecutionSpec": ".params", "calibrate_bounds_flow": ".calibrate", "CalibrateParams": ".calibrate",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flows' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
