"""What every solver shares: the result type, input checks, the likelihood gradient, noise draws.

Room: ``ddiff`` — pure torch. Solvers know nothing of Prefect, Zarr or xarray: they take tensors
and return tensors.

Every solver has the same signature (k-diffusion style)::

    solver.solve(y, operator, noise, generator=None, callback=None, x_shape=None) -> Result

* ``y`` — measurement batch (leading dimension ``B``), in the units of ``operator(x)``;
* ``operator`` — any forward model: an ``nn.Module`` with ``forward``, ``halo``, and ``adjoint``
  when linear (see ``operators.base``);
* ``noise`` — a noise model with ``nll(y, Ax)`` (summed per sample), e.g. ``GaussianNoise(0.05)``;
* ``generator`` — a ``torch.Generator``, or a list of ``B`` of them (one per sample: a batch then
  gives each sample exactly the answer it gets alone with its own generator);
* ``callback`` — called once per step with a ``dict`` of that step's tensors and numbers;
* ``x_shape`` — the image shape ``(B, C, H, W)``; inferred when omitted (see :func:`infer_x_shape`).

``Result.x`` is the reconstruction ``(B, C, H, W)`` in model space, ``Result.nfe`` the number of
network evaluations counted by :class:`~ddiff.priors.base.NFECounter`, ``Result.trace`` one dict
of per-sample scalars per step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..priors.base import NFECounter
from .observed import observed_measurement

__all__ = ["Result", "Solver", "likelihood_grad", "per_sample_norm", "rdot", "real_part", "randn", "infer_x_shape"]

Generator = "torch.Generator | Sequence[torch.Generator] | None"


@dataclass
class Result:
    """Output of ``Solver.solve``: ``x`` ``(B, C, H, W)``, ``nfe``, per-step ``trace``, wall ``seconds``;
    ``samples`` ``(K, B, C, H, W)``: the K seeded results behind ``x`` when a multi-seed solver was
    asked to keep them (:class:`~ddiff.solvers.seed_mean.SeedMean`), else ``None``."""

    x: torch.Tensor
    nfe: int
    trace: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    nfe_with_grad: int = 0
    samples: torch.Tensor | None = None


def per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    """ℓ2 norm of each sample, shaped ``(B, 1, …, 1)`` to broadcast against ``v``."""
    return v.reshape(v.shape[0], -1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))


def rdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real per-sample inner product ``Re Σ conj(a) b``, shaped ``(B, 1, …, 1)`` like ``a``."""
    p = (a.conj() * b).real if a.is_complex() or b.is_complex() else a * b
    return p.reshape(p.shape[0], -1).sum(1).view(-1, *([1] * (a.ndim - 1)))


def real_part(v: torch.Tensor) -> torch.Tensor:
    """``v.real`` for complex tensors (an image from ``Aᴴ y`` of complex data), else ``v``."""
    return v.real if v.is_complex() else v


def randn(shape, generator: Generator, dtype, device) -> torch.Tensor:
    """Standard normal draws; with a list of generators, sample ``i`` uses ``generator[i]``."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=device) for g in generator])
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def likelihood_grad(operator, noise, y: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``∇_v ℓ(v)`` and ``ℓ(v)`` per sample, ``ℓ(v) = noise.nll(y, A(v))``.

    The gradient flows through the forward model only (``v`` is detached from any network graph).
    """
    with torch.enable_grad():
        v = v.detach().requires_grad_(True)
        nll = noise.nll(y, operator(v))
        (g,) = torch.autograd.grad(nll.sum(), v)
    return g, nll.detach()


def infer_x_shape(y: torch.Tensor, operator, channels: int) -> tuple[int, ...]:
    """Image shape for measurement ``y``: ``operator.x_shape(y.shape)`` if the operator offers it,
    else the shape of ``Aᴴ y`` for linear operators, else ``y``'s shape with the prior's channels."""
    if hasattr(operator, "x_shape"):
        return tuple(operator.x_shape(tuple(y.shape)))
    if getattr(operator, "linear", False) and hasattr(operator, "adjoint"):
        with torch.no_grad():
            return tuple(operator.adjoint(y).shape)
    return (y.shape[0], channels, *y.shape[2:])


