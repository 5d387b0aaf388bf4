"""The paper's benchmark (``ddiff bench``): its protocol, its resumable output folder, its report.

Room: ``flows`` — everything the benchmark needs and nothing else imports (``flows.benchmark``
and the ``ddiff bench`` command are its public faces; ``docs/benchmark.md`` describes it):

* :mod:`flows.bench.flow` — the Prefect flow :func:`benchmark` (the grid of cells, resume);
* :mod:`flows.bench.protocol` — the paper's protocol on tensors: tasks, every solver at one NFE
  budget, per-image metrics, best-of-R, TV tuning (torch, numpy, ``operators``, ``ddiff``);
* :mod:`flows.bench.store` — the benchmark's resumable output folder and its tidy tables
  (numpy, xarray/zarr, pandas, ``storage``; no torch);
* :mod:`flows.bench.report` — markdown tables and PNG figures; :mod:`flows.bench.claims` — the
  paper's four claims checked on the records (pandas, numpy, scipy, matplotlib; no torch).

``benchmark``, ``plan_cells`` and ``OUTPUT_FILES`` are exported here as they were by the former
module ``flows.bench``; they load lazily (PEP 562), so importing ``flows.bench.report`` or
``flows.bench.store`` does not import torch or prefect.
"""
from __future__ import annotations

_EXPORTS = ("benchmark", "plan_cells", "OUTPUT_FILES")
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from . import flow

        value = getattr(flow, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flows.bench' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
