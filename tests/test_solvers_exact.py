"""Baselines held to exact answers: DPS, DiffPIR and DAPS at their reference settings on the
linear-Gaussian problems (exact posterior = Bayes limit), DiffPIR's data steps against the dense
minimiser, and DAPS's reset of a diverged chain."""
import pytest
import torch

from ddiff import DAPS, DPS, DiffPIR
from ddiff.priors.exact import operator_matrix
from ddiff.problems import linear_gaussian_problem, reference_accuracy

# The exact problems draw their truths through an eigendecomposition of the prior covariance whose
# basis inside degenerate eigenspaces depends on the LAPACK thread count: one thread, as measured.
torch.set_num_threads(1)

# (operator, solver): (PSNR, gap to the Bayes limit = posterior-mean PSNR − PSNR, tolerance), dB,
# measured on problem 0 (8 images of 16×16, Bayes limit 29.03 dB mask / 27.12 dB blur) with solver
# seed 1. Tolerance: 3 × the sd of the PSNR over solver seeds 1..5 on that problem (mask DPS 0.36,
# blur DPS 0.37, mask DiffPIR 0.17, blur DiffPIR 0.27, mask DAPS 0.35 dB), rounded up to 0.05 dB —
# an implementation change that only reshuffles random draws passes, a loss beyond that fails.
# Re-measured 2026-12-08: this machine's LAPACK draws problem 0's truths differently from the one of
# the earlier table (its Bayes limits were 28.15 / 27.22 dB), so every constant moved together. With
#   OMP_NUM_THREADS=1 python benchmarks/exact_prior.py --reference --seeds 5
# (full table, problem-seed spread too, in docs/results.md). DAPS on the blur problem is measured
# there but not run here (25 s); the mask run covers the same code path.
REFERENCE = {
    ("mask", DPS): (25.88, 3.14, 1.10),
    ("blur", DPS): (25.17, 1.95, 1.15),
    ("mask", DiffPIR): (22.46, 6.57, 0.55),
    ("blur", DiffPIR): (24.40, 2.71, 0.85),
    ("mask", DAPS): (23.88, 5.15, 1.10),
}


@pytest.mark.parametrize("op, cls", list(REFERENCE), ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_baseline_at_its_reference_setting_keeps_its_measured_accuracy(op, cls):
    psnr_ref, gap_ref, tol = REFERENCE[(op, cls)]
    got, bayes = reference_accuracy(op, cls, problem_seed=0, solver_seed=1)
    assert got == pytest.approx(psnr_ref, abs=tol), (got, bayes)
    assert bayes - got == pytest.approx(gap_ref, abs=tol), (got, bayes)
    assert got < bayes  # nothing beats the posterior mean on average


def _dense_minimiser(A, y, z, rho):
    """argmin_x ‖y − A x‖² + ρ ‖x − z‖² per sample, by a dense solve in float64."""
    shape = tuple(z.shape[1:])
    M = operator_matrix(A, shape)  # (m, n)
    n = M.shape[1]
    lhs = M.T @ M + rho * torch.eye(n, dtype=torch.float64)
    rhs = (M.T @ y.reshape(y.shape[0], -1).T).T + rho * z.reshape(z.shape[0], -1)
    return torch.linalg.solve(lhs, rhs.T).T.reshape(z.shape)


class _AsNonlinear(torch.nn.Module):
    """The same forward map, flagged nonlinear: DiffPIR must take its gradient (Armijo) path."""

    linear = False
    halo = None

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def _data_step_case():
    P = linear_gaussian_problem("blur", size=8, draws=3, seed=4)
    z = P.prior.sample(3, generator=torch.Generator().manual_seed(5))  # a "denoised" estimate
    return P, z, 0.3


def test_diffpir_cg_data_step_reaches_the_exact_minimiser():
    P, z, rho = _data_step_case()
    exact = _dense_minimiser(P.operator, P.y, z, rho)
    x, method = DiffPIR(P.prior, cg_iters=64).data_step(P.operator, P.y, z, rho)  # n = 64: exact in theory
    assert method == "cg64"
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-8)
    x10, method = DiffPIR(P.prior).data_step(P.operator, P.y, z, rho)  # the default 10 iterations
    assert method == "cg10"
    err = (x10 - exact).flatten(1).norm(dim=1) / (z - exact).flatten(1).norm(dim=1)
    assert (err < 1e-3).all(), err  # well conditioned at ρ = 0.3: ten iterations are enough


def test_diffpir_armijo_data_step_descends_to_the_exact_minimiser():
    P, z, rho = _data_step_case()
    A = _AsNonlinear(P.operator)
    exact = _dense_minimiser(P.operator, P.y, z, rho)

    def objective(v):
        return ((P.y - A(v)) ** 2).flatten(1).sum(1) + rho * ((v - z) ** 2).flatten(1).sum(1)

    previous = objective(z)
    for steps in (1, 2, 5):  # more steps never increase the objective (sufficient decrease)
        x, method = DiffPIR(P.prior, grad_steps=steps).data_step(A, P.y, z, rho)
        assert method == f"grad{steps}"
        now = objective(x)
        assert (now <= previous + 1e-12).all() and (now < objective(z)).all()
        previous = now
    x, _ = DiffPIR(P.prior, grad_steps=300).data_step(A, P.y, z, rho)
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-6)


def test_daps_resets_a_diverged_chain_to_zero_and_leaves_the_others_alone():
    P = linear_gaussian_problem("mask", size=8, draws=2, seed=0)
    y = P.y.clone()
    y[1] = 1e308  # observed entries: (y − Ax)² overflows, the Langevin chain of sample 1 turns inf/NaN
    solver = DAPS(P.prior, annealing_steps=4, ode_steps=2, mcmc_steps=3)
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(2)]  # noqa: E731
    seen = []
    r = solver.solve(y, P.operator, P.noise, generator=gens(), callback=seen.append)
    assert [s["reset"] for s in seen] == [1, 1, 1, 1]  # one chain reset per annealing step
    assert torch.equal(r.x[1], torch.zeros_like(r.x[1]))  # reset at the last step: zeros, σ_N = 0
    assert torch.isfinite(r.x).all()
    alone = solver.solve(y[:1], P.operator, P.noise, generator=gens()[:1]).x
    torch.testing.assert_close(r.x[:1], alone, rtol=0, atol=1e-12)  # the healthy chain is untouched
