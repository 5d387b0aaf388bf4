"""Solvers against exact answers, and their shared contract (batching, seeding, NFE, bad input)."""
import pytest
import torch

from ddiff import DAPS, DPS, DDiff, DDiffHQS, DiffPIR, DiffPnPADMM, DiffPnPHQS
from ddiff.metrics import psnr
from ddiff.problems import gmm_problem, linear_gaussian_problem
from ddiff.solvers.daps import poly_sigmas
from ddiff.solvers.diffpir import quad_timesteps
from operators import GaussianNoise, get_operator

# DDiff's best setting on the linear-Gaussian problems, from `python benchmarks/exact_prior.py`
BEST = dict(steps=1000, x_update="gradient", gamma0=2.0, noising="ancestral", t0=500)


@pytest.fixture(scope="module", params=["mask", "blur"])
def lg_problem(request):
    return linear_gaussian_problem(request.param, size=16, draws=16, sigma_y=0.05)


def _psnr(x, ref):
    return psnr(x, ref).mean().item()


def test_ddiff_reaches_the_bayes_limit_on_linear_gaussian(lg_problem):
    P = lg_problem
    mean_db = _psnr(P.posterior.mean, P.x)
    sample_db = _psnr(P.posterior.sample(torch.Generator().manual_seed(1)), P.x)
    assert mean_db - sample_db > 2.0  # the reference gap the check relies on
    r = DDiff(P.prior, **BEST).solve(P.y, P.operator, P.noise, generator=torch.Generator().manual_seed(1))
    got = _psnr(r.x, P.x)
    assert got > sample_db, (got, sample_db)
    assert got > mean_db - 2.0, (got, mean_db)
    # the dual variable matters: without it, at the same small step, DDiff is clearly worse
    hqs = DDiffHQS(P.prior, **BEST).solve(P.y, P.operator, P.noise, generator=torch.Generator().manual_seed(1))
    assert _psnr(hqs.x, P.x) < got - 2.0
    assert r.nfe == 1000 and r.nfe_with_grad == 0


def test_ddiff_finds_the_dominant_posterior_mode_of_a_gmm():
    P = gmm_problem(size=8, draws=40)
    r = DDiff(P.prior, **BEST).solve(
        P.y, P.operator, P.noise, generator=torch.Generator().manual_seed(3))
    dominant = P.posterior.dominant
    assert (P.posterior.responsibilities.max(1).values > 0.99).float().mean() > 0.9  # informative measurement
    landed = P.posterior.component_of(r.x)
    assert (landed == dominant).float().mean().item() >= 0.95


def _small_setup(B=3, size=8):
    P = linear_gaussian_problem("mask", size=size, draws=B)
    return P


SOLVERS = [
    (DDiff, dict(steps=20)),  # the default: self-calibrated (discrepancy x-update)
    (DDiff, dict(steps=20, x_update="gradient", gamma0=2.0)),
    (DDiff, dict(steps=20, x_update="gradient", gamma0=2.0, noising="fresh", t0=1)),
    (DDiffHQS, dict(steps=20, x_update="gradient", gamma0=2.0)),
    (DiffPnPADMM, dict(steps=20)),
    (DiffPnPADMM, dict(steps=20, x_update="gradient", gamma0=2.0)),
    (DiffPnPHQS, dict(steps=20, x_update="gradient", gamma0=2.0)),
    (DPS, dict(steps=20, zeta=0.5)),
    (DiffPIR, dict(steps=10)),
    (DAPS, dict(annealing_steps=5, ode_steps=2, mcmc_steps=5)),
]


@pytest.mark.parametrize("cls, kw", SOLVERS, ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_batch_gives_each_sample_its_own_answer(cls, kw):
    P = _small_setup()
    solver = cls(P.prior, **kw)
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(3)]  # noqa: E731
    batch = solver.solve(P.y, P.operator, P.noise, generator=gens()).x
    for i in range(3):
        alone = solver.solve(P.y[i : i + 1], P.operator, P.noise, generator=[gens()[i]]).x
        assert torch.allclose(batch[i : i + 1], alone, atol=1e-10), f"sample {i} differs"
    again = solver.solve(P.y, P.operator, P.noise, generator=gens()).x
    assert torch.equal(batch, again)  # same seed -> same result


def test_early_stop_is_per_sample_and_batch_independent():
    P = _small_setup()
    solver = DDiff(P.prior, steps=50, x_update="gradient", gamma0=2.0, early_stop=0.05)
    gens = lambda: [torch.Generator().manual_seed(7 + i) for i in range(3)]  # noqa: E731
    r = solver.solve(P.y, P.operator, P.noise, generator=gens())
    assert r.nfe < 50  # it stopped early
    for i in range(3):
        alone = solver.solve(P.y[i : i + 1], P.operator, P.noise, generator=[gens()[i]]).x
        assert torch.allclose(r.x[i : i + 1], alone, atol=1e-10)


