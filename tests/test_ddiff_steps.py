"""DDiff's steps against a line-by-line transcription of Algorithm 1 (ddiff_algorithm.md), for both
noising variants, across the t₀ threshold, with the paper's gradient x-update and the default
discrepancy x-update — the transcription's projection is its own (a dense SVD and a root find on the
multiplier, tests/dense_projection.py), not the solver's."""
import math

import pytest
import torch

from ddiff import DDiff
from ddiff.problems import linear_gaussian_problem
from dense_projection import nearest_in_discrepancy_set


def algorithm_1(prior, y, A, noise, steps, gamma_of, noising, t0, x_update, seed):
    """Algorithm 1 written out from the spec, one statement per line of it."""
    sched = prior.schedule
    g = torch.Generator().manual_seed(seed)
    ts = sched.respace(steps)
    x_t = torch.randn(y.shape, generator=g, dtype=y.dtype)  # x_T ~ N(0, I)
    u = torch.zeros_like(x_t)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ab, ab_prev = sched.abar(t), sched.abar(t_prev)
        eps_hat = prior.eps(x_t, t)
        z = ((x_t - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)).clamp(-1, 1)  # 1. z-update
        v = z - u
        if x_update == "gradient":  # 2. x-update: one normalized gradient step
            with torch.enable_grad():
                vv = v.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(noise.nll(y, A(vv)).sum(), vv)
            x = v - gamma_of(t) * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        else:  # 2'. the self-calibrated x-update: the nearest point of {‖y − A x‖² ≤ m σ²}
            x = nearest_in_discrepancy_set(A, y, v, noise.sigma)
        eps_tilde = (x_t - math.sqrt(ab) * x) / math.sqrt(1 - ab)  # 3. implied noise
        if noising == "fresh":  # 5. noising step
            s = math.sqrt(1 - ab_prev)
        else:
            s = math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        xi = torch.randn(x.shape, generator=g, dtype=x.dtype) if (t > t0 and s > 0) else torch.zeros_like(x)
        x_t = math.sqrt(ab_prev) * (x + u) + math.sqrt(max(1 - ab_prev - s * s, 0.0)) * eps_tilde + s * xi
        u = u + (x - z)  # 6. dual update
        if x_update == "discrepancy":  # ... with the penalty 1/σ̄_t² of the prior step
            u = u * ((sched.sigma_bar(t_prev) / sched.sigma_bar(t)) ** 2 if t_prev >= 0 else 0.0)
    # the output: the final diffusion state x + u (the paper's step), or the last projected x, which
    # satisfies the discrepancy bound (the default; ddiff.solvers.ddiff's convention)
    return x_t if x_update == "gradient" else x


@pytest.mark.parametrize("noising, t0", [("ancestral", 400), ("fresh", 400), ("ancestral", -1), ("fresh", 1)])
@pytest.mark.parametrize("x_update", ["gradient", "discrepancy"])
def test_solver_equals_the_transcription(noising, t0, x_update):
    P = linear_gaussian_problem("blur", size=8, draws=2)
    steps = 6  # respaced 999, 799, 599, 400, 200, 0: crosses t0 = 400 with and without noise
    if x_update == "gradient":
        kw = dict(x_update="gradient", gamma0=40.0, a=3.3, b=0.1, t_gamma=500)
        solver = DDiff(P.prior, steps=steps, noising=noising, t0=t0, **kw)
        gamma_of = lambda t: solver.gamma(t, 64)  # noqa: E731
        assert gamma_of(999) == pytest.approx(3.3 * 40 * math.sqrt(64 / (256 * 256 * 3)))
        assert gamma_of(400) == pytest.approx(0.1 * 40 * math.sqrt(64 / (256 * 256 * 3)))
    else:
        solver = DDiff(P.prior, steps=steps, noising=noising, t0=t0, max_inner=64)  # n = 64: the Krylov space is whole
        gamma_of = None
    got = solver.solve(P.y, P.operator, P.noise, generator=torch.Generator().manual_seed(5)).x
    want = algorithm_1(P.prior, P.y, P.operator, P.noise, steps, gamma_of, noising, t0, x_update, seed=5)
    assert P.prior.schedule.respace(steps) == [999, 799, 599, 400, 200, 0]
    tol = 1e-10 if x_update == "gradient" else 1e-7  # the two projections agree to ~1e-9 per step
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_noise_coefficients_of_the_two_variants():
    """Fresh noise drops ε̃ (its coefficient is 0); ancestral keeps the DDPM posterior variance."""
    P = linear_gaussian_problem("mask", size=8, draws=1)
    sched = P.prior.schedule
    ab, ab_prev = sched.abar(500), sched.abar(499)
    fresh = DDiff(P.prior, noising="fresh").noise_scale(ab, ab_prev)
    assert fresh == pytest.approx(math.sqrt(1 - ab_prev)) and 1 - ab_prev - fresh**2 == pytest.approx(0, abs=1e-15)
    anc = DDiff(P.prior, noising="ancestral").noise_scale(ab, ab_prev)
    beta = 1 - ab / ab_prev
    assert anc**2 == pytest.approx((1 - ab_prev) / (1 - ab) * beta)  # DDPM's β̃_t
