"""Priors: the prior protocol, exact Gaussian / Gaussian-mixture priors, ADM networks and loading.

Room: ``ddiff`` — pure torch.
"""
from .adm import ADMConfig, ADMPrior, ADMUNet
from .base import NFECounter, Prior, tweedie_x0
from .exact import GaussianPrior, GMMPrior, operator_matrix, se_covariance
from .loading import CheckpointMismatchError, UnsafeCheckpointError, load_prior

__all__ = [
    "Prior", "NFECounter", "tweedie_x0", "GaussianPrior", "GMMPrior", "operator_matrix", "se_covariance",
    "ADMUNet", "ADMConfig", "ADMPrior", "load_prior", "CheckpointMismatchError", "UnsafeCheckpointError",
]
