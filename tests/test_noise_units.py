"""Noise in the data's units (issue 13): the intensity map composed into the likelihood is exact in
ADU / counts, camera parameters are checked with one clear line, the noise spec resolves, and the
estimators recover simulated cameras."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import operators as O
from ddiff.audit import elementwise_stats
from operators.noise_estimate import estimate_noise, fluorescence_scene, simulate_camera

A_MAP, B_MAP = 2 / 900.0, -1 - 100 * 2 / 900.0  # a store whose percentiles were 100 and 1000 ADU


def to_model(u):
    return A_MAP * u + B_MAP


def test_gaussian_sigma_in_adu_is_the_gaussian_likelihood_of_the_adu_values():
    g = torch.Generator().manual_seed(0)
    u_clean = 100 + 900 * torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    u = u_clean + 7.0 * torch.randn(u_clean.shape, generator=g, dtype=torch.float64)
    noise = O.gaussian_in_data_units(7.0, A_MAP, B_MAP)
    ref = O.GaussianNoise(7.0)
    torch.testing.assert_close(noise.nll(to_model(u), to_model(u_clean)), ref.nll(u, u_clean))
    torch.testing.assert_close(noise.discrepancy(to_model(u), to_model(u_clean)), ref.discrepancy(u, u_clean))
    assert noise.quadratic and math.isclose(noise.effective_sigma(), 7.0 * A_MAP)  # CGLS sees the model-space σ
    assert "7 ADU" in repr(noise)


def test_camera_likelihood_gradient_and_audit_are_exact_in_counts():
    gain, off, read = 2.5, 100.0, 3.0
    g = torch.Generator().manual_seed(1)
    lam = 1 + 60 * torch.rand(3, 1, 6, 6, generator=g, dtype=torch.float64)  # expected e⁻ (low counts)
    u = simulate_camera(lam, gain, off, read, g)
    cam = O.CameraNoise(gain, off, read, A_MAP, B_MAP)
    pg = O.PoissonGaussianNoise(gain=1.0, sigma=read)
    y, mean = to_model(u), to_model(off + lam / gain)
    e_y, e_mean = gain * (u - off), lam  # photo-electrons above the black level
    torch.testing.assert_close(cam.nll(y, mean), pg.nll(e_y, e_mean))
    # gradient in model space = chain rule through the map (dλ/dv = gain/a)
    v = mean.clone().requires_grad_(True)
    (gv,) = torch.autograd.grad(cam.nll(y, v).sum(), v)
    w = e_mean.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(pg.nll(e_y, w).sum(), w)
    torch.testing.assert_close(gv, gw * gain / A_MAP)
    # the audit's deviances and their null cumulants are those of the counts
    for a, b in zip(elementwise_stats(y, mean, cam), elementwise_stats(e_y, e_mean, pg)):
        torch.testing.assert_close(a, b)
    # the sampler draws the same camera
    draws = cam.sample(to_model(off + torch.full((1, 1, 200, 200), 40.0, dtype=torch.float64) / gain), g)
    e = gain * ((draws - B_MAP) / A_MAP - off)
    assert abs(float(e.mean()) - 40) < 0.3 and abs(float(e.var()) - (40 + read**2)) < 2.0


def test_camera_noise_refuses_impossible_parameters_with_one_line():
    with pytest.raises(ValueError, match=r"noise.gain = 0.0 e⁻/ADU: the conversion gain must be a positive number"):
        O.CameraNoise(0.0, 100, 3, 1, 0)
    with pytest.raises(ValueError, match="read_noise"):
        O.CameraNoise(2.5, 100, -1, 1, 0)
    g = torch.Generator().manual_seed(2)
    u = simulate_camera(torch.full((1, 1, 32, 32), 5.0, dtype=torch.float64), 2.5, 100, 3, g)
    O.CameraNoise(2.5, 100, 3, 1, 0).validate(u)  # the right black level passes
    with pytest.raises(ValueError, match=r"noise.offset = 150 ADU is above the data"):
        O.CameraNoise(2.5, 150, 3, 1, 0).validate(u)
    with pytest.raises(ValueError, match="whole photo-electron counts"):
        O.CameraNoise(2.5, 100, 0, 1, 0).validate(u)  # 'poisson' needs counts: this camera has read noise


def test_noise_spec_in_data_units():
    from flows.params import NoiseSpec

    intensity = {"scale": A_MAP, "offset": B_MAP}
    n = NoiseSpec(kind="gaussian", sigma=7.0).build(intensity)
    assert math.isclose(n.effective_sigma(), 7.0 * A_MAP)
    cam = NoiseSpec(kind="poisson_gaussian", gain=2.5, offset=100, read_noise=3).build(intensity)
    assert isinstance(cam, O.CameraNoise) and cam.gain == 2.5
    assert NoiseSpec().kind == "auto" and not NoiseSpec().complete()
    with pytest.raises(ValueError, match="resolve it against the input stack"):
        NoiseSpec(kind="gaussian").build(intensity)
    for bad, msg in [(dict(kind="gaussian", sigma=1, gain=2), "takes sigma only"),
                     (dict(kind="poisson_gaussian", sigma=1), "give read_noise, not sigma"),
                     (dict(kind="poisson", read_noise=2), "has no read noise"),
                     (dict(kind="poisson_gaussian", gain=0), "greater than 0")]:
        with pytest.raises(ValueError, match=msg):
            NoiseSpec(**bad)


def test_estimators_recover_simulated_cameras_and_gaussian_sigma():
    """Ten simulated widefield cameras (gain 0.5–5 e⁻/ADU, offset 50–500 ADU, read noise 1–4 ADU,
    background 2–50 e⁻, peaks 200–3000 e⁻; 2 frames of 128²). ``benchmarks/noise_estimation.py``
    prints the full error table; tolerances here: gain 6 %, offset 4 SE + 3 ADU, read noise with the
    offset known 20 %, Gaussian σ 5 %."""
    g0 = torch.Generator().manual_seed(0)
    for i in range(10):
        r = torch.rand(5, generator=g0, dtype=torch.float64).tolist()
        gain, off, peak, bg = 0.5 + 4.5 * r[0], 50 + 450 * r[1], 200 + 2800 * r[3], 2 + 48 * r[4]
        read = gain * (1 + 3 * r[2])
        gen = torch.Generator().manual_seed(100 + i)
        u = simulate_camera(fluorescence_scene(2, 128, gen, background=bg, peak=peak), gain, off, read, gen)
        est = estimate_noise(u, kind="auto")
        assert est.kind == "poisson_gaussian", (i, est)
        assert abs(est.gain / gain - 1) < 0.06, (i, gain, est)
        assert abs(est.offset - off) < 4 * est.offset_se + 3, (i, off, est)
        known = estimate_noise(u, kind="poisson_gaussian", offset=off)
        assert abs(known.read_noise / read - 1) < 0.2, (i, read, known)
        assert known.fixed == ["offset"] and known.offset_se == 0
    lam = fluorescence_scene(2, 128, torch.Generator().manual_seed(5))
    u = 100 + lam / 4 + 6.0 * torch.randn(lam.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    est = estimate_noise(u, kind="auto")
    assert est.kind == "gaussian" and abs(est.sigma / 6.0 - 1) < 0.05, est


def test_pnp_ablations_on_complex_kspace_and_diffpir_with_data_unit_noise():
    """Item 5: the PnP ablations run on complex measurements (k-space) and fit them; DiffPIR takes a
    Gaussian model stated in ADU (least squares) and refuses camera counts with one line."""
    from ddiff import DiffPIR, DiffPnPADMM, DiffPnPHQS
    from ddiff.problems import linear_gaussian_problem
    from ddiff.solvers.data_fit import discrepancy

    P = linear_gaussian_problem("mask", size=16, draws=2)
    x = P.x.float()
    A = O.get_operator("mri_cartesian")
    noise = O.GaussianNoise(0.05)
    y = noise.sample(A(x), torch.Generator().manual_seed(0))
    assert y.is_complex()
    for cls in (DiffPnPADMM, DiffPnPHQS):
        r = cls(P.prior, steps=10).solve(y, A, noise, generator=torch.Generator().manual_seed(1), x_shape=tuple(x.shape))
        chi = discrepancy(noise, y, A(r.x.float())) / (2 * y[0].numel())
        assert r.x.dtype.is_floating_point and not r.x.is_complex()
        assert torch.all((chi > 0.9) & (chi < 1.1)), (cls.__name__, chi)
    yb = P.y.float()
    adu = O.gaussian_in_data_units(0.025, 2.0, -1.0)  # σ 0.025 ADU on a store mapped by model = 2·ADU − 1
    DiffPIR(P.prior, steps=5).solve(yb, P.operator, adu)
    cam = O.CameraNoise(2.5, 0.0, 3.0, 2.0, -1.0)
    with pytest.raises(ValueError, match="DiffPIR's data step is a least-squares proximal step"):
        DiffPIR(P.prior, steps=5).solve(yb, P.operator, cam)


def test_kspace_sigma_from_the_hermitian_antisymmetric_part():
    """The scene cancels exactly (same noise draw, with and without a bright image: the same σ to 1e-9),
    σ is recovered within 3 standard errors at R = 1, 4, 8 on even and odd grids, and too few measured
    (q, −q) pairs is one line asking for --sigma."""
    from operators.fourier import fft2c
    from operators.noise_estimate import estimate_kspace_gaussian

    for n in (64, 63):
        x = fluorescence_scene(2, n, torch.Generator().manual_seed(n)).to(torch.complex128)
        for R in (1, 4, 8):
            mask = torch.as_tensor(O.get_operator("mri_cartesian", acceleration=R, image_size=n, seed=1).mask()).bool()
            g = torch.Generator().manual_seed(R)
            noise = 0.02 * torch.complex(torch.randn(x.shape, generator=g, dtype=torch.float64),
                                         torch.randn(x.shape, generator=g, dtype=torch.float64))
            with_scene = estimate_kspace_gaussian((fft2c(x) + noise) * mask, mask)
            alone = estimate_kspace_gaussian(noise * mask, mask)
            assert with_scene.sigma == pytest.approx(alone.sigma, rel=1e-9), (n, R)
            assert abs(with_scene.sigma - 0.02) < 3 * with_scene.sigma_se + 1e-4, (n, R, with_scene)
            # the self-paired entries (DC, Nyquist) never enter: a huge DC leaves σ unchanged
            k = (fft2c(x) + noise) * mask
            k[:, n // 2, n // 2] += 1e6
            assert estimate_kspace_gaussian(k, mask).sigma == pytest.approx(with_scene.sigma, rel=1e-9)
    one_row = torch.zeros(64, 64, dtype=torch.bool)
    one_row[32] = True
    with pytest.raises(ValueError, match=r"give noise.sigma \(--sigma S\)"):
        estimate_kspace_gaussian(torch.ones(1, 64, 64, dtype=torch.complex64), one_row)


def test_sinogram_sigma_from_opposite_views():
    """A parallel beam measures each line twice at θ and θ + 180° (detector mirrored): σ from those
    differences — the scene cancels exactly (same σ with and without it), within 3 standard errors for
    a 360° scan and a [0°, 180°] scan that includes its end view; a [0°, 180°) scan is one line."""
    from operators.noise_estimate import estimate_sinogram_gaussian

    x = fluorescence_scene(8, 48, torch.Generator().manual_seed(1))[:, None] / 100
    for angles in (np.arange(0, 360, 3.0), np.linspace(0, 180, 61)):
        for D in (48, 67):
            A = O.get_operator("ct_parallel_beam", angles=angles.tolist(), n_detectors=D)
            p = A(x)[:, 0]
            noise = 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(D), dtype=torch.float64)
            with_scene, alone = estimate_sinogram_gaussian(p + noise, angles), estimate_sinogram_gaussian(noise, angles)
            assert with_scene.sigma == pytest.approx(alone.sigma, rel=1e-9), (len(angles), D)
            assert abs(with_scene.sigma - 0.05) < 3 * with_scene.sigma_se, (len(angles), D, with_scene)
    with pytest.raises(ValueError, match=r"no two views are 180° apart .* give noise.sigma \(--sigma S\)"):
        estimate_sinogram_gaussian(torch.zeros(1, 60, 48), np.arange(60) * 3.0)