def test_nfe_is_counted_by_the_prior_wrapper():
    P = _small_setup(B=1)
    assert DDiff(P.prior, steps=30).solve(P.y, P.operator, P.noise).nfe == 30
    dps = DPS(P.prior, steps=12).solve(P.y, P.operator, P.noise)
    assert dps.nfe == 12 and dps.nfe_with_grad == 12  # DPS backpropagates through the network
    assert DiffPIR(P.prior, steps=10).solve(P.y, P.operator, P.noise).nfe == 9  # last (unused) NFE skipped
    assert DAPS(P.prior, annealing_steps=4, ode_steps=3, mcmc_steps=2).solve(P.y, P.operator, P.noise).nfe == 12


def test_callback_gets_one_dict_per_step_and_trace_is_scalar():
    P = _small_setup(B=2)
    seen = []
    r = DDiff(P.prior, steps=15).solve(P.y, P.operator, P.noise, callback=seen.append)
    assert len(seen) == 15 == len(r.trace)
    assert {"t", "x", "z", "u", "primal_residual", "dual_norm", "chi2_nu", "inner"} <= set(seen[0])
    paper = DDiff(P.prior, steps=15, x_update="gradient").solve(P.y, P.operator, P.noise)
    assert {"nll", "gamma"} <= set(paper.trace[0])
    assert isinstance(r.trace[0]["dual_norm"], list) and "x" not in r.trace[0]
    assert [s["t"] for s in seen] == P.prior.schedule.respace(15)


def test_ddiff_works_with_a_nonlinear_operator():
    P = linear_gaussian_problem("mask", size=8, draws=4)
    A = get_operator("hdr")
    noise = GaussianNoise(0.05)
    y = noise.sample(A(P.x), torch.Generator().manual_seed(0))
    paper_like = dict(steps=100, x_update="gradient", noising="ancestral", t0=50)
    r = DDiff(P.prior, gamma0=2.0, **paper_like).solve(y, A, noise, generator=torch.Generator().manual_seed(0))
    prior_only = DDiff(P.prior, gamma0=1e-9, **paper_like).solve(y, A, noise, generator=torch.Generator().manual_seed(0))
    assert _psnr(r.x, P.x) > _psnr(prior_only.x, P.x) + 3
    auto = DDiff(P.prior, steps=100).solve(y, A, noise, generator=torch.Generator().manual_seed(0))
    assert _psnr(auto.x, P.x) > _psnr(prior_only.x, P.x) + 3
    # the descent path stops at the noise level where it can reach it; HDR's clipping leaves one of
    # the four samples stuck on saturated pixels (zero gradient) at χ²_ν 5.4 — the same before issue 26
    chi2 = noise.discrepancy(y, A(auto.x)) / y[0].numel()
    reached = chi2 < 1 + 1e-3
    assert int(reached.sum()) >= 3 and torch.all(chi2[reached] > 0.8), chi2
    assert torch.all(chi2 <= noise.discrepancy(y, A(prior_only.x)) / y[0].numel()), chi2


def test_paper_hyperparameters():
    hp = DDiff.paper("gaussian_blur")
    assert hp == dict(steps=1000, x_update="gradient", gamma0=2.9, a=3.3, b=0.1, t_gamma=90, t0=50,
                      noising="ancestral", early_stop=None)
    box = DDiff.paper("inpainting_box", dataset="imagenet")
    assert (box["gamma0"], box["t_gamma"], box["noising"]) == (50.0, 500, "fresh")
    assert DDiff.paper("hdr", "imagenet")["t0"] == 100
    P = _small_setup(B=1)
    DDiff(P.prior, **DDiff.paper("super_resolution"))  # keywords are accepted as-is


