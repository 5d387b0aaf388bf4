"""Solvers sharing one signature: ``solve(y, operator, noise, generator=None, callback=None)``.

Room: ``ddiff`` — pure torch.
"""
from .base import Result, Solver
from .daps import DAPS
from .ddiff import DDiff, DDiffHQS, DiffPnPADMM, DiffPnPHQS
from .diffpir import DiffPIR
from .dps import DPS
from .seed_mean import SeedMean
from .tv import TVReconstruction
from .volume import SliceBySlice, VolumeDDiff, VolumeDiffPnPADMM

__all__ = ["Result", "Solver", "DDiff", "DDiffHQS", "DiffPnPADMM", "DiffPnPHQS", "DPS", "DiffPIR", "DAPS", "TVReconstruction", "SeedMean",
           "VolumeDDiff", "VolumeDiffPnPADMM", "SliceBySlice"]
