"""Exactly solvable reference problems for validating solvers (used by tests and benchmarks).

Room: ``ddiff`` — pure torch (+ ``operators``).

:func:`linear_gaussian_problem` draws images from a Gaussian prior with a squared-exponential
covariance, measures them through a linear operator with Gaussian noise, and returns the exact
posterior — the Bayes limit any solver can be compared with. :func:`gmm_problem` does the same for
a two-component mixture with well-separated modes. :func:`coupled_gaussian_volume` draws volumes
whose planes share a 2-D Gaussian prior and a quadratic through-plane coupling, with the exact
constrained MAP the volume solver's PnP variant must reach. :func:`reference_accuracy` runs a baseline
(DPS, DiffPIR, DAPS) at the reference setting of the paper task a problem stands for
(:data:`REFERENCE_TASK`). Everything is seeded and float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from operators import GaussianNoise, get_operator

from .priors.exact import GaussianPrior, GMMPrior, operator_matrix, se_covariance

__all__ = ["ExactProblem", "VolumeProblem", "linear_gaussian_problem", "gmm_problem", "coupled_gaussian_volume",
           "small_operator", "REFERENCE_TASK", "reference_accuracy"]

#: the paper task whose reference setting (``DPS.reference(task)`` etc.) each small operator stands for
REFERENCE_TASK = {"mask": "inpainting_random", "blur": "gaussian_blur"}


@dataclass
class ExactProblem:
    prior: object
    operator: torch.nn.Module
    noise: GaussianNoise
    x: torch.Tensor  # ground truth (B, C, H, W)
    y: torch.Tensor  # measurements
    posterior: object  # GaussianPosterior or GMMPosterior


def small_operator(name: str, size: int, seed: int = 0):
    """The test operators at small sizes: ``mask`` (30 % observed pixels) or ``blur``
    (Gaussian 7×7, std 1.5, reflect padding). Both are the registry's operators."""
    if name == "mask":
        return get_operator("inpainting_random", prob=0.7, seed=seed, image_size=size)
    if name == "blur":
        return get_operator("gaussian_blur", kernel_size=7, std=1.5)
    raise ValueError(f"unknown small operator {name!r}; use 'mask' or 'blur'")


def linear_gaussian_problem(operator: str = "mask", size: int = 16, channels: int = 1, draws: int = 16,
                            sigma_y: float = 0.05, std: float = 0.3, length: float = 2.0, seed: int = 0) -> ExactProblem:
    """Gaussian prior ``N(0, Σ_SE)`` on ``(channels, size, size)`` images (``std``, ``length`` px),
    ``draws`` truths, ``y = A x + σ_y n``, and the exact posterior ``N(mean, cov)``."""
    g = torch.Generator().manual_seed(seed)
    shape = (channels, size, size)
    n = channels * size * size
    cov = se_covariance(shape, std, length) + 1e-6 * torch.eye(n, dtype=torch.float64)
    prior = GaussianPrior(torch.zeros(shape, dtype=torch.float64), cov)
    A = small_operator(operator, size, seed)
    noise = GaussianNoise(sigma_y)
    x = prior.sample(draws, generator=g)
    y = noise.sample(A(x), g)
    post = prior.posterior(y.reshape(draws, -1), operator_matrix(A, shape), sigma_y)
    return ExactProblem(prior, A, noise, x, y, post)


