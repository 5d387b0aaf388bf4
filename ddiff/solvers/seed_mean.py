"""The K-seed mean: an estimate of the posterior mean from K runs of a sampling solver.

Room: ``ddiff`` — pure torch.

DDiff's self-calibrated mode (fresh noising) returns one sample that explains the data; on exact
Gaussian problems its PSNR is that of a posterior *sample*, ~3 dB below the posterior mean, the
MMSE estimate. Averaging K independent runs approaches the mean: for exact posterior samples the
mean of K has ``MSE = MSE_mean · (1 + 1/K)``. Use it where an estimate is wanted (quantitation,
segmentation downstream); keep single samples where texture matters. NFE = K × the solver's.

The K runs draw their seeds from the caller's generator(s) in a fixed order, so a batch still
gives each sample the answer it gets alone with its own generator.
"""
from __future__ import annotations

import time

import torch

from .base import Result, check_int

__all__ = ["SeedMean"]


def _child(generator: torch.Generator | None, device) -> torch.Generator | None:
    """A fresh generator seeded from ``generator`` (``None`` stays ``None``: global RNG)."""
    if generator is None:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=generator.device).manual_seed(seed)


class SeedMean:
    """``SeedMean(solver, seeds=K).solve(...)``: the mean of ``solver``'s results over K seeds.

    Same signature and :class:`~ddiff.solvers.base.Result` as every solver: ``x`` is the seed
    mean ``(B, C, H, W)``, ``nfe`` the total over seeds, ``trace`` one entry per seed with that
    run's last step. ``seeds=1`` returns the solver's own result. ``keep_samples=True``: the result
    also carries the K runs, ``samples`` ``(K, B, C, H, W)`` (what :func:`ddiff.audit.uncertainty`
    takes), at K × the memory of one result.
    """

    def __init__(self, solver, seeds: int = 8, keep_samples: bool = False):
        self.solver = solver
        self.seeds = check_int("seeds", seeds, 1, 1024)
        self.keep_samples = bool(keep_samples)
        self.prior = solver.prior

    def solve(self, y, operator, noise, generator=None, callback=None, x_shape=None) -> Result:
        if self.seeds == 1:
            return self.solver.solve(y, operator, noise, generator=generator, callback=callback, x_shape=x_shape)
        t0 = time.perf_counter()
        total, nfe, nfe_grad, trace, kept = None, 0, 0, [], []
        for k in range(self.seeds):
            if isinstance(generator, (list, tuple)):
                gen = [_child(g, y.device) for g in generator]
            else:
                gen = _child(generator, y.device)
            r = self.solver.solve(y, operator, noise, generator=gen, callback=callback, x_shape=x_shape)
            total = r.x.double() if total is None else total + r.x.double()
            if self.keep_samples:
                kept.append(r.x)
            nfe, nfe_grad = nfe + r.nfe, nfe_grad + r.nfe_with_grad
            trace.append({"seed": k, **(r.trace[-1] if r.trace else {})})
        x = (total / self.seeds).to(r.x.dtype)
        return Result(x=x, nfe=nfe, trace=trace, seconds=time.perf_counter() - t0, nfe_with_grad=nfe_grad,
                      samples=torch.stack(kept) if kept else None)