def test_step_size_policy_and_rescaling():
    P = _small_setup(B=1)
    s = DDiff(P.prior, x_update="gradient", gamma0=10.0, a=3.3, b=0.1, t_gamma=90)
    n0 = 256 * 256 * 3
    assert s.gamma(500, n0) == pytest.approx(33.0) and s.gamma(90, n0) == pytest.approx(1.0)
    assert s.gamma(500, n0 // 4) == pytest.approx(16.5)
    assert DDiff(P.prior, x_update="gradient", gamma0=10.0, rescale_step=False).gamma(500, 64) == pytest.approx(33.0)


def test_reference_schedules_of_baselines():
    assert quad_timesteps(20) == [999, 770, 675, 602, 541, 487, 438, 393, 351, 311, 274, 239, 205, 172, 141, 111, 82, 54, 26, 0]
    assert quad_timesteps(100)[:6] == [999, 899, 857, 825, 798, 775]
    s = poly_sigmas(100, 0.1, 201)[:200]
    assert s[:3] == pytest.approx([100, 97.825, 95.691], abs=1e-3) and s[-1] == pytest.approx(0.10604, abs=1e-5)


def test_bad_input_raises_value_error_naming_the_problem():
    P = _small_setup(B=2)
    solver = DDiff(P.prior, steps=5)
    with pytest.raises(ValueError, match="shape mismatch"):
        solver.solve(P.y[..., :4], P.operator, P.noise, x_shape=(2, 1, 8, 8))
    bad = P.y.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        solver.solve(bad, P.operator, P.noise)
    for sigma in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            GaussianNoise(sigma)
    for steps in (0, -5, 1.5):
        with pytest.raises(ValueError, match="steps"):
            DDiff(P.prior, steps=steps)
    with pytest.raises(ValueError, match="unknown task"):
        DDiff.paper("denoise_everything")
    with pytest.raises(ValueError, match="noising"):
        DDiff(P.prior, noising="sometimes")
    with pytest.raises(ValueError, match="gamma0 only apply to x_update='gradient'"):
        DDiff(P.prior, gamma0=2.0)  # silently unused otherwise
    with pytest.raises(ValueError, match="no noising step: noising, t0"):
        DiffPnPADMM(P.prior, t0=5, noising="fresh")
    with pytest.raises(ValueError, match="channel"):
        solver.solve(P.y, P.operator, P.noise, x_shape=(2, 3, 8, 8))


def test_tv_reconstruction_is_a_working_classical_baseline():
    from ddiff import TVReconstruction
    from ddiff.solvers.tv import total_variation

    P = linear_gaussian_problem("blur", size=16, draws=4)
    r = TVReconstruction(weight=0.005, iters=300).solve(P.y, P.operator, P.noise)
    assert r.nfe == 0
    assert _psnr(r.x, P.x) > _psnr(P.y.clamp(-1, 1), P.x) + 1  # better than the blurred measurement
    flat = torch.zeros(1, 1, 4, 4)
    step = flat.clone()
    step[..., 2:] = 1.0
    assert total_variation(flat, eps=1e-9).item() < 1e-6
    assert total_variation(step, eps=1e-9).item() == pytest.approx(4.0, abs=1e-5)  # 4 rows × a jump of 1
    with pytest.raises(ValueError, match="weight"):
        TVReconstruction(weight=-1)


def _adm_prior(v0: float | None):
    """A compact ADM prior (1 channel, 16×16) with a non-trivial ε head; ``v0``: the learned-range
    channel is the constant ``v0`` (``None``: no learned variance, same ε weights)."""
    from ddiff.priors import ADMPrior, ADMUNet

    torch.manual_seed(0)
    net = ADMUNet.from_preset("compact", learn_sigma=True, image_size=16).eval()
    with torch.no_grad():
        net.out[2].weight[:1].normal_(0, 0.05)  # ε channel (zero-initialised otherwise)
        net.out[2].weight[1:].zero_()
        net.out[2].bias[1:] = 0.0 if v0 is None else v0
    if v0 is None:
        plain = ADMUNet.from_preset("compact", learn_sigma=False, image_size=16).eval()
        sd = net.state_dict()
        sd["out.2.weight"], sd["out.2.bias"] = sd["out.2.weight"][:1], sd["out.2.bias"][:1]
        plain.load_state_dict(sd)
        net = plain
    return ADMPrior(net)


def test_dps_uses_the_learned_variance_of_an_adm_prior():
    """Two DPS steps (t = 999 → 0 → done): the first adds noise of variance
    ``σ² = exp(f log β + (1−f) log β̃)``, ``f = (v+1)/2``. Same seeds, so the first iterates of runs
    with different ``v`` differ only by ``(σ(v) − σ(v'))·z``: their ratios are schedule numbers."""
    A = get_operator("inpainting_random", prob=0.5, seed=0, image_size=16)
    noise = GaussianNoise(0.05)
    y = noise.sample(A(torch.zeros(1, 1, 16, 16)), torch.Generator().manual_seed(0))

    def first_iterate(prior):
        seen = []
        r = DPS(prior, steps=2, zeta=0.5).solve(y, A, noise, generator=torch.Generator().manual_seed(0),
                                                callback=seen.append)
        assert r.nfe == 2 == r.nfe_with_grad and torch.isfinite(r.x).all()
        return seen[0]["x_t"].double(), r.x

    x_lo, end_lo = first_iterate(_adm_prior(-1.0))  # f = 0: the posterior variance β̃
    x_plain, end_plain = first_iterate(_adm_prior(None))  # no learned variance: β̃ as well
    torch.testing.assert_close(end_lo, end_plain, rtol=0, atol=1e-4)  # float32 network, float64 schedule
    torch.testing.assert_close(x_lo, x_plain, rtol=0, atol=1e-4)
    x_mid, _ = first_iterate(_adm_prior(0.0))
    x_hi, _ = first_iterate(_adm_prior(1.0))  # f = 1: β
    sched = _adm_prior(None).schedule
    ab, ab_prev = sched.abar(999), sched.abar(0)
    beta = 1 - ab / ab_prev
    beta_t = beta * (1 - ab_prev) / (1 - ab)
    expect = (beta**0.5 - beta_t**0.5) / ((beta * beta_t) ** 0.25 - beta_t**0.5)  # ≈ 11 here
    ratio = ((x_hi - x_lo).flatten() @ (x_mid - x_lo).flatten()) / (x_mid - x_lo).flatten().square().sum()
    assert ratio.item() == pytest.approx(expect, rel=1e-3)