def gmm_problem(size: int = 8, draws: int = 32, sigma_y: float = 0.05, separation: float = 0.5,
                seed: int = 0) -> ExactProblem:
    """Two equally likely components with means ``±separation`` (constant images), SE covariance
    (std 0.15, length 2 px), observed through a 30 %-pixel mask — an informative measurement that
    puts nearly all posterior mass on the component the truth came from."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, size, size)
    n = size * size
    cov = se_covariance(shape, 0.15, 2.0) + 1e-6 * torch.eye(n, dtype=torch.float64)
    means = torch.stack([torch.full(shape, separation), torch.full(shape, -separation)]).double()
    prior = GMMPrior(torch.tensor([0.5, 0.5]), means, torch.stack([cov, cov]))
    A = small_operator("mask", size, seed)
    noise = GaussianNoise(sigma_y)
    x = prior.sample(draws, generator=g)
    y = noise.sample(A(x), g)
    post = prior.posterior(y.reshape(draws, -1), operator_matrix(A, shape), sigma_y)
    return ExactProblem(prior, A, noise, x, y, post)


def reference_accuracy(operator: str, solver_cls, problem_seed: int = 0, solver_seed: int = 1,
                       draws: int = 8) -> tuple[float, float]:
    """``(psnr, bayes_psnr)`` in dB, averaged over ``draws`` 16×16 images: ``solver_cls`` (a class
    with ``reference(task)``: DPS, DiffPIR, DAPS) at the reference setting of
    ``REFERENCE_TASK[operator]`` on :func:`linear_gaussian_problem` ``(operator, seed=problem_seed)``,
    and the exact posterior mean (the Bayes limit in PSNR) on the same problem."""
    from .metrics import psnr

    P = linear_gaussian_problem(operator, draws=draws, seed=problem_seed)
    solver = solver_cls(P.prior, **solver_cls.reference(REFERENCE_TASK[operator]))
    r = solver.solve(P.y, P.operator, P.noise, generator=torch.Generator().manual_seed(solver_seed))
    return psnr(r.x, P.x).mean().item(), psnr(P.posterior.mean, P.x).mean().item()


@dataclass
class VolumeProblem:
    """Volumes ``x`` ``(B, 1, Z, S, S)`` from ``N(0, P⁻¹)``, ``P = I_Z ⊗ Σ⁻¹ + λ D_zᵀD_z ⊗ I``: every
    plane has the 2-D prior ``N(0, Σ)`` (``prior``) and neighbouring planes are coupled by
    ``λ/2 ‖D_z x‖²`` (``weight``). ``matrix`` is the operator as an ``(m, n)`` matrix."""

    prior: object
    operator: torch.nn.Module
    noise: GaussianNoise
    x: torch.Tensor
    y: torch.Tensor
    precision: torch.Tensor
    matrix: torch.Tensor
    weight: float

    def constrained_map(self, tau: float = 1.0, per_plane: bool = False) -> torch.Tensor:
        """``argmin ½ xᵀPx`` s.t. ``‖y − A x‖²_obs ≤ τ m σ²`` over the ``m`` observed entries (the
        non-zero rows of ``A``, as the solvers count them) — the MAP the coupled solver targets:
        ``x(α) = (P + AᵀWA/σ²)⁻¹ AᵀWy/σ²`` with the constraint's multiplier α found by bisection on
        ``log α`` (the residual decreases in α). ``per_plane``: one constraint per plane,
        ``‖y_k − A x_k‖² ≤ τ m_k σ²`` (what ``VolumeDDiff`` fits for a slice-wise operator), ``W`` the
        diagonal of the planes' multipliers ``α_k``, found by coordinate ascent on the (concave) dual:
        bisection on each ``log α_k`` in turn, the others held, until a sweep moves none by > 1e-9.
        ``(B, 1, Z, S, S)``."""
        P, A, s2 = self.precision, self.matrix, self.noise.sigma**2
        yf = self.y.reshape(self.y.shape[0], -1)
        Z = self.x.shape[2] if per_plane else 1
        plane = torch.arange(yf.shape[1]) // (yf.shape[1] // Z)  # the plane of every measurement (plane-major rows)
        observed = A.abs().sum(1) > 0  # unobserved entries hold noise no image explains: not counted
        mk = torch.bincount(plane[observed], minlength=Z).to(torch.float64)
        out = []
        for b in range(yf.shape[0]):
            def x_of(log_alpha):
                w = torch.as_tensor(log_alpha, dtype=torch.float64).exp()[plane]
                return torch.linalg.solve(P + A.T @ (w[:, None] * A) / s2, A.T @ (w * yf[b]) / s2)

            log_a = torch.zeros(Z, dtype=torch.float64)
            for _ in range(200 if per_plane else 1):
                before = log_a.clone()
                for k in range(Z):
                    lo, hi = -10.0, 20.0
                    for _ in range(100):
                        log_a[k] = (lo + hi) / 2
                        r = (yf[b] - A @ x_of(log_a))[(plane == k) & observed]
                        lo, hi = (float(log_a[k]), hi) if (r ** 2).sum() > tau * mk[k] * s2 else (lo, float(log_a[k]))
                    log_a[k] = hi
                if float((log_a - before).abs().max()) < 1e-9:
                    break
            out.append(x_of(log_a))
        return torch.stack(out).reshape(self.x.shape)


def coupled_gaussian_volume(size: int = 6, planes: int = 5, draws: int = 2, weight: float = 100.0,
                            sigma_y: float = 0.05, std: float = 0.3, length: float = 2.0, seed: int = 0) -> VolumeProblem:
    """:class:`VolumeProblem` seen through a 30 %-observed mask on every plane with noise ``sigma_y``
    (the 2-D prior: SE covariance ``std``, ``length`` px)."""
    from operators.volume import SliceWise

    g = torch.Generator().manual_seed(seed)
    n = size * size
    cov = se_covariance((1, size, size), std, length) + 1e-6 * torch.eye(n, dtype=torch.float64)
    prior = GaussianPrior(torch.zeros(1, size, size, dtype=torch.float64), cov)
    D = torch.diff(torch.eye(planes, dtype=torch.float64), dim=0)
    P = torch.kron(torch.eye(planes, dtype=torch.float64), torch.linalg.inv(cov).contiguous())
    P = P + weight * torch.kron((D.T @ D).contiguous(), torch.eye(n, dtype=torch.float64))
    chol = torch.linalg.cholesky(torch.linalg.inv(P))
    x = (torch.randn(draws, planes * n, generator=g, dtype=torch.float64) @ chol.T).reshape(draws, 1, planes, size, size)
    op = SliceWise(small_operator("mask", size, seed))
    noise = GaussianNoise(sigma_y)
    y = noise.sample(op(x), g)
    return VolumeProblem(prior, op, noise, x, y, P, operator_matrix(op, (1, planes, size, size)), float(weight))
