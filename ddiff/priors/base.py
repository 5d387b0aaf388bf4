"""The prior protocol: what a solver may ask of a diffusion prior.

Room: ``ddiff`` — pure torch.

A prior is an ``nn.Module`` exposing

* ``eps(x_t, t) -> ε̂`` — the predicted noise, shape ``(B, C, H, W)`` like ``x_t``; ``t`` is the
  original DDPM index (int, or a ``(B,)`` tensor; fractional values are allowed for VE-style
  samplers such as DAPS);
* ``channels`` — the channel count ``C`` it was trained on;
* ``schedule`` — its :class:`~ddiff.schedule.VPSchedule`.

Adapters wrap foreign networks (e.g. the ADM UNet whose 2C output channels hold ε and a variance
interpolation) into this protocol. Solvers never call the network directly: they wrap the prior
in :class:`NFECounter`, which counts network evaluations (NFE) so no solver counts by hand.
"""
from __future__ import annotations

import torch
from torch import nn

from ..schedule import VPSchedule

__all__ = ["Prior", "NFECounter", "tweedie_x0", "timestep_tensor"]


def timestep_tensor(t, batch: int, device) -> torch.Tensor:
    """``t`` (int, float or tensor) as a float64 ``(B,)`` tensor of original DDPM indices."""
    tt = torch.as_tensor(t, dtype=torch.float64, device=device)
    if tt.ndim == 0:
        tt = tt.expand(batch)
    if tt.shape != (batch,):
        raise ValueError(f"timestep must be a scalar or shape ({batch},), got {tuple(tt.shape)}")
    return tt


def tweedie_x0(x_t: torch.Tensor, eps: torch.Tensor, abar_t, clip: bool = True) -> torch.Tensor:
    """Tweedie's estimate ``x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t``, clipped to ``[−1, 1]`` by default.

    ``abar_t`` is a float or a ``(B,)`` tensor; model space is ``[−1, 1]``.
    """
    a = torch.as_tensor(abar_t, dtype=torch.float64)
    if a.ndim == 1:
        a = a.view(-1, *([1] * (x_t.ndim - 1)))
    a = a.to(device=x_t.device, dtype=x_t.dtype)
    x0 = (x_t - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
    return x0.clamp(-1.0, 1.0) if clip else x0


class Prior(nn.Module):
    """Base class of priors. Subclasses implement :meth:`eps` and set ``channels``."""

    channels: int = 1

    def __init__(self, schedule: VPSchedule | None = None):
        super().__init__()
        self.schedule = schedule or VPSchedule()

    def eps(self, x_t: torch.Tensor, t) -> torch.Tensor:  # pragma: no cover - protocol
        raise NotImplementedError

    def check_input(self, x_t: torch.Tensor) -> None:
        """Reject inputs the prior cannot evaluate, naming the problem."""
        if x_t.ndim != 4:
            raise ValueError(f"prior expects (B, C, H, W), got shape {tuple(x_t.shape)}")
        if x_t.shape[1] != self.channels:
            raise ValueError(
                f"prior has {self.channels} channel(s) but the input has {x_t.shape[1]}; "
                "use a prior trained on this channel count"
            )

    def x0(self, x_t: torch.Tensor, t, clip: bool = True) -> torch.Tensor:
        """Tweedie ``x̂_0(x_t)`` at integer step ``t`` (one network evaluation)."""
        abar = self.schedule.alpha_bar[torch.as_tensor(t).long().cpu()]
        return tweedie_x0(x_t, self.eps(x_t, t), abar, clip=clip)


class NFECounter(nn.Module):
    """Wraps a prior and counts its network evaluations.

    One call of :meth:`eps` with a batch is one NFE, whatever the batch size (the paper counts
    per image, and every image in the batch gets one evaluation per call). ``backward`` counts
    how many evaluations were made with gradients enabled on the input (DPS backpropagates through
    the network; DDiff must not).
    """

    def __init__(self, prior: nn.Module):
        super().__init__()
        self.prior = prior
        self.nfe = 0
        self.with_grad = 0

    @property
    def channels(self) -> int:
        return self.prior.channels

    @property
    def schedule(self) -> VPSchedule:
        return self.prior.schedule

    def _count(self, x_t: torch.Tensor) -> None:
        self.nfe += 1
        if torch.is_grad_enabled() and x_t.requires_grad:
            self.with_grad += 1

    def eps(self, x_t: torch.Tensor, t) -> torch.Tensor:
        self._count(x_t)
        return self.prior.eps(x_t, t)

    def eps_and_v(self, x_t: torch.Tensor, t):
        """``(ε̂, v)`` for priors with a learned variance (one NFE); ``v`` is ``None`` otherwise."""
        if not hasattr(self.prior, "eps_and_v"):
            return self.eps(x_t, t), None
        self._count(x_t)
        return self.prior.eps_and_v(x_t, t)

    def x0(self, x_t: torch.Tensor, t, clip: bool = True) -> torch.Tensor:
        abar = self.schedule.alpha_bar[torch.as_tensor(t).long().cpu()]
        return tweedie_x0(x_t, self.eps(x_t, t), abar, clip=clip)
