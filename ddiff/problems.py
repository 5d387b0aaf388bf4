"""Exactly solvable reference problems for validating solvers (used by tests and benchmarks).

Room: ``ddiff`` — pure torch (+ ``operators``).

:func:`linear_gaussian_problem` draws images from a Gaussian prior with a squared-exponential
covariance, measures them through a linear operator with Gaussian noise, and returns the exact
posterior — the Bayes limit any solver can be compared with. :func:`gmm_problem` does the same for
a two-component mixture with well-separated modes. :func:`reference_accuracy` runs a baseline
(DPS, DiffPIR, DAPS) at the reference setting of the paper task a problem stands for
(:data:`REFERENCE_TASK`). Everything is seeded and float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from operators import GaussianNoise, get_operator

from .priors.exact import GaussianPrior, GMMPrior, operator_matrix, se_covariance

__all__ = ["ExactProblem", "linear_gaussian_problem", "gmm_problem", "small_operator", "REFERENCE_TASK",
           "reference_accuracy"]

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