class Solver:
    """Base class: input validation, NFE counting and timing around ``_run``."""

    #: dimensions of the image batch: 4 for ``(B, C, H, W)``, 5 for volume solvers ``(B, C, Z, H, W)``
    image_ndim = 4

    def __init__(self, prior):
        if not hasattr(prior, "eps"):
            raise ValueError(f"prior must expose eps(x_t, t); got {type(prior).__name__}")
        self.prior = prior

    # subclasses implement this; `net` is the NFE-counting wrapper of the prior
    def _run(self, net: NFECounter, y, operator, noise, x_shape, generator, emit) -> torch.Tensor:
        raise NotImplementedError

    def solve(
        self,
        y: torch.Tensor,
        operator,
        noise,
        generator: Generator = None,
        callback: Callable[[dict], None] | None = None,
        x_shape: Sequence[int] | None = None,
    ) -> Result:
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"y must be a torch.Tensor, got {type(y).__name__}")
        channels = getattr(self.prior, "channels", None)  # None: any channel count (no network)
        x_shape = tuple(x_shape) if x_shape is not None else infer_x_shape(y, operator, channels or y.shape[1])
        if len(x_shape) != self.image_ndim or x_shape[0] != y.shape[0]:
            axes = "(B, C, H, W)" if self.image_ndim == 4 else "(B, C, Z, H, W)"
            raise ValueError(f"x_shape must be {axes} with B = {y.shape[0]}, got {x_shape}")
        if channels is not None and x_shape[1] != channels:
            raise ValueError(f"the prior has {channels} channel(s) but the image has {x_shape[1]}")
        with torch.no_grad():
            Ax = operator(torch.zeros(x_shape, dtype=y.real.dtype if y.is_complex() else y.dtype, device=y.device))
        if tuple(Ax.shape) != tuple(y.shape):
            raise ValueError(
                f"shape mismatch: y has shape {tuple(y.shape)} but A(x) has shape {tuple(Ax.shape)} "
                f"for images of shape {x_shape}; pass the right operator or x_shape"
            )
        # entries the operator does not observe (a mask's holes, Validity's invalid entries) carry no
        # information: whatever the file holds there (noise, 0, NaN) is replaced by what A predicts
        y = observed_measurement(operator, torch.zeros(x_shape, dtype=Ax.real.dtype, device=y.device), y)
        if not torch.isfinite(y).all():
            raise ValueError("y contains NaN or Inf values at measured entries; mask them (operators.Validity, "
                             "--mask / --nonfinite mask) or repair the measurement before solving")
        if hasattr(noise, "validate"):
            noise.validate(y)
        net = NFECounter(self.prior)
        trace: list[dict] = []

        def emit(info: dict) -> None:
            trace.append({k: _scalarize(v) for k, v in info.items() if not _is_image(v)})
            if callback is not None:
                callback(info)

        t0 = time.perf_counter()
        with torch.no_grad():
            x = self._run(net, y, operator, noise, x_shape, generator, emit)
        return Result(x=x, nfe=net.nfe, trace=trace, seconds=time.perf_counter() - t0, nfe_with_grad=net.with_grad)


def _is_image(v) -> bool:
    return isinstance(v, torch.Tensor) and v.ndim >= 2


def _scalarize(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist() if v.ndim == 1 else float(v)
    return v


def check_positive(name: str, value, allow_zero: bool = False) -> float:
    """``float(value)``, raising ``ValueError`` unless it is finite and > 0 (≥ 0 with ``allow_zero``)."""
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'≥' if allow_zero else '>'} 0 and finite, got {value!r}")
    return v


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` itself, raising ``ValueError`` unless it is an integer (not a bool) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return value


def check_steps(steps, T: int) -> int:
    return check_int("steps", steps, 1, T)
