"""Forward models ``A`` and noise models, and a registry of them.

Room: ``operators`` — torch and numpy only. See ``operators.base`` for the protocol.
Importing the package registers the built-in operators (``available()`` lists them). The volume
operators (``(B, C, Z, H, W)``, ``operators.volume``) have a registry of their own
(``volume_operators()``, ``get_volume_operator``): the main registry holds 2-D frame operators.
"""
from .base import ForwardModel, available, check_image, get_operator, register
from .noise import GaussianNoise, NoiseModel, PoissonGaussianNoise, PoissonNoise
from .noise_units import CameraNoise, DataUnits, gaussian_in_data_units
from .validity import Validity
from .blur import GaussianBlur, KernelBlur, MotionBlur, gaussian_kernel
from .inpainting import InpaintingBox, InpaintingRandom, MaskOperator
from .motion_kernel import motion_kernel
from .pointwise import HDR
from .fourier import MRICartesian, PhaseRetrieval, fft2c, ifft2c
from .resize import SuperResolution
from .ct import CTParallelBeam
from .psf import AstroPSF, MicroscopyWidefield, airy_psf, gaussian_psf, moffat_psf
from .psf3d import defocus_intensity, widefield_psf_3d
from .volume import CTStack, SliceWise, VolumeBlur, Widefield3D, get_volume_operator, volume_operators
from .bkse import KernelWizard, MissingWeightsError, NonlinearBlur
from .adapters import DeepInvPhysics, from_deepinv

__all__ = [
    "ForwardModel",
    "available",
    "check_image",
    "get_operator",
    "register",
    "GaussianNoise",
    "NoiseModel",
    "PoissonNoise",
    "PoissonGaussianNoise",
    "DataUnits",
    "CameraNoise",
    "gaussian_in_data_units",
    "Validity",
    "GaussianBlur",
    "KernelBlur",
    "MotionBlur",
    "gaussian_kernel",
    "motion_kernel",
    "InpaintingBox",
    "InpaintingRandom",
    "MaskOperator",
    "HDR",
    "MRICartesian",
    "PhaseRetrieval",
    "fft2c",
    "ifft2c",
    "SuperResolution",
    "CTParallelBeam",
    "MicroscopyWidefield",
    "AstroPSF",
    "airy_psf",
    "gaussian_psf",
    "moffat_psf",
    "defocus_intensity",
    "widefield_psf_3d",
    "VolumeBlur",
    "Widefield3D",
    "SliceWise",
    "CTStack",
    "get_volume_operator",
    "volume_operators",
    "KernelWizard",
    "MissingWeightsError",
    "NonlinearBlur",
    "DeepInvPhysics",
    "from_deepinv",
]
