"""Forward models: table-driven properties over the registry, reference values, bad input.

Every operator in ``operators.available()`` is exercised by the table-driven tests (adjointness,
gradients, halo, bad input) with the constructor parameters in ``BUILD`` — an operator registered
later is picked up with its default parameters, so it is tested the moment it is registered.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import operators as O
from operators.bkse import KernelWizard

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data"
SIZE = 96  # default image side for the table-driven tests


class FakeLinearPhysics:
    """Duck-typed stand-in for a deepinv LinearPhysics: a fixed 2× decimation (A) and its transpose."""

    def A(self, x):
        return x[..., ::2, ::2]

    def A_adjoint(self, y):
        out = y.new_zeros(y.shape[:-2] + (2 * y.shape[-2], 2 * y.shape[-1]))
        out[..., ::2, ::2] = y
        return out


@pytest.fixture(scope="module")
def random_wizard():
    torch.manual_seed(0)
    wizard = KernelWizard()
    # adapt_kernel (the forward model) never touches the 92M-parameter encoder: park it on the meta
    # device so float64 copies in the gradient test stay small. test_operators_bkse covers it.
    wizard.kernel_extractor.to(torch.device("meta"))
    return wizard


def build(name: str, params: dict, wizard) -> torch.nn.Module:
    params = dict(params)
    if name == "nonlinear_blur" and "model" not in params:
        params["model"] = wizard
    if name == "deepinv" and "physics" not in params:
        params["physics"] = FakeLinearPhysics()
    return O.get_operator(name, **params)


# Constructor parameters that make an operator fit the small test images; anything not listed is
# built with its defaults. Extra variants exercise non-default branches.
BUILD = {
    "inpainting_box": {"box_size": 16, "margin": 8},
    "ct_parallel_beam": {"angles": 12},
}
SIZES = {"nonlinear_blur": 128}
VARIANTS = [
    ("microscopy_widefield", {"binning": 2, "psf": "gaussian"}),
    ("astro_psf", {"sky": 0.3}),
    ("super_resolution", {"scale": 2}),
    ("super_resolution", {"scale": 3}),
    ("mri_cartesian", {"real_image": False}),
    ("phase_retrieval", {"unit_range": True}),
    ("motion_blur", {"seed": 7, "discard_first": False}),
    ("ct_parallel_beam", {"angles": [0.0, 33.3, 90.0, 145.0]}),
    ("inpainting_random", {"prob": (0.3, 0.7), "seed": 3}),
]
CASES = [(n, BUILD.get(n, {})) for n in O.available()] + VARIANTS
IDS = [f"{n}-{i}" if i >= len(O.available()) else n for i, (n, _) in enumerate(CASES)]


def _image(name, params, gen, batch=2, channels=3, complex_=False):
    size = SIZES.get(name, SIZE)
    shape = (batch, channels, size, size)
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    if complex_:
        x = torch.complex(x, torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5)
    return x


def _randn_like(t, gen):
    if t.is_complex():
        return torch.complex(torch.randn(t.shape, generator=gen, dtype=t.real.dtype),
                             torch.randn(t.shape, generator=gen, dtype=t.real.dtype))
    return torch.randn(t.shape, generator=gen, dtype=t.dtype)


# ------------------------------------------------------------------------------------------------
# Table-driven properties
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_adjoint(name, params, random_wizard):
    """⟨A x, y⟩ = ⟨x, Aᴴ y⟩ (real part of the complex inner product) to relative 1e-5."""
    op = build(name, params, random_wizard)
    if not op.linear:
        pytest.skip(f"{name} is not linear")
    gen = torch.Generator().manual_seed(1)
    x = _image(name, params, gen, complex_=params.get("real_image") is False)
    ax = op(x)
    y = _randn_like(ax, gen)
    lhs = torch.vdot(ax.flatten(), y.flatten()).real
    rhs = torch.vdot(x.flatten().to(y.dtype) if y.is_complex() else x.flatten(), op.adjoint(y).flatten().to(y.dtype)).real
    assert torch.isfinite(lhs) and abs(float(lhs)) > 0
    assert abs(float(lhs - rhs)) <= 1e-5 * abs(float(lhs)), (float(lhs), float(rhs))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_nll_gradient_matches_finite_differences(name, params, random_wizard):
    """∇ₓ nll(y, A(x)) by autograd vs a central difference along a random direction (float64)."""
    op = build(name, params, random_wizard)
    if op.linear:
        pytest.skip(f"{name} is linear (covered by the adjoint test)")
    try:
        _check_gradient(name, params, op.double())
    finally:
        op.float()  # the random KernelWizard is shared between tests


def _check_gradient(name, params, op):
    gen = torch.Generator().manual_seed(2)
    x = _image(name, params, gen, batch=1)
    if name == "hdr":  # keep away from the clip kinks at |2x| = 1
        x = torch.where((x.abs() - 0.5).abs() < 0.02, x * 0.9, x)
    noise = O.GaussianNoise(0.05)
    with torch.no_grad():
        y = noise.sample(op(_image(name, params, gen, batch=1)), generator=gen)
    x.requires_grad_(True)
    loss = noise.nll(y, op(x)).sum()
    (grad,) = torch.autograd.grad(loss, x)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    h = 1e-6
    with torch.no_grad():
        fd = (noise.nll(y, op(x + h * v)).sum() - noise.nll(y, op(x - h * v)).sum()) / (2 * h)
    ad = (grad * v).sum()
    assert abs(float(fd)) > 0
    assert abs(float(ad - fd)) <= 1e-4 * abs(float(fd)) + 1e-6, (float(ad), float(fd))


def _factor(full_in: int, full_out: int) -> int:
    f = full_in // full_out
    assert f * full_out == full_in
    return f


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_halo_tile_reproduces_full_image(name, params, random_wizard):
    """A tile cut with ``halo`` pixels of context reproduces A(full image) in its core to 1e-6."""
    op = build(name, params, random_wizard)
    if op.halo is None:
        pytest.skip(f"{name} is global (halo None)")
    gen = torch.Generator().manual_seed(3)
    x = _image(name, params, gen, batch=1, channels=2)
    full = op(x)
    n = x.shape[-1]
    f = _factor(n, full.shape[-1])
    h = op.halo
    # an interior core, a core touching the top-left corner, one touching the bottom-right
    for t0, t1, l0, l1 in [(36, 60, 48, 72), (0, 24, 0, 36), (n - 24, n, n - 36, n)]:
        tt, tb = max(0, t0 - h), min(n, t1 + h)
        tl, tr = max(0, l0 - h), min(n, l1 + h)
        tile_op = op.tile_operator(tt, tl, tb - tt, tr - tl)
        out = tile_op(x[..., tt:tb, tl:tr])
        core = out[..., (t0 - tt) // f : (t1 - tt) // f, (l0 - tl) // f : (l1 - tl) // f]
        ref = full[..., t0 // f : t1 // f, l0 // f : l1 // f]
        assert core.shape == ref.shape
        assert torch.allclose(core, ref, atol=1e-6, rtol=0), float((core - ref).abs().max())


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_bad_images_raise_value_error(name, params, random_wizard):
    op = build(name, params, random_wizard)
    size = SIZES.get(name, SIZE)
    with pytest.raises(ValueError, match="shape"):
        op(torch.zeros(3, size, size))
    bad = torch.zeros(1, 3, size, size)
    bad[0, 1, 5, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        op(bad)


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
PAPER_AND_DOMAIN = {
    "super_resolution", "gaussian_blur", "motion_blur", "inpainting_box", "inpainting_random",
    "phase_retrieval", "hdr", "nonlinear_blur", "ct_parallel_beam", "microscopy_widefield",
    "mri_cartesian", "astro_psf",
}


def test_registry_lists_the_twelve_and_rejects_unknown_names():
    assert PAPER_AND_DOMAIN <= set(O.available())
    with pytest.raises(ValueError) as err:
        O.get_operator("gausian_blur")
    msg = str(err.value)
    assert "gausian_blur" in msg and "gaussian_blur" in msg and "phase_retrieval" in msg
    with pytest.raises(ValueError, match="already registered"):
        O.register("hdr")(lambda: None)


def test_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    """A real (on-disk) distribution advertising ``ddiff.operators`` is found by ``available()``."""
    from operators import base

    (tmp_path / "fake_ddiff_plugin.py").write_text(
        "import torch\n"
        "from operators import ForwardModel\n"
        "class Negate(ForwardModel):\n"
        "    linear = True\n"
        "    halo = 0\n"
        "    def forward(self, x):\n"
        "        return -x\n"
        "    def adjoint(self, y):\n"
        "        return -y\n"
        "def broken():\n"
        "    raise RuntimeError\n"
    )
    info = tmp_path / "fake_ddiff_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-ddiff-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[ddiff.operators]\nnegate_plugin = fake_ddiff_plugin:Negate\nbroken_plugin = fake_ddiff_plugin:missing_name\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_ENTRY_POINTS_LOADED", False)
    with pytest.warns(UserWarning, match="broken_plugin"):
        names = O.available()
    assert "negate_plugin" in names and "broken_plugin" not in names
    op = O.get_operator("negate_plugin")
    x = torch.randn(1, 1, 4, 4)
    assert torch.equal(op(x), -x)


def test_deepinv_adapter_duck_typed():
    op = O.from_deepinv(FakeLinearPhysics())
    assert op.linear and op.halo is None
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(op(x), x[..., ::2, ::2])
    with pytest.raises(ValueError, match="Physics"):
        O.get_operator("deepinv", physics=object())
    with pytest.raises(ValueError, match="physics"):
        O.get_operator("deepinv")


def test_deepinv_adapter_real_physics():
    dinv = pytest.importorskip("deepinv")
    physics = dinv.physics.Inpainting(tensor_size=(3, 16, 16), mask=0.5)
    op = O.from_deepinv(physics)
    assert op.linear
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 3, 16, 16, generator=gen), torch.randn(1, 3, 16, 16, generator=gen)
    assert torch.allclose((op(x) * y).sum(), (x * op.adjoint(y)).sum(), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Reference values (baselines_spec.md §2, §6)
# ------------------------------------------------------------------------------------------------
def _dps_blur(x, kernel61):
    """DPS/DAPS construction: ReflectionPad2d(30) + depthwise Conv2d(61) with the same kernel."""
    c = x.shape[1]
    w = torch.as_tensor(kernel61, dtype=x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (30, 30, 30, 30), mode="reflect"), w, groups=c)


def test_gaussian_kernel_matches_scipy_and_spec():
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((61, 61))
    delta[30, 30] = 1
    ref = gaussian_filter(delta, 3.0)
    k = O.gaussian_kernel(61, 3.0)
    assert np.abs(k - ref).max() < 1e-15
    assert abs(k.sum() - 1) < 1e-12 and abs(k.max() - 0.017685) < 5e-7
    rows, cols = np.nonzero(k)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (18, 42, 18, 42)  # 25×25, centred
    small = O.gaussian_kernel(9, 3.0)  # taps fold back, as scipy's reflect mode does
    d9 = np.zeros((9, 9))
    d9[4, 4] = 1
    assert np.abs(small - gaussian_filter(d9, 3.0)).max() < 1e-15


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur"])
def test_blur_equals_reference_construction(name):
    op = O.get_operator(name)
    assert op.halo == 30 and tuple(op.kernel.shape) == (61, 61)
    assert abs(float(op.kernel.sum()) - 1) < 1e-6
    x = torch.rand(2, 3, 80, 72, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = _dps_blur(x, op.kernel.numpy().astype(np.float32))
    assert torch.allclose(op(x), ref, atol=2e-6, rtol=0)


def test_motion_kernel_reference_counts_and_fixture():
    # Nonzero counts of the first kernel after seeding, from the spec's bit-exact reimplementation (§6).
    for seed, count in [(0, 149), (42, 150), (7, 60), (123, 188)]:
        k = O.motion_kernel(61, 0.5, np.random.RandomState(seed))
        assert k.dtype == np.float32 and k.shape == (61, 61) and (k >= 0).all()
        assert abs(float(k.sum()) - 1) < 1e-5
        assert int((k > 0).sum()) == count
    fixture = np.load(DATA / "motion_kernel_61_i0.5_seed42.npy")
    assert np.array_equal(O.MotionBlur(seed=42).kernel.numpy().astype(np.float32), fixture)
    assert not np.array_equal(O.MotionBlur(seed=42, discard_first=False).kernel.numpy().astype(np.float32), fixture)


def test_kernel_larger_than_image_raises():
    for op in (O.get_operator("gaussian_blur"), O.get_operator("motion_blur")):
        with pytest.raises(ValueError, match="too large"):
            op(torch.zeros(1, 3, 30, 64))
    with pytest.raises(ValueError, match="too large"):
        O.get_operator("microscopy_widefield", kernel_size=41)(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="does not fit"):
        O.get_operator("inpainting_box")(torch.zeros(1, 3, 64, 64))


def test_super_resolution_closed_form():
    op = O.get_operator("super_resolution")
    assert op.halo == 8
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = op(x)
    assert y.shape == (1, 3, 64, 64)
    m = np.arange(16)
    s = np.abs(0.25 * (7.5 - m))
    w = np.where(s <= 1, 1.5 * s**3 - 2.5 * s**2 + 1, np.where(s <= 2, -0.5 * s**3 + 2.5 * s**2 - 4 * s + 2, 0.0))
    w /= w.sum()
    np.testing.assert_allclose(w[:8], [-0.00171, -0.01099, -0.01831, -0.01196, 0.02271, 0.09741, 0.18188, 0.24097], atol=6e-6)
    sym = lambda i: np.where(i < 0, -i - 1, np.where(i > 255, 511 - i, i))  # half-sample symmetric
    taps = sym(4 * np.arange(64)[:, None] - 6 + m[None, :])  # (64, 16) source rows of each output
    xn = x[0, 0].numpy()
    rows = np.einsum("m,jmw->jw", w, xn[taps])  # along H, then along W
    ref = np.einsum("n,jin->ji", w, rows[:, taps])
    assert np.abs(y[0, 0].numpy() - ref).max() < 1e-12
    assert O.SuperResolution(4)(torch.zeros(1, 1, 250, 97)).shape == (1, 1, 63, 25)  # ceil for other sizes
    with pytest.raises(ValueError, match="multiples of the integer scale"):
        op.tile_operator(6, 8, 64, 64)


def test_phase_retrieval_size_and_amplitude():
    op = O.get_operator("phase_retrieval")
    assert op.halo is None and op.output_shape(256, 256) == (384, 384)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = op(x)
    assert y.shape == (1, 3, 384, 384) and (y >= 0).all()
    xp = np.pad(x.numpy().astype(np.float64), ((0, 0), (0, 0), (64, 64), (64, 64)))
    ref = np.fft.fftshift(np.abs(np.fft.fft2(xp)), axes=(-2, -1)) / 384
    assert np.abs(y.numpy() - ref).max() < 2e-4
    assert np.allclose(O.PhaseRetrieval(unit_range=True)(x).numpy(), op((x + 1) / 2).numpy())


def test_inpainting_masks_match_reference_draws():
    box = O.InpaintingBox(margin=32, seed=42, image_size=256)
    hole = torch.nonzero(box.mask == 0)
    assert hole.min(0).values.tolist() == [70, 83] and hole.max(0).values.tolist() == [197, 210]
    rnd = O.InpaintingRandom(prob=(0.70, 0.71), seed=42, image_size=256)
    assert int((rnd.mask == 0).sum()) == 46120
    seventy = O.get_operator("inpainting_random")
    x = torch.randn(2, 3, 64, 64)
    y = seventy(x)
    hidden = y == 0
    assert int(hidden[0, 0].sum()) == int(64 * 64 * 0.7)
    assert (hidden == hidden[:1, :1]).all()  # same mask on every channel and image
    with pytest.raises(ValueError, match="drawn for"):
        seventy(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["inpainting_box", "inpainting_random"])
def test_inpainting_solve_regularized_is_the_minimiser(name):
    op = build(name, BUILD.get(name, {}), None)
    gen = torch.Generator().manual_seed(0)
    y, z = torch.randn(2, 3, 64, 64, generator=gen, dtype=torch.float64), torch.randn(2, 3, 64, 64, generator=gen, dtype=torch.float64)
    x = op.solve_regularized(y, z, 0.3).requires_grad_(True)
    obj = ((y - op(x)) ** 2).sum() + 0.3 * ((x - z) ** 2).sum()
    (g,) = torch.autograd.grad(obj, x)
    assert g.abs().max() < 1e-10


def test_ct_matches_skimage_radon_on_shepp_logan():
    from skimage.data import shepp_logan_phantom
    from skimage.transform import radon, resize

    img = resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True)
    op = O.get_operator("ct_parallel_beam")  # sparse view: 60 angles over [0, 180)
    theta = op.theta_deg.numpy()
    assert len(theta) == 60 and theta.min() == 0 and theta.max() < 180
    ours = op(torch.as_tensor(img)[None, None])[0, 0].numpy()
    ref = radon(img, theta=theta)  # (detectors, angles)
    corr = np.corrcoef(ours.ravel(), ref.T.ravel())[0, 1]
    assert corr >= 0.99, corr
    # values, not only shape: line integrals in pixel units (unit step along the ray), as skimage's.
    # Measured: least-squares scale 1.00001, RMS error 0.35 % of the RMS sinogram, per-angle mass
    # = image sum to 0.001 % (the phantom lies inside the inscribed circle). A wrong step or scale fails.
    scale = float((ours * ref.T).sum() / (ref * ref).sum())
    assert scale == pytest.approx(1.0, abs=0.005), scale
    assert np.sqrt(((ours - ref.T) ** 2).mean()) < 0.01 * np.sqrt((ref**2).mean())
    np.testing.assert_allclose(ours.sum(axis=1), img.sum(), rtol=1e-3)
    with pytest.raises(ValueError, match="square"):
        op(torch.zeros(1, 1, 32, 48))


def test_mri_mask_and_isometry():
    op = O.MRICartesian(acceleration=4, seed=0, image_size=(64, 48))
    lines = op.lines.numpy()
    assert len(lines) == 16 and len(np.unique(lines)) == 16
    assert {31, 32, 33}.issubset(set(lines.tolist()))  # centre (DC at 32) always sampled
    assert np.array_equal(lines, O.MRICartesian(acceleration=4, seed=0, image_size=(64, 48)).lines.numpy())
    y = torch.randn(1, 1, 16, 48, dtype=torch.complex128)
    cop = O.MRICartesian(acceleration=4, seed=0, image_size=(64, 48), real_image=False)
    assert torch.allclose(cop(cop.adjoint(y)), y)  # A Aᴴ = I (rows of a unitary)


def test_hdr_values():
    op = O.get_operator("hdr")
    x = torch.tensor([-0.9, -0.25, 0.0, 0.3, 0.7]).view(1, 1, 1, 5)
    assert torch.equal(op(x).flatten(), torch.tensor([-1.0, -0.5, 0.0, 0.6, 1.0]))


def test_psf_models():
    mic = O.MicroscopyWidefield()
    k = mic.kernel.numpy()
    assert abs(k.sum() - 1) < 1e-12 and k.argmax() == k.size // 2
    # independent Born–Wolf profile with scipy's J1, integrated over 5×5 sub-pixels
    from scipy.special import j1

    sub = (np.arange(5) + 0.5) / 5 - 0.5
    c = np.arange(k.shape[0]) - k.shape[0] // 2
    yy = (c[:, None, None, None] + sub[None, None, :, None]) * 0.1
    xx = (c[None, :, None, None] + sub[None, None, None, :]) * 0.1
    v = 2 * np.pi * 1.4 * np.hypot(yy, xx) / 0.52
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = (np.where(v > 0, 2 * j1(v) / v, 1.0) ** 2).mean(axis=(2, 3))
    assert np.abs(k - ref / ref.sum()).max() < 1e-7 * k.max()  # torch vs scipy J1: ~1e-9 apart
    g = O.MicroscopyWidefield(psf="gaussian", kernel_size=31).kernel.numpy()
    cg = np.arange(31) - 15
    var = (g * cg[:, None] ** 2).sum()  # pixel-integrated variance = σ² + 1/12 (σ = 0.21 λ/NA in px)
    sigma = 0.21 * 0.52 / 1.4 / 0.1
    assert abs(var - (sigma**2 + (1 - 1 / 25) / 12)) < 1e-3
    binned = O.MicroscopyWidefield(binning=4)
    assert binned(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 16, 16) and binned.halo % 4 == 0
    with pytest.raises(ValueError, match="divisible"):
        binned(torch.zeros(1, 1, 62, 64))
    moffat = O.AstroPSF(fwhm=3.0, kernel_size=41).kernel.numpy()
    assert abs(moffat.sum() - 1) < 1e-12
    c = 20
    row = moffat[c]  # half maximum is crossed between 1 and 2 px from the centre (FWHM 3 px)
    assert row[c + 1] > row[c] / 2 > row[c + 2]
    astro = O.AstroPSF(fwhm=3.0, sky=0.25)
    assert not astro.linear and torch.allclose(astro(torch.zeros(1, 1, 32, 32)), torch.full((1, 1, 32, 32), 0.25, dtype=torch.float32))
    assert O.AstroPSF(sky=0.0).linear


def test_nonlinear_blur_latent_and_input_checks(random_wizard):
    op = O.NonlinearBlur(model=random_wizard, image_size=256)
    z = op.latent.flatten()
    assert op.latent.shape == (1, 512, 2, 2) and op.latent.dtype == torch.float32
    np.testing.assert_allclose(z[:4].numpy(), [2.11686, 0.48019, 1.17449, 2.68907], atol=1e-5)
    assert abs(float(z.sum()) + 36.926) < 1e-3
    with pytest.raises(ValueError, match="multiples of 128"):
        O.NonlinearBlur(model=random_wizard)(torch.zeros(1, 3, 96, 128))
    with pytest.raises(ValueError, match="3 channels"):
        O.NonlinearBlur(model=random_wizard)(torch.zeros(1, 1, 128, 128))
    y = O.NonlinearBlur(model=random_wizard)(torch.zeros(2, 3, 128, 128))
    assert y.shape == (2, 3, 128, 128) and y.abs().max() <= 1
