"""Noise models: exact likelihoods against scipy, gradients against finite differences, sampling, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm, poisson

import operators as O

torch.set_num_threads(1)

MODELS = [
    ("gaussian", lambda: O.GaussianNoise(0.1)),
    ("poisson", lambda: O.PoissonNoise(gain=4.0)),
    ("poisson_gaussian", lambda: O.PoissonGaussianNoise(gain=4.0, sigma=0.2)),
]


def _intensities(shape=(2, 1, 6, 5), seed=0, low=0.05, high=3.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low


def _brute_force_pg(y, ax, gain, sigma, kmax=2000):
    lam = (ax * gain).numpy().reshape(ax.shape[0], -1)
    yy = y.numpy().reshape(y.shape[0], -1)
    ks = np.arange(kmax)
    terms = poisson.logpmf(ks[None, None], lam[..., None]) + norm.logpdf(yy[..., None], ks[None, None] / gain, sigma)
    mx = terms.max(-1, keepdims=True)
    return -(mx[..., 0] + np.log(np.exp(terms - mx).sum(-1))).sum(-1)


def test_gaussian_nll_unchanged():
    noise = O.GaussianNoise(0.1)
    ax = _intensities()
    y = ax + 0.05
    expected = (0.05**2 / (2 * 0.01)) * 30 + 15 * math.log(2 * math.pi * 0.01)
    assert torch.allclose(noise.nll(y, ax), torch.full((2,), expected, dtype=torch.float64))
    c = torch.complex(ax, ax)
    # complex: residual 0.05 in the real part only; 60 real degrees of freedom in the normaliser
    expected_c = (0.05**2 / (2 * 0.01)) * 30 + 30 * math.log(2 * math.pi * 0.01)
    assert torch.allclose(noise.nll(c + 0.05, c), torch.full((2,), expected_c, dtype=torch.float64))


def test_poisson_nll_is_exact_log_pmf():
    noise = O.PoissonNoise(gain=4.0)
    ax = _intensities()
    y = noise.sample(ax, generator=torch.Generator().manual_seed(1))
    noise.validate(y)
    ref = -poisson.logpmf((y * 4).numpy(), (ax * 4).numpy()).reshape(2, -1).sum(1)
    np.testing.assert_allclose(noise.nll(y, ax).numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("gain,sigma,high", [(4.0, 0.2, 3.0), (0.5, 0.05, 2.0), (200.0, 0.01, 3.0)])
def test_poisson_gaussian_nll_matches_brute_force(gain, sigma, high):
    noise = O.PoissonGaussianNoise(gain=gain, sigma=sigma)
    ax = _intensities(high=high)
    y = noise.sample(ax, generator=torch.Generator().manual_seed(2))
    y[0, 0, 0, 0] = -3 * sigma  # read noise can make y negative
    val = noise.nll(y, ax)
    np.testing.assert_allclose(val.numpy(), _brute_force_pg(y, ax, gain, sigma), rtol=1e-10)
    bound = noise.last_truncation_bound
    assert bound.shape == (2,) and (bound <= 30 * noise.tol).all()


def test_poisson_gaussian_approaches_poisson_for_small_read_noise():
    ax = _intensities()
    y = O.PoissonNoise(gain=3.0).sample(ax, generator=torch.Generator().manual_seed(3))
    pg = O.PoissonGaussianNoise(gain=3.0, sigma=1e-3).nll(y, ax)
    po = O.PoissonNoise(gain=3.0).nll(y, ax)
    # the Gaussian factor of the matching count contributes −log N(0; 0, σ²) per entry
    assert torch.allclose(pg, po + 30 * 0.5 * math.log(2 * math.pi * 1e-6), rtol=1e-9)


@pytest.mark.parametrize("name,make", MODELS, ids=[m[0] for m in MODELS])
def test_nll_gradient_matches_finite_differences(name, make):
    noise = make()
    ax = _intensities(seed=4)
    y = noise.sample(_intensities(seed=5), generator=torch.Generator().manual_seed(6))
    a = ax.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(noise.nll(y, a).sum(), a)
    h = 1e-6
    for idx in [(0, 0, 0, 0), (1, 0, 3, 2), (0, 0, 5, 4)]:
        ap, am = ax.clone(), ax.clone()
        ap[idx] += h
        am[idx] -= h
        fd = (noise.nll(y, ap).sum() - noise.nll(y, am).sum()) / (2 * h)
        assert abs(float(grad[idx] - fd)) <= 1e-6 * max(1.0, abs(float(fd))), (idx, float(grad[idx]), float(fd))


@pytest.mark.parametrize("name,make", MODELS[1:], ids=[m[0] for m in MODELS[1:]])
def test_nonpositive_intensity_gives_finite_values_and_restoring_gradient(name, make):
    noise = make()
    y = torch.tensor([[[[0.0, 0.25, 1.0]]]], dtype=torch.float64)
    if name == "poisson_gaussian":
        y = y + 0.01
    floor = noise.rate_floor / noise.gain
    ax = torch.tensor([[[[-0.5, -0.1, 0.0]]]], dtype=torch.float64, requires_grad=True)
    val = noise.nll(y, ax)
    (g,) = torch.autograd.grad(val.sum(), ax)
    assert torch.isfinite(val).all() and torch.isfinite(g).all()
    assert (g < 0).all()  # increasing A(x) lowers the nll: it pushes back toward A(x) > 0
    # continuous (and C¹) at the floor
    eps = 1e-9
    for k in range(3):
        lo = ax.detach().clone()
        hi = ax.detach().clone()
        lo[..., k], hi[..., k] = floor - eps, floor + eps
        assert abs(float(noise.nll(y, lo) - noise.nll(y, hi))) < 1e-3


def test_sampling_statistics_and_reproducibility():
    clean = torch.full((1, 1, 200, 200), 2.5, dtype=torch.float64)
    for noise, var in [(O.PoissonNoise(gain=4.0), 2.5 / 4.0), (O.PoissonGaussianNoise(gain=4.0, sigma=0.3), 2.5 / 4.0 + 0.09)]:
        y1 = noise.sample(clean, generator=torch.Generator().manual_seed(7))
        y2 = noise.sample(clean, generator=torch.Generator().manual_seed(7))
        assert torch.equal(y1, y2)
        n = y1.numel()
        assert abs(float(y1.mean()) - 2.5) < 5 * math.sqrt(var / n)
        assert abs(float(y1.var()) - var) < 5 * var * math.sqrt(2 / n)
        assert abs(noise.effective_sigma(y1) - math.sqrt(var)) < 0.02
    counts = O.PoissonNoise(gain=4.0).sample(clean) * 4
    assert torch.equal(counts, counts.round())
    negative = O.PoissonNoise(gain=1.0).sample(torch.full((1, 1, 4, 4), -1.0))
    assert (negative == 0).all()  # rate max(A(x), 0)


def test_validation_errors():
    po = O.PoissonNoise(gain=2.0)
    with pytest.raises(ValueError, match="negative counts"):
        po.validate(torch.tensor([[0.5, -1.0]]))
    with pytest.raises(ValueError, match="negative counts"):
        po.nll(torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="not an integer count"):
        po.validate(torch.tensor([[0.3]]))
    with pytest.raises(ValueError, match="complex"):
        po.validate(torch.ones(1, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        O.PoissonGaussianNoise(1.0, 0.1).validate(torch.tensor([[float("inf")]]))
    with pytest.raises(ValueError, match="gain"):
        O.PoissonNoise(gain=0)
    with pytest.raises(ValueError, match="sigma"):
        O.PoissonGaussianNoise(gain=1.0, sigma=-1)
    with pytest.raises(ValueError, match="needs the measurement"):
        po.effective_sigma()
