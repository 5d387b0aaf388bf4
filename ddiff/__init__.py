"""DDiff: Dual Ascent Diffusion solvers, baselines, diffusion core, priors and metrics.

Room: ``ddiff`` — pure torch (+ ``operators``). Never imports storage, flows, prefect, zarr, xarray.
"""
from . import metrics
from .schedule import VPSchedule
from .solvers import DAPS, DPS, DDiff, DDiffHQS, DiffPIR, DiffPnPADMM, DiffPnPHQS, Result, SeedMean, Solver, TVReconstruction
from .solvers import SliceBySlice, VolumeDDiff, VolumeDiffPnPADMM

__version__ = "0.1.0"

__all__ = [
    "VPSchedule", "Result", "Solver", "DDiff", "DDiffHQS", "DiffPnPADMM", "DiffPnPHQS", "DPS",
    "DiffPIR", "DAPS", "TVReconstruction", "SeedMean", "VolumeDDiff", "VolumeDiffPnPADMM", "SliceBySlice", "metrics", "__version__",
]
