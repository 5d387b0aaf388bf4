"""Diffusion core and exact priors: schedule, Tweedie, exact scores and posteriors."""
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from ddiff import VPSchedule
from ddiff.priors import GaussianPrior, GMMPrior, NFECounter, se_covariance, tweedie_x0
from ddiff.priors.exact import operator_matrix


def test_schedule_matches_reference_values():
    s = VPSchedule()
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.abar(999) == pytest.approx(4.036e-5, rel=1e-3)  # baselines_spec §1.4
    assert s.sigma_bar(0) == pytest.approx(0.0100, rel=1e-3)
    assert s.sigma_bar(999) == pytest.approx(157.4, rel=1e-3)
    assert s.abar(-1) == 1.0


def test_respacing():
    s = VPSchedule()
    assert s.respace(1000) == list(range(999, -1, -1))
    ts = s.respace(10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10 and all(a > b for a, b in zip(ts, ts[1:]))
    for bad in (0, -3, 1001, 2.5, True):
        with pytest.raises(ValueError):
            s.respace(bad)


def test_abar_at_interpolates_and_matches_table():
    s = VPSchedule()
    assert torch.allclose(s.abar_at(torch.tensor([0.0, 500.0, 999.0])), s.alpha_bar[[0, 500, 999]])
    mid = s.abar_at(torch.tensor(10.5)).item()
    assert s.abar(11) < mid < s.abar(10)


def test_tweedie_clips_and_inverts():
    x0 = torch.rand(2, 1, 4, 4) * 1.8 - 0.9
    eps = torch.randn(2, 1, 4, 4)
    a = 0.3
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    assert torch.allclose(tweedie_x0(x_t, eps, a), x0, atol=1e-6)
    assert tweedie_x0(x_t * 100, eps, a).abs().max() <= 1


def _noised_logpdf_gaussian(mean, cov, abar):
    """log p_t of N(√ᾱ μ, ᾱΣ + (1−ᾱ)I), built independently with torch.distributions."""
    n = cov.shape[0]
    return MultivariateNormal(math.sqrt(abar) * mean.reshape(-1), abar * cov + (1 - abar) * torch.eye(n, dtype=cov.dtype))


@pytest.mark.parametrize("channels", [1, 2])
def test_gaussian_eps_equals_autograd_score(channels):
    shape = (channels, 8, 8)
    n = math.prod(shape)
    g = torch.Generator().manual_seed(0)
    cov = se_covariance(shape, 0.3, 2.0) + 1e-4 * torch.eye(n, dtype=torch.float64)
    mean = 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    prior = GaussianPrior(mean, cov)
    x = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    for t in (0, 37, 500, 999):
        abar = prior.schedule.abar(t)
        xv = x.clone().requires_grad_(True)
        logp = _noised_logpdf_gaussian(mean, cov, abar).log_prob(xv.reshape(3, -1)).sum()
        (score,) = torch.autograd.grad(logp, xv)
        ref = -math.sqrt(1 - abar) * score
        err = (prior.eps(x, t) - ref).norm() / ref.norm()
        assert err < 1e-5, (t, err)


def test_gmm_eps_equals_autograd_score():
    shape = (1, 6, 6)
    n = 36
    g = torch.Generator().manual_seed(1)
    c1 = se_covariance(shape, 0.3, 2.0) + 1e-4 * torch.eye(n, dtype=torch.float64)
    c2 = se_covariance(shape, 0.1, 1.0) + 1e-3 * torch.eye(n, dtype=torch.float64)
    means = torch.stack([torch.full(shape, 0.4), torch.full(shape, -0.3)]).double()
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    prior = GMMPrior(w, means, torch.stack([c1, c2]))
    x = torch.randn(4, *shape, generator=g, dtype=torch.float64) * 0.5
    for t in (0, 20, 300, 999):
        abar = prior.schedule.abar(t)
        xv = x.clone().requires_grad_(True)
        comps = [_noised_logpdf_gaussian(m, c, abar).log_prob(xv.reshape(4, -1)) for m, c in zip(means, (c1, c2))]
        logp = torch.logsumexp(torch.stack(comps, 1) + torch.log(w), 1).sum()
        (score,) = torch.autograd.grad(logp, xv)
        ref = -math.sqrt(1 - abar) * score
        assert (prior.eps(x, t) - ref).norm() / ref.norm() < 1e-5


def test_gaussian_posterior_matches_information_form():
    shape = (1, 5, 5)
    n = 25
    g = torch.Generator().manual_seed(2)
    cov = se_covariance(shape, 0.3, 1.5) + 1e-3 * torch.eye(n, dtype=torch.float64)
    mean = torch.randn(shape, generator=g, dtype=torch.float64) * 0.1
    prior = GaussianPrior(mean, cov)
    A = torch.randn(12, n, generator=g, dtype=torch.float64)
    y = torch.randn(3, 12, generator=g, dtype=torch.float64)
    sigma = 0.2
    post = prior.posterior(y, A, sigma)
    P = torch.linalg.inv(cov) + A.T @ A / sigma**2  # precision form, independent of the code's gain form
    C = torch.linalg.inv(P)
    m = (C @ (torch.linalg.solve(cov, mean.reshape(-1)).unsqueeze(1) + A.T @ y.T / sigma**2)).T
    assert torch.allclose(post.mean.reshape(3, -1), m, atol=1e-9)
    assert torch.allclose(post.cov, C, atol=1e-9)


def test_gmm_posterior_responsibilities_match_bayes_rule():
    shape = (1, 4, 4)
    n = 16
    cov = se_covariance(shape, 0.2, 1.0) + 1e-3 * torch.eye(n, dtype=torch.float64)
    means = torch.stack([torch.full(shape, 0.5), torch.full(shape, -0.5)]).double()
    prior = GMMPrior(torch.tensor([0.2, 0.8]), means, torch.stack([cov, cov]))
    A = torch.eye(n, dtype=torch.float64)[:6]
    y = torch.full((1, 6), 0.45, dtype=torch.float64)
    post = prior.posterior(y, A, 0.1)
    ev = [MultivariateNormal(A @ m.reshape(-1), A @ cov @ A.T + 0.01 * torch.eye(6, dtype=torch.float64)).log_prob(y[0]) for m in means]
    r = torch.softmax(torch.stack(ev) + torch.log(torch.tensor([0.2, 0.8], dtype=torch.float64)), 0)
    assert torch.allclose(post.responsibilities[0], r, atol=1e-10)
    assert post.dominant.item() == 0


def test_operator_matrix_matches_operator():
    from operators import get_operator

    op = get_operator("gaussian_blur", kernel_size=5, std=1.0)
    M = operator_matrix(op, (1, 8, 8))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose((x.reshape(2, -1) @ M.T).reshape(2, 1, 8, 8), op(x), atol=1e-10)


def test_nfe_counter_counts_calls_not_samples():
    prior = GaussianPrior(torch.zeros(1, 4, 4, dtype=torch.float64), torch.eye(16, dtype=torch.float64))
    net = NFECounter(prior)
    net.eps(torch.zeros(5, 1, 4, 4, dtype=torch.float64), 10)
    net.x0(torch.zeros(5, 1, 4, 4, dtype=torch.float64), 10)
    assert net.nfe == 2 and net.with_grad == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mean=torch.zeros(1, 2, 2), cov=torch.eye(3)), "shape"),
        (dict(mean=torch.zeros(1, 2, 2), cov=torch.tensor([[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), "symmetric"),
        (dict(mean=torch.zeros(1, 2, 2), cov=-torch.eye(4)), "positive"),
        (dict(mean=torch.zeros(4), cov=torch.eye(4)), "mean"),
    ],
)
def test_gaussian_prior_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianPrior(**kwargs)


def test_prior_rejects_wrong_image_shape():
    prior = GaussianPrior(torch.zeros(1, 4, 4, dtype=torch.float64), torch.eye(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="channel"):
        prior.eps(torch.zeros(1, 3, 4, 4, dtype=torch.float64), 5)
    with pytest.raises(ValueError, match="shape"):
        prior.eps(torch.zeros(1, 1, 5, 5, dtype=torch.float64), 5)
