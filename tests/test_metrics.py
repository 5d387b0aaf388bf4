"""Metrics: PSNR/SSIM agree with scikit-image; LPIPS never invents a number; data-fit metrics."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ddiff import metrics


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 2, 24, 31, generator=g, dtype=torch.float64)
    b = (a + 0.08 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a, b


def test_psnr_matches_skimage(pair):
    a, b = pair
    ours = metrics.psnr(2 * b - 1, 2 * a - 1)
    ref = [peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=1) for i in range(3)]
    assert np.allclose(ours.numpy(), ref, atol=1e-4)


def test_ssim_matches_skimage(pair):
    a, b = pair
    ours = metrics.ssim(2 * b - 1, 2 * a - 1)
    ref = [
        structural_similarity(a[i].numpy(), b[i].numpy(), channel_axis=0, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=1)
        for i in range(3)
    ]
    assert np.allclose(ours.numpy(), ref, atol=1e-4)
    assert metrics.ssim(2 * a - 1, 2 * a - 1).allclose(torch.ones(3, dtype=torch.float64))


def test_lpips_reports_nan_and_warns_without_weights(tmp_path, monkeypatch, pair):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    monkeypatch.setattr(metrics, "_LPIPS_MODEL", None)
    monkeypatch.setattr(metrics, "_LPIPS_WARNED", False)
    a, b = pair
    with pytest.warns(RuntimeWarning, match="LPIPS not computed: the AlexNet weights are not at .*reporting NaN"):
        v = metrics.lpips(2 * a[:, :1] - 1, 2 * b[:, :1] - 1)
    assert torch.isnan(v).all() and v.shape == (3,)


def test_chi2_and_residual_gap_for_exact_noise():
    g = torch.Generator().manual_seed(1)
    Ax = torch.rand(4, 1, 64, 64, generator=g, dtype=torch.float64)
    sigma = 0.05
    y = Ax + sigma * torch.randn(Ax.shape, generator=g, dtype=torch.float64)
    chi2 = metrics.chi2_reduced(y, Ax, sigma)
    m = 64 * 64
    assert ((chi2 - 1).abs() < 4 * (2 / m) ** 0.5).all()
    assert (metrics.residual_gap(y, Ax, sigma) < 4 * sigma**2 * (2 / m) ** 0.5).all()
    assert (metrics.chi2_reduced(y, Ax + 0.1, sigma) > 3).all()  # a biased fit is visible


def test_chi2_counts_complex_measurements_twice():
    g = torch.Generator().manual_seed(2)
    Ax = torch.randn(2, 1, 32, 32, generator=g, dtype=torch.complex128)
    sigma = 0.1
    n = torch.complex(torch.randn(Ax.shape, generator=g, dtype=torch.float64), torch.randn(Ax.shape, generator=g, dtype=torch.float64))
    chi2 = metrics.chi2_reduced(Ax + sigma * n, Ax, sigma)
    assert ((chi2 - 1).abs() < 0.1).all()


def test_metrics_reject_bad_input(pair):
    a, b = pair
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(a, b[..., :-1])
    with pytest.raises(ValueError, match="sigma"):
        metrics.chi2_reduced(a, b, 0.0)
    with pytest.raises(ValueError, match="shape"):
        metrics.chi2_reduced(a, b[:, :1], 0.1)
