"""Image-quality and data-fit metrics.

Room: ``ddiff`` — pure torch (``lpips`` imported lazily).

Images are in model space ``[−1, 1]`` with shape ``(B, C, H, W)``; PSNR, SSIM and LPIPS map them
to ``[0, 1]`` by ``(x + 1)/2`` and clip, as the paper's evaluation does. Every metric returns one
value per sample, shape ``(B,)``.

Data-fit metrics (``ddiff_algorithm.md`` § Metrics) take the measurement ``y``, the re-measured
reconstruction ``A(x̂)`` and the noise level ``σ`` in the units of ``y``; ``m`` is the number of
real measurement values per sample (a complex entry counts twice, each part having variance σ²):

* ``chi2_reduced = ‖y − A(x̂)‖² / (m σ²)`` — ideal 1, spread ≈ √(2/m);
* ``residual_gap = | ‖y − A(x̂)‖²/m − σ² |`` — ideal 0.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "lpips", "lpips_missing", "chi2_reduced", "residual_gap", "to_unit"]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space ``[−1, 1]`` → ``[0, 1]``, clipped."""
    return ((x + 1) / 2).clamp(0, 1)


def _check_pair(x: torch.Tensor, ref: torch.Tensor, who: str) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{who}: shapes differ, {tuple(x.shape)} vs {tuple(ref.shape)}")
    if x.ndim != 4:
        raise ValueError(f"{who}: expected (B, C, H, W), got {tuple(x.shape)}")


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR in dB with data range 1 on ``[0, 1]``-mapped images, per sample ``(B,)``."""
    _check_pair(x, ref, "psnr")
    a, b = to_unit(x.double()), to_unit(ref.double())
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).to(x.dtype)


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5, dtype=torch.float64) -> torch.Tensor:
    # skimage's structural_similarity(gaussian_weights=True): radius int(truncate·σ + 0.5) = 5 → 11 taps
    r = int(truncate * sigma + 0.5)
    g = torch.exp(-(torch.arange(-r, r + 1, dtype=dtype) ** 2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004: Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03, data range 1).

    Computed on ``[0, 1]``-mapped images, averaged over channels and over the window positions
    that lie fully inside the image (as scikit-image crops its border), per sample ``(B,)``.
    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``.
    """
    _check_pair(x, ref, "ssim")
    a, b = to_unit(x.double()), to_unit(ref.double())
    B, C, H, W = a.shape
    g = _gaussian_window()
    k = g.numel()
    if H < k or W < k:
        raise ValueError(f"ssim: images must be at least {k}×{k}, got {H}×{W}")
    wx = g.view(1, 1, 1, k).expand(C, 1, 1, k)
    wy = g.view(1, 1, k, 1).expand(C, 1, k, 1)

    def blur(t):  # separable 'valid' Gaussian filter, per channel
        return F.conv2d(F.conv2d(t, wx, groups=C), wy, groups=C)

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a**2
    sbb = blur(b * b) - mu_b**2
    sab = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.flatten(1).mean(1).to(x.dtype)


_LPIPS_MODEL = None
_LPIPS_WARNED = False
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _alexnet_weights_present() -> bool:
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", ALEXNET_FILE))


def lpips_missing() -> str | None:
    """``None`` when LPIPS can be computed here, else one sentence: why not and where the weights go."""
    if _alexnet_weights_present():
        return None
    where = os.path.join(torch.hub.get_dir(), "checkpoints", ALEXNET_FILE)
    return (f"LPIPS not computed: the AlexNet weights are not at {where} (nothing is downloaded); copy "
            f"torchvision's {ALEXNET_FILE} there (or set TORCH_HOME) to get the LPIPS column")


def lpips(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """LPIPS (AlexNet, the ``lpips`` package) per sample ``(B,)``; lower is better.

    The AlexNet backbone weights must already be in the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``); nothing is downloaded. When they
    are absent the result is NaN and one warning is issued — never a substitute number.
    Single-channel images are repeated to three channels.
    """
    global _LPIPS_MODEL, _LPIPS_WARNED
    _check_pair(x, ref, "lpips")
    nan = torch.full((x.shape[0],), float("nan"), dtype=x.dtype)
    if _LPIPS_MODEL is None:
        if not _alexnet_weights_present():
            if not _LPIPS_WARNED:
                warnings.warn(
                    f"{lpips_missing()}; reporting NaN",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _LPIPS_WARNED = True
            return nan
        import lpips as _lp

        _LPIPS_MODEL = _lp.LPIPS(net="alex", verbose=False).eval()
    a, b = x.clamp(-1, 1).float(), ref.clamp(-1, 1).float()
    if a.shape[1] == 1:
        a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
    model = _LPIPS_MODEL.to(a.device)
    with torch.no_grad():
        return model(a, b).flatten().to(x.dtype)


def _residual_sq(y: torch.Tensor, Ax: torch.Tensor) -> tuple[torch.Tensor, int]:
    if y.shape != Ax.shape:
        raise ValueError(f"measurement shape {tuple(y.shape)} differs from A(x) shape {tuple(Ax.shape)}")
    r = y - Ax
    sq = (r.real**2 + r.imag**2) if r.is_complex() else r**2
    m = y[0].numel() * (2 if y.is_complex() else 1)
    return sq.reshape(y.shape[0], -1).sum(1), m


def chi2_reduced(y: torch.Tensor, Ax: torch.Tensor, sigma: float) -> torch.Tensor:
    """``χ²_ν = ‖y − A(x̂)‖² / (m σ²)`` per sample ``(B,)``; 1 for an ideal solver."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    ss, m = _residual_sq(y, Ax)
    return ss / (m * sigma**2)


def residual_gap(y: torch.Tensor, Ax: torch.Tensor, sigma: float) -> torch.Tensor:
    """``| ‖y − A(x̂)‖²/m − σ² |`` per sample ``(B,)``; 0 for an ideal solver."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    ss, m = _residual_sq(y, Ax)
    return (ss / m - sigma**2).abs()
