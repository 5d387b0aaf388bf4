"""The math of the calibrated bounds (ddiff.audit.rcps, ddiff.audit.bounds), against independent answers:
scipy's binomial for the Hoeffding–Bentkus p-value, the closed form of the smallest calibration set,
simulated coverage over many calibration draws on synthetic exchangeable data, exact diag(AᴴA)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import operators
from ddiff.audit import (ScaleRule, bound_features, calibrate_bounds, fit_scale_rule, hb_pvalue, hb_ucb,
                         min_calibration_frames, rcps_lambda, ucb, wsr_ucb)
from ddiff.audit.rcps import binom_cdf


def test_hoeffding_bentkus_pvalue_matches_scipy_binomial():
    stats = pytest.importorskip("scipy.stats")
    for n, rhat, a in [(30, 0.02, 0.1), (200, 0.041, 0.05), (57, 0.0, 0.1), (1000, 0.09, 0.1), (25, 0.3, 0.1)]:
        assert binom_cdf(math.ceil(n * rhat), n, a) == pytest.approx(stats.binom.cdf(math.ceil(n * rhat), n, a), rel=1e-10)
        kl = (rhat * math.log(rhat / a) if rhat > 0 else 0) + (1 - rhat) * math.log((1 - rhat) / (1 - a))
        hoeff = math.exp(-n * kl) if rhat < a else 1.0
        expect = min(1.0, hoeff, math.e * stats.binom.cdf(math.ceil(n * rhat), n, a))
        assert hb_pvalue(rhat, n, a) == pytest.approx(expect, rel=1e-9)
    # the UCB is where the p-value crosses δ
    from ddiff.audit.rcps import certified

    rng = np.random.default_rng(3)
    L = rng.uniform(0, 0.12, (80, 6)) * np.linspace(0.3, 1.2, 6)
    for b in ("wsr", "hb"):  # the fast test is the UCB's own verdict
        assert list(certified(L, 0.05, 0.1, b)) == [ucb(L[:, g], 0.1, b) < 0.05 for g in range(6)]
    u = hb_ucb(0.03, 300, 0.1)
    assert hb_pvalue(0.03, 300, u - 1e-6) >= 0.1 - 1e-9 and hb_pvalue(0.03, 300, u + 1e-4) < 0.1


def test_smallest_calibration_set_closed_form_and_refusal():
    for a, d in [(0.1, 0.1), (0.05, 0.1), (0.2, 0.05)]:
        assert min_calibration_frames(a, d, "hb") == math.floor(math.log(d) / math.log(1 - a)) + 1
        n = min_calibration_frames(a, d, "wsr")
        assert wsr_ucb(np.zeros(n), d) < a <= wsr_ucb(np.zeros(n - 1), d)
    assert min_calibration_frames(0.1, 0.1, "hb") == 22 and min_calibration_frames(0.05, 0.1, "hb") == 45
    need = min_calibration_frames(0.1, 0.1)
    with pytest.raises(ValueError, match=f"at least {need}"):
        rcps_lambda([np.ones((4, 4))] * (need - 1), 0.1, 0.1)
    feats, err = np.ones((10, 3, 4, 4)), np.ones((10, 4, 4))
    with pytest.raises(ValueError, match=r"too few for alpha 0\.1.*at least \d+ are needed"):
        calibrate_bounds(feats, err, 0.1, 0.1)


@pytest.mark.parametrize("bound", ["wsr", "hb"])
def test_upper_confidence_bounds_cover_the_mean(bound):
    """Losses in [0, 1] with known mean: the UCB lies above it in ≥ 1 − δ of 400 draws."""
    rng = np.random.default_rng(0)
    mu, n, delta, misses = 0.08, 60, 0.1, 0
    for _ in range(400):
        x = rng.beta(0.8, 0.8 * (1 - mu) / mu, n)
        u = wsr_ucb(x, delta) if bound == "wsr" else hb_ucb(float(x.mean()), n, delta)
        misses += u < mu
    assert misses / 400 <= delta + 0.03  # binomial slack: sd of the rate is 0.015 at δ


def _synthetic(rng, n, hw=16):
    """Exchangeable frames: heteroscedastic errors whose sd is 0.02 + 0.3·f₁ (f₁ a feature); f₂, f₃ noise."""
    f1 = rng.gamma(0.3, 0.3, (n, hw, hw))
    f2 = rng.gamma(2.0, 0.05, (n, hw, hw))
    f3 = rng.gamma(2.0, 0.05, (n, hw, hw))
    sd = (0.02 + 0.3 * f1) * rng.uniform(0.7, 1.3, (n, 1, 1))  # frames differ in difficulty
    err = np.abs(rng.standard_normal((n, hw, hw)) * sd)
    return np.stack([f1, f2, f3], 1), err


def test_rcps_controls_pixel_miscoverage_over_calibration_draws():
    """300 calibration draws: test-population miscoverage > α in at most δ (+ slack) of them; the
    fitted rule puts its weight on the informative feature and beats a constant width by far."""
    rng = np.random.default_rng(1)
    alpha, delta, violations, widths, risks = 0.1, 0.1, 0, [], []
    feats_t, err_t = _synthetic(rng, 400)
    rule = fit_scale_rule(*_synthetic(rng, 40), alpha)
    # (the width-optimal s is not proportional to the error sd: marginal coverage gives up the widest pixels first)
    assert rule.weights[1] > 0.2 and rule.weights[2] + rule.weights[3] < 0.1, rule
    s_t = rule.scale(feats_t)
    for _ in range(300):
        f, e = _synthetic(rng, 60)
        lam = rcps_lambda(list(e / rule.scale(f)), alpha, delta)["lambda"]
        risk = float((err_t > lam * s_t).mean())
        violations += risk > alpha
        risks.append(risk)
        widths.append(2 * lam * s_t.mean())
    assert violations / 300 <= delta + 0.03, violations
    assert np.mean(risks) > alpha / 3  # not vacuous: the bounds are not simply huge
    const = ScaleRule((1.0, 0, 0, 0), (1.0, 1.0, 1.0))
    f, e = _synthetic(rng, 60)
    lam_c = rcps_lambda(list(e / const.scale(f)), alpha, delta)["lambda"]
    assert np.mean(widths) < 0.8 * 2 * lam_c  # narrower than the constant band calibrated the same way


def test_balanced_rule_spreads_the_misses_narrow_rule_minimises_the_width():
    """Two kinds of pixels (a blind 'hole' with 10× the error sd, a feature that says which): the balanced
    rule misses about as often in both, the narrow one is narrower and puts its misses in the hole."""
    from ddiff.audit.bounds import _width_objective

    rng = np.random.default_rng(4)
    n, hw = 60, 16
    hole = np.zeros((n, hw, hw), bool)
    hole[:, 4:9, 4:9] = True
    post = np.where(hole, 1.0, 0.1) + 0.0 * rng.random((n, hw, hw))
    feats = np.stack([rng.gamma(2.0, 0.05, (n, hw, hw)), post, rng.gamma(2.0, 0.05, (n, hw, hw))], 1)
    err = np.abs(rng.standard_normal((n, hw, hw)) * np.where(hole, 0.5, 0.05))
    out = {}
    for obj in ("balanced", "narrow"):
        rule = fit_scale_rule(feats, err, 0.1, objective=obj)
        s = rule.scale(feats)
        lam = np.quantile(err / s, 0.9)
        miss = err > lam * s
        out[obj] = (miss[hole].mean(), miss[~hole].mean(), _width_objective(s.ravel(), err.ravel(), 0.1))
    assert abs(out["balanced"][0] - out["balanced"][1]) < 0.04, out
    assert out["narrow"][0] > 2 * out["narrow"][1] and out["narrow"][2] < out["balanced"][2], out


def test_calibrate_bounds_splits_fit_and_lambda_frames():
    rng = np.random.default_rng(2)
    f, e = _synthetic(rng, 80)
    rec = calibrate_bounds(f, e, 0.1, 0.1)
    assert rec["n_fit"] == 40 and rec["n_lambda"] == 40 and rec["ucb"] < 0.1 and rec["lambda"] > 0
    rule = ScaleRule.from_dict(rec["rule"])
    again = calibrate_bounds(f[40:], e[40:], 0.1, 0.1, rule=rule)
    assert again["lambda"] == rec["lambda"]  # λ uses only the held-back frames


def test_features_posterior_sd_exact_for_a_mask_and_close_for_super_resolution():
    torch.manual_seed(0)
    sigma, s0 = 0.05, 0.5
    mask = torch.ones(16, 16)
    mask[4:10, 5:12] = 0
    A = operators.MaskOperator(mask)
    x = torch.rand(3, 1, 1, 16, 16) * 2 - 1
    f = bound_features(x, A, operators.GaussianNoise(sigma))
    post = f[0, 1]
    assert torch.allclose(post[mask == 0], torch.full_like(post[mask == 0], s0))
    assert torch.allclose(post[mask == 1], torch.full_like(post[mask == 1], 1 / math.sqrt(1 / sigma**2 + 1 / s0**2)))
    from ddiff.audit.bounds import _box

    pooled = _box(x.double().var(0)[:, 0], 5).sqrt()  # the seed variance pooled over 5×5 pixels
    assert torch.allclose(f[:, 0], pooled)
    # ×4 super-resolution (mean pooling): diag(AᵀA) = bicubic with antialiasing: ≈ 1/16 inside, more at the edges; Hutchinson (32 probes) + 9-px smoothing: median within 8 %, worst 20 %
    B = operators.get_operator("super_resolution", scale=4)
    z = torch.rand(2, 1, 1, 24, 24)
    ps = bound_features(z, B, operators.GaussianNoise(sigma))[0, 1]
    with torch.no_grad():
        cols = torch.eye(24 * 24).view(-1, 1, 24, 24)
        d = (B(cols) ** 2).flatten(1).sum(1).view(24, 24).double()
    exact = 1 / (d / sigma**2 + 1 / s0**2).sqrt()
    rel = (ps - exact).abs() / exact
    assert rel.median() < 0.08 and rel.max() < 0.2, (rel.median(), rel.max())
