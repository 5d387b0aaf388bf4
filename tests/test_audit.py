"""Tests of ``ddiff.audit``: exact distributions, calibration, detection, the null-space limit.

Seeded, real operators from ``operators.get_operator``; scipy only as the reference for exact
distribution values. Run: ``OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/test_audit.py``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

import operators
from ddiff import metrics
from ddiff.audit import (
    AuditResult,
    audit,
    detection_rates,
    elementwise_stats,
    fwer_threshold,
    image_grid_factor,
    observed_mask,
    plant_disk,
    poisson_deviance_moments,
    scaled_chi2_sf,
    smooth_field,
    uncertainty,
    window_sums,
)

SIGMA = 0.05


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Exact pieces
# ----------------------------------------------------------------------------------------------
def test_gaussian_p_value_is_exact_chi2_survival():
    m = torch.tensor([1.0, 16.0, 256.0, 4096.0, 12288.0], dtype=torch.float64)
    S = m * torch.tensor([3.0, 1.5, 1.1, 1.05, 0.97], dtype=torch.float64)
    ref = st.chi2.sf(S.numpy(), m.numpy())
    np.testing.assert_allclose(scaled_chi2_sf(S, m, 2 * m).numpy(), ref, rtol=1e-9)
    # the three-cumulant form with χ²₁ cumulants (1, 2, 8) per entry is the same distribution
    np.testing.assert_allclose(scaled_chi2_sf(S, m, 2 * m, 8 * m).numpy(), ref, rtol=1e-9)


@pytest.mark.parametrize("mu", [0.003, 0.37, 1.0, 2.5, 17.3, 420.0])
def test_poisson_deviance_moments_match_direct_sums(mu):
    k = np.arange(0, int(mu + 40 * math.sqrt(mu) + 60))
    p = st.poisson.pmf(k, mu)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 2 * (np.where(k > 0, k * np.log(k / mu), 0.0) - (k - mu))
    m1 = (p * d).sum()
    m2 = (p * (d - m1) ** 2).sum()
    m3 = (p * (d - m1) ** 3).sum()
    e, v, k3 = poisson_deviance_moments(torch.tensor([mu]))
    np.testing.assert_allclose([e.item(), v.item(), k3.item()], [m1, m2, m3], rtol=2e-3)


def test_poisson_gaussian_pearson_moments_by_simulation():
    noise = operators.PoissonGaussianNoise(gain=3.0, sigma=0.2)
    Ax = torch.full((1, 400_000), 0.8, dtype=torch.float64)
    y = noise.sample(Ax, gen(3))
    d, e, v, k3 = elementwise_stats(y, Ax, noise)
    assert abs(d.mean().item() - e[0, 0].item()) < 0.01
    assert abs(d.var().item() / v[0, 0].item() - 1) < 0.03
    c3 = ((d - d.mean()) ** 3).mean().item()
    assert abs(c3 / k3[0, 0].item() - 1) < 0.1


def test_window_sums_match_loops():
    t = torch.rand(2, 13, 17, dtype=torch.float64, generator=gen(0))
    for w in (1, 4, 5):
        lo = (w - 1) // 2
        ref = torch.zeros_like(t)
        for i in range(13):
            for j in range(17):
                ref[:, i, j] = t[:, max(0, i - lo) : i - lo + w, max(0, j - lo) : j - lo + w].sum((1, 2))
        torch.testing.assert_close(window_sums(t, w, sliding=True), ref)
        cells = window_sums(t, w, sliding=False)
        assert cells.shape == (2, math.ceil(13 / w), math.ceil(17 / w))
        torch.testing.assert_close(cells[:, 0, 0], t[:, :w, :w].sum((1, 2)))
        torch.testing.assert_close(cells.sum((1, 2)), t.sum((1, 2)))


def test_fwer_threshold_rules():
    p = torch.tensor([[0.001, 0.013, 0.02, 0.3, float("nan")]], dtype=torch.float64)
    n, a = 4, 0.05
    assert fwer_threshold(p, a, "bonferroni").tolist() == [[True, False, False, False, False]]
    sidak = 1 - (1 - a) ** (1 / n)
    assert fwer_threshold(p, a, "sidak").tolist() == [[bool(x <= sidak) for x in [0.001, 0.013, 0.02, 0.3]] + [False]]
    # BH: p_(i) ≤ iα/n → 0.001 ≤ .0125, 0.013 ≤ .025, 0.02 ≤ .0375 ✓, 0.3 > .05 → first three
    assert fwer_threshold(p, a, "bh").tolist() == [[True, True, True, False, False]]
    with pytest.raises(ValueError, match="control"):
        fwer_threshold(p, a, "holm?")


def test_grid_mapping():
    assert image_grid_factor((64, 64), (64, 64)) == ("same", 0)
    assert image_grid_factor((64, 64), (16, 16)) == ("down", 4)
    assert image_grid_factor((64, 64), (58, 58)) == ("valid", 3)
    assert image_grid_factor((64, 64), (10, 7)) is None


# ----------------------------------------------------------------------------------------------
# Per-sample statistics against the metrics module and hand computations
# ----------------------------------------------------------------------------------------------
def test_gaussian_tile_statistics_equal_paper_metrics():
    A = operators.get_operator("gaussian_blur")
    noise = operators.GaussianNoise(SIGMA)
    x = smooth_field((4, 3, 32, 32), generator=gen(1))
    y = noise.sample(A(x), gen(2))
    xh = x + 0.02
    r = audit(xh, y, A, noise)
    Ax = A(xh)
    torch.testing.assert_close(r.chi2_nu, metrics.chi2_reduced(y, Ax, SIGMA).double())
    torch.testing.assert_close(r.chi2_paper, r.chi2_nu)
    torch.testing.assert_close(r.residual_gap, metrics.residual_gap(y, Ax, SIGMA).double())
    torch.testing.assert_close(r.nll, noise.nll(y, Ax).double())
    m = 3 * 32 * 32
    assert r.dof.tolist() == [m] * 4
    torch.testing.assert_close(r.stat_std, torch.full((4,), math.sqrt(2 * m), dtype=torch.float64))
    np.testing.assert_allclose(r.p_value.numpy(), st.chi2.sf(r.stat.numpy(), m), rtol=1e-8)
    np.testing.assert_allclose(r.p_value_low.numpy(), st.chi2.cdf(r.stat.numpy(), m), rtol=1e-8)
    torch.testing.assert_close(r.z, (r.stat - m) / math.sqrt(2 * m))


def test_inpainting_counts_only_observed_entries():
    A = operators.get_operator("inpainting_random", prob=0.7, image_size=32)
    noise = operators.GaussianNoise(SIGMA)
    x = smooth_field((3, 2, 32, 32), generator=gen(4))
    y = noise.sample(A(x), gen(5))  # noise lands on the hidden entries too (DPS convention)
    obs = observed_mask(A, x, y)
    torch.testing.assert_close(obs, torch.broadcast_to(A.mask.bool(), y.shape))
    r = audit(x, y, A, noise, window=8)
    n_obs = int(A.mask.sum().item()) * 2
    assert r.dof.tolist() == [n_obs] * 3
    ref = ((y - A(x)) ** 2 * A.mask).flatten(1).sum(1).double() / (n_obs * SIGMA**2)
    torch.testing.assert_close(r.chi2_nu, ref)
    # observed pixels of a window: unobserved ones add neither to S nor to its expectation
    assert r.window_chi2.shape == (3, 32, 32) and r.region_p.shape == (3, 4, 4)


def test_super_resolution_maps_back_by_scale():
    A = operators.get_operator("super_resolution", scale=4)
    noise = operators.GaussianNoise(SIGMA)
    x = smooth_field((2, 1, 64, 64), generator=gen(6))
    y = noise.sample(A(x), gen(7))
    r = audit(x, y, A, noise, window=16)
    assert r.mapping == ("down", 4) and r.window_meas == 4
    assert r.window_p.shape == (2, 64, 64) and r.region_p.shape == (2, 4, 4)
    # nearest upsampling: each 4×4 image block carries one measurement pixel's value
    blk = r.window_p[:, :4, :4]
    assert torch.all(blk == blk[:, :1, :1])


def test_bad_inputs_raise_value_error():
    A = operators.get_operator("inpainting_random", image_size=16)
    noise = operators.GaussianNoise(SIGMA)
    x = torch.zeros(2, 1, 16, 16)
    y = A(x)
    with pytest.raises(ValueError, match="alpha"):
        audit(x, y, A, noise, alpha=1.5)
    with pytest.raises(ValueError, match="control"):
        audit(x, y, A, noise, control="fdr?")
    with pytest.raises(ValueError, match="x_hat"):
        audit(x[0], y, A, noise)
    with pytest.raises(ValueError, match="batch"):
        audit(x, y[:1], A, noise)
    with pytest.raises(ValueError, match="window"):
        audit(x, y, A, noise, window=0)
    with pytest.raises(ValueError, match="K >= 2"):
        uncertainty(x.unsqueeze(0), A, noise, y)


def test_arrays_for_storage():
    A = operators.get_operator("gaussian_blur")
    noise = operators.GaussianNoise(SIGMA)
    x = smooth_field((2, 1, 32, 32), generator=gen(8))
    r = audit(x, noise.sample(A(x), gen(9)), A, noise, window=8)
    assert isinstance(r, AuditResult)
    arrays = r.arrays()
    for name, (dims, arr) in arrays.items():
        assert isinstance(arr, np.ndarray) and arr.ndim == len(dims), name
        assert arr.shape[0] == 2
    assert arrays["window_p"][1].shape == (2, 32, 32)
    assert set(r.attrs()) >= {"alpha", "control", "window", "noise", "mapping"}


# ----------------------------------------------------------------------------------------------
# Calibration: the ideal solver (x̂ = truth) on clean tiles
# ----------------------------------------------------------------------------------------------
CAL_TILES = 1000  # binomial s.e. at α = 0.05: 0.69 %, so ±2 % is a 2.9-s.e. band


@pytest.mark.parametrize(
    "case",
    ["gaussian-inpainting", "poisson-microscopy-gain100", "poisson-microscopy-gain2"],
)
def test_calibration_false_flag_rate(case):
    if case == "gaussian-inpainting":
        A = operators.get_operator("inpainting_random", prob=0.7, image_size=32)
        noise, offset = operators.GaussianNoise(SIGMA), 0.0
    else:
        A = operators.get_operator("microscopy_widefield")
        noise = operators.PoissonNoise(gain=100.0 if case.endswith("100") else 2.0)
        offset = 1.0  # intensities in [0.5, 1.5]
    g = gen(100)
    x = smooth_field((CAL_TILES, 1, 32, 32), generator=g) + offset
    y = noise.sample(A(x), g)
    for alpha in (0.05, 0.01):
        r = audit(x, y, A, noise, alpha=alpha, window=8)
        tile_rate = r.tile_flag.double().mean().item()
        region_rate = r.region_any.double().mean().item()
        assert abs(tile_rate - alpha) <= 0.02, (case, alpha, tile_rate)
        assert abs(region_rate - alpha) <= 0.02, (case, alpha, region_rate)
    # the tile p-values are uniform under the null, not only at the cut-offs
    assert st.kstest(r.p_value.numpy(), "uniform").pvalue > 1e-3


# ----------------------------------------------------------------------------------------------
# Detection of planted hallucinations (contrast 0.3, radius 4 px; α = 0.01)
# ----------------------------------------------------------------------------------------------
DETECT = {
    # name: (operator kwargs, noise, truth offset) — contrast in model units / intensity units
    "gaussian_blur": ({}, operators.GaussianNoise(SIGMA), 0.0),
    "super_resolution": ({"scale": 4}, operators.GaussianNoise(SIGMA), 0.0),
    "inpainting_random": ({"prob": 0.7, "image_size": 64}, operators.GaussianNoise(SIGMA), 0.0),
    "microscopy_widefield": ({}, operators.PoissonNoise(gain=100.0), 1.0),
}


@pytest.mark.parametrize("name", list(DETECT))
def test_detection_of_planted_hallucinations(name):
    kw, noise, offset = DETECT[name]
    A = operators.get_operator(name, **kw)
    g = gen(200)
    truth = smooth_field((200, 1, 64, 64), generator=g) + offset
    r = detection_rates(A, noise, truth, contrast=0.3, radius=4, alpha=0.01, generator=g)
    assert r["false_region"] <= 0.05, r
    assert r["recall_region"] >= 0.95, r
    # a structure too faint for the data is not "detected" by construction of the test
    weak = detection_rates(A, noise, truth, contrast=0.02, radius=2, alpha=0.01, generator=g)
    assert weak["recall_region"] <= 0.1, weak


# ----------------------------------------------------------------------------------------------
# The null-space limit, demonstrated with an exact Bayesian solver (Gaussian prior)
# ----------------------------------------------------------------------------------------------
def _gaussian_prior_cov(h: int, w: int, sd: float, length: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).double()
    d2 = torch.cdist(pos, pos) ** 2
    return sd**2 * torch.exp(-d2 / (2 * length**2)) + 1e-6 * torch.eye(h * w, dtype=torch.float64)


def test_null_space_hallucination_is_invisible_to_residuals_but_covered_by_uncertainty():
    H = W = 32
    B, K = 12, 8
    A = operators.get_operator("inpainting_box", box_size=12, margin=(8, 8), seed=1, image_size=H)
    noise = operators.GaussianNoise(SIGMA)
    g = gen(300)
    cov = _gaussian_prior_cov(H, W, sd=0.3, length=3.0)
    L = torch.linalg.cholesky(cov)
    truth = (L @ torch.randn(H * W, B, generator=g, dtype=torch.float64)).T.reshape(B, 1, H, W).float()
    y = noise.sample(A(truth), g)
    # exact posterior p(x | y) of the Gaussian prior given the observed pixels: the ideal solver
    o = A.mask.flatten().bool()
    C_oo = cov[o][:, o] + SIGMA**2 * torch.eye(int(o.sum()), dtype=torch.float64)
    gain_mat = torch.linalg.solve(C_oo, cov[o]).T  # (n, n_obs) = C_xo C_oo⁻¹
    post_mean = (gain_mat @ y.flatten(1)[:, o].double().T).T
    post_cov = cov - gain_mat @ cov[o]
    Lp = torch.linalg.cholesky(post_cov + 1e-8 * torch.eye(H * W, dtype=torch.float64))
    draws = post_mean.unsqueeze(0) + torch.einsum("ij,kbj->kbi", Lp, torch.randn(K, B, H * W, generator=g, dtype=torch.float64))
    samples = draws.reshape(K, B, 1, H, W).float()

    # hallucination pasted at the centre of the hole of reconstruction 0
    hole = (A.mask == 0)
    rows, cols = torch.nonzero(hole, as_tuple=True)
    cy, cx = int(rows.float().mean().round()), int(cols.float().mean().round())
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    disk = (((yy - cy) ** 2 + (xx - cx) ** 2) <= 9).float()  # radius 3 px
    assert bool((disk.bool() <= hole).all())
    x_hal = samples[0] + 0.5 * disk

    ref = audit(samples[0], y, A, noise, alpha=0.05, window=8)
    hal = audit(x_hal, y, A, noise, alpha=0.05, window=8)
    # the limit: A(x̂ + h) = A(x̂) exactly, so every residual statistic is unchanged — not detected
    torch.testing.assert_close(hal.stat, ref.stat)
    torch.testing.assert_close(hal.region_p, ref.region_p, equal_nan=True)
    assert not hal.flag_map[:, disk.bool()].any()
    # …whereas the same structure on observed pixels is flagged in every tile
    out = (((yy - 4) ** 2 + (xx - 4) ** 2) <= 9).float()
    assert bool((out.bool() & hole).sum() == 0)
    seen = audit(samples[0] + 0.5 * out, y, A, noise, alpha=0.05, window=8)
    assert seen.flag_map[:, out.bool()].any(1).all()

    u = uncertainty(samples, A, noise, y, spread_tol=0.1)
    torch.testing.assert_close(u.data_weight, torch.broadcast_to(A.mask.double(), (B, H, W)))
    covered = u.prior_filled[:, disk.bool()].double().mean().item()
    assert covered >= 0.95, covered  # the uncertainty map covers the hallucination
    observed_pixels = ~hole
    false_cover = u.prior_filled[:, observed_pixels].double().mean().item()
    assert false_cover <= 0.01, false_cover  # and not the pixels the data pins down
    print(f"null-space: disk covered by prior_filled {covered:.3f}, observed pixels marked {false_cover:.4f}")


def test_uncertainty_hutchinson_diag_for_blur():
    A = operators.get_operator("gaussian_blur", kernel_size=21, std=2.0)
    noise = operators.GaussianNoise(SIGMA)
    x = smooth_field((12, 1, 32, 32), generator=gen(9)).reshape(3, 4, 1, 32, 32)
    u = uncertainty(x, A, noise, probes=64)
    assert u.spread.shape == (4, 32, 32) and u.measured_spread.shape == (4, 32, 32)
    assert u.K == 3 and u.data_weight.shape == (4, 32, 32)
    # exact diag(AᵀA) = squared column norms, from all 1024 basis images
    basis = torch.eye(32 * 32).reshape(-1, 1, 32, 32)
    exact = (A(basis) ** 2).flatten(1).sum(1).reshape(32, 32).double()
    est = u.data_weight.mean(0)  # 4 × 64 = 256 Rademacher probes per pixel
    assert abs(est.mean().item() / exact.mean().item() - 1) < 0.03
    assert (est - exact).abs().mean().item() < 0.25 * exact.mean().item()
    # the seed spread is the unbiased per-pixel standard deviation
    torch.testing.assert_close(u.spread, x.double().std(0, unbiased=True).squeeze(1))


# ----------------------------------------------------------------------------------------------
# Report (flows.audit_report): files written, numbers in the table are the result's
# ----------------------------------------------------------------------------------------------
def test_render_audit_report_writes_markdown_and_figures(tmp_path):
    from flows.audit_report import render_audit_report

    A = operators.get_operator("super_resolution", scale=4)
    noise = operators.GaussianNoise(SIGMA)
    g = gen(400)
    x = smooth_field((6, 3, 64, 64), generator=g)
    y = noise.sample(A(x), g)
    xh, _ = plant_disk(x, 0.5, 5, g, margin=4)
    xh[3:] = x[3:]  # three hallucinated, three faithful
    r = audit(xh, y, A, noise)
    u = uncertainty(torch.stack([xh, xh + 0.01 * torch.randn(xh.shape, generator=g)]), A, noise, y)
    md_path = render_audit_report(r, tmp_path / "report", x_hat=xh, y=y, unc=u, max_samples=2)
    text = md_path.read_text()
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert "audit_chi2_hist.png" in pngs and len(pngs) == 3  # histogram + 2 samples
    for name in pngs:
        assert f"({name})" in text and (tmp_path / "report" / name).stat().st_size > 1000
    # the flagged samples come first, and the table carries the measured χ²_ν
    assert "audit_sample_0.png" in pngs or "audit_sample_1.png" in pngs or "audit_sample_2.png" in pngs
    assert f"| 0 | {float(r.chi2_nu[0]):.4f} |" in text
    assert f"**{int(r.tile_flag.sum())} / 6**" in text
    with pytest.raises(ValueError, match="AuditResult"):
        render_audit_report({"chi2": 1}, tmp_path / "bad")


def test_tiles_cut_from_a_frame_need_their_halo_excluded():
    # the measurement of a frame, audited tile by tile with the truth as reconstruction: near a
    # tile's edge A(tile) sees reflect padding, not the neighbours the real measurement saw
    A = operators.get_operator("gaussian_blur", kernel_size=21, std=3.0)
    noise = operators.GaussianNoise(SIGMA)
    g = gen(500)
    frame = smooth_field((16, 1, 256, 256), length=4.0, generator=g)
    y_frame = noise.sample(A(frame), g)
    x_t = frame.unfold(2, 64, 64).unfold(3, 64, 64).permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, 64, 64)
    y_t = y_frame.unfold(2, 64, 64).unfold(3, 64, 64).permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, 64, 64)
    naive = audit(x_t, y_t, A, noise, alpha=0.05, window=8)
    core = audit(x_t, y_t, A, noise, alpha=0.05, window=8, exclude_border=A.halo)
    assert naive.region_any.double().mean() > 0.5  # edge effects look like misfit
    assert core.dof[0].item() == (64 - 2 * A.halo) ** 2
    assert core.region_any.double().mean() <= 0.1 and core.tile_flag.double().mean() <= 0.1  # 256 tiles, α = 0.05
