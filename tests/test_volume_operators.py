"""Volume forward models (issue 19): the widefield 3-D PSF against its formula, the 3-D blur and the
CT of a stack of slices — adjointness, exact values, z halos, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special
from scipy.optimize import brentq

from operators import CTParallelBeam
from operators.psf3d import defocus_intensity, widefield_psf_3d
from operators.volume import CTStack, SliceWise, VolumeBlur, Widefield3D, from_slices, to_slices

OIL = dict(na=1.4, wavelength=0.52, n_immersion=1.518)
WATER = dict(na=1.2, wavelength=0.52, n_immersion=1.33)


def _quadrature(r, z, na, wavelength, n_immersion, defocus):
    """``|2 ∫₀¹ J₀(k NA r ρ) e^{iΦ(ρ, z)} ρ dρ|²`` by adaptive quadrature (scipy), independently of
    the Gauss–Legendre rule of the operator."""
    k = 2 * math.pi / wavelength

    def phase(p):
        if defocus == "paraxial":
            return -0.5 * k * na**2 * z / n_immersion * p**2
        return k * z * (math.sqrt(n_immersion**2 - na**2 * p**2) - n_immersion)

    opts = dict(limit=400, epsabs=1e-14, epsrel=1e-12)
    re = integrate.quad(lambda p: special.j0(k * na * r * p) * math.cos(phase(p)) * p, 0, 1, **opts)[0]
    im = integrate.quad(lambda p: special.j0(k * na * r * p) * math.sin(phase(p)) * p, 0, 1, **opts)[0]
    return 4 * (re**2 + im**2)


@pytest.mark.parametrize("defocus", ["paraxial", "nonparaxial"])
def test_psf_intensity_is_the_defocus_integral(defocus):
    """At points off axis and out of focus the intensity is the integral of its formula (torch's J₀
    is accurate to 4e-7 near argument 5, hence the tolerance; the peak is 1)."""
    points = [(0.1, 0.0), (0.2, 0.3), (0.35, -0.8), (0.05, 1.5), (1.0, 2.0), (0.6, -0.4)]
    r, z = np.array(points).T
    got = defocus_intensity(r, z, **OIL, defocus=defocus)
    want = np.array([_quadrature(a, b, **OIL, defocus=defocus) for a, b in points])
    assert np.abs(got - want).max() < 2e-6, (got, want)
    assert defocus_intensity(0.0, 0.0, **OIL, defocus=defocus) == pytest.approx(1.0, abs=1e-12)


def test_paraxial_psf_has_born_and_wolfs_closed_forms():
    """On axis ``[sin(u/4)/(u/4)]²`` with ``u = k NA² z / n``; in focus the Airy pattern ``[2J₁(v)/v]²``."""
    na, lam, n = OIL["na"], OIL["wavelength"], OIL["n_immersion"]
    z = np.linspace(-3, 3, 61) + 1e-3
    u = 2 * math.pi / lam * na**2 * z / n
    assert np.allclose(defocus_intensity(0.0, z, **OIL, defocus="paraxial"), np.sinc(u / (4 * math.pi)) ** 2, atol=1e-10)
    r = np.linspace(1e-3, 1.5, 40)
    v = 2 * math.pi / lam * na * r
    assert np.allclose(defocus_intensity(r, 0.0, **OIL, defocus="paraxial"), (2 * special.j1(v) / v) ** 2, atol=2e-6)


@pytest.mark.parametrize("optics", [OIL, WATER, dict(na=0.5, wavelength=0.6, n_immersion=1.0)])
def test_psf_widths_match_the_textbook_approximations(optics):
    """Lateral FWHM 0.51 λ/NA (Airy); axial FWHM 1.77 n λ/NA² for the paraxial model and
    0.88 λ/(n − √(n² − NA²)) for the non-paraxial one (the latter an approximation: within 5 %)."""
    na, lam, n = optics["na"], optics["wavelength"], optics["n_immersion"]

    def fwhm(f, hi):
        return 2 * brentq(lambda s: f(s) - 0.5, 0, hi)

    lateral = fwhm(lambda r: float(defocus_intensity(r, 0.0, **optics)), lam / na)
    assert lateral == pytest.approx(0.5145 * lam / na, rel=1e-3)
    axial_p = fwhm(lambda z: float(defocus_intensity(0.0, z, **optics, defocus="paraxial")), 4 * n * lam / na**2)
    assert axial_p == pytest.approx(1.7718 * n * lam / na**2, rel=1e-3)
    axial_np = fwhm(lambda z: float(defocus_intensity(0.0, z, **optics, defocus="nonparaxial")), 4 * n * lam / na**2)
    assert axial_np == pytest.approx(0.88 * lam / (n - math.sqrt(n**2 - na**2)), rel=0.05)
    assert axial_np < axial_p  # the paraxial model overestimates the axial extent


def test_sampled_psf_is_the_formula_on_the_voxel_grid():
    k = widefield_psf_3d(**WATER, pixel_size=0.1, z_step=0.25, size=(7, 15), oversample=1)
    zz, yy, xx = np.meshgrid(np.arange(-3, 4) * 0.25, np.arange(-7, 8) * 0.1, np.arange(-7, 8) * 0.1, indexing="ij")
    want = defocus_intensity(np.hypot(yy, xx), zz, **WATER)
    assert np.allclose(k, want / want.sum(), rtol=1e-9, atol=1e-15)
    assert k.sum() == pytest.approx(1.0) and np.allclose(k, k[::-1]) and np.allclose(k, k.transpose(0, 2, 1))
    # pixel integration (oversample 3) keeps the sum and the symmetry, and lowers the sharp peak
    k3 = widefield_psf_3d(**WATER, pixel_size=0.1, z_step=0.25, size=(7, 15), oversample=3)
    assert k3.sum() == pytest.approx(1.0) and np.allclose(k3, k3[:, ::-1]) and k3.max() < k.max()


def test_psf_rejects_impossible_optics():
    with pytest.raises(ValueError, match="numerical aperture 1.6 must be below the immersion index 1.518"):
        widefield_psf_3d(na=1.6)
    with pytest.raises(ValueError, match="z_step must be a positive length"):
        widefield_psf_3d(z_step=0)
    with pytest.raises(ValueError, match="defocus must be one of"):
        Widefield3D(defocus="gibson")


def _adjoint_gap(op, x):
    gen = torch.Generator().manual_seed(5)
    ax = op(x)
    y = torch.randn(ax.shape, generator=gen, dtype=ax.dtype)
    lhs, rhs = (ax * y).sum(), (x * op.adjoint(y)).sum()
    return abs(float(lhs - rhs)) / abs(float(lhs))


@pytest.mark.parametrize("boundary", ["reflect", "symmetric"])
def test_widefield_3d_is_linear_with_an_exact_adjoint(boundary):
    op = Widefield3D(**WATER, pixel_size=0.1, z_step=0.3, size=(9, 21), boundary=boundary)
    x = torch.randn(2, 1, 12, 24, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert _adjoint_gap(op, x) < 1e-12
    assert op.halo_z == 4 and op.halo == 10
    one = torch.ones(1, 1, 6, 16, 16, dtype=torch.float64)
    assert torch.allclose(op(one), one)  # sum-1 kernel: a uniform volume is imaged to itself
    assert _adjoint_gap(op, x.float()) < 1e-5  # float32 path


def test_volume_blur_is_the_direct_reflect_padded_correlation():
    g = torch.Generator().manual_seed(1)
    k = torch.rand(3, 5, 7, generator=g, dtype=torch.float64)
    x = torch.randn(1, 2, 6, 11, 13, generator=g, dtype=torch.float64)
    got = VolumeBlur(k)(x)
    for c in range(2):
        ext = np.pad(x[0, c].numpy(), ((1, 1), (2, 2), (3, 3)), mode="reflect")
        want = np.zeros((6, 11, 13))
        for a in range(3):
            for b in range(5):
                for d in range(7):
                    want += k[a, b, d].item() * ext[a : a + 6, b : b + 11, d : d + 13]
        assert np.allclose(got[0, c].numpy(), want, atol=1e-12)


def test_a_brick_with_its_z_halo_reproduces_the_whole_volume_in_its_core():
    """``halo_z`` planes of context (and ``halo`` pixels) make a brick's core exact; one fewer does not."""
    op = Widefield3D(**WATER, pixel_size=0.1, z_step=0.3, size=(7, 9))
    x = torch.randn(1, 1, 20, 24, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    full = op(x)
    hz, h = op.halo_z, op.halo
    core = slice(8, 12)
    brick = x[:, :, 8 - hz : 12 + hz, 12 - h : 20 + h, 12 - h : 20 + h]
    got = op(brick)[:, :, hz : hz + 4, h : h + 8, h : h + 8]
    assert torch.allclose(got, full[:, :, core, 12:20, 12:20], atol=1e-12)
    short = x[:, :, 8 - hz + 1 : 12 + hz, 12 - h : 20 + h, 12 - h : 20 + h]
    bad = op(short)[:, :, hz - 1 : hz + 3, h : h + 8, h : h + 8]
    assert not torch.allclose(bad, full[:, :, core, 12:20, 12:20], atol=1e-6)


def test_ct_of_a_stack_is_the_2d_ct_of_every_slice():
    op = CTStack(angles=12)
    x = torch.randn(2, 1, 5, 24, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = op(x)
    assert y.shape == (2, 1, 5, 12, 24)
    ct = CTParallelBeam(12)
    for z in (0, 3):
        assert torch.allclose(y[:, :, z], ct(x[:, :, z]))
    assert _adjoint_gap(op, x) < 1e-12
    assert op.halo is None and op.halo_z == 0
    assert torch.equal(from_slices(to_slices(x), 2), x)
    wide = CTStack(angles=8, n_detectors=35, image_size=24)
    assert _adjoint_gap(wide, x) < 1e-12 and wide.adjoint(wide(x)).shape == x.shape


def test_volume_operators_name_bad_input():
    op = Widefield3D(**WATER, size=(5, 9))
    with pytest.raises(ValueError, match=r"expected a volume batch of shape \(B, C, Z, H, W\), got \(1, 1, 16, 16\)"):
        op(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="NaN or Inf"):
        CTStack(4)(torch.full((1, 1, 2, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="odd sides"):
        VolumeBlur(np.ones((2, 3, 3)))
    with pytest.raises(NotImplementedError, match="not linear"):
        SliceWise(torch.nn.Identity()).adjoint(torch.zeros(1, 1, 2, 4, 4))
