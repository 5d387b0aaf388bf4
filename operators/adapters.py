"""Adapters that let forward models from other libraries run in every solver.

Room: ``operators`` — torch; ``deepinv`` (optional extra ``ddiff-pipeline[deepinv]``) is imported
lazily and only to tell linear from nonlinear physics.
"""
from __future__ import annotations

import torch

from .base import ForwardModel, check_image, register

__all__ = ["DeepInvPhysics", "from_deepinv"]


def _is_linear(physics) -> bool:
    try:
        from deepinv.physics import LinearPhysics  # lazy: optional dependency
    except ImportError:
        LinearPhysics = None
    if LinearPhysics is not None and isinstance(physics, LinearPhysics):
        return True
    return callable(getattr(physics, "A_adjoint", None))


@register("deepinv")
class DeepInvPhysics(ForwardModel):
    """Wrap a deepinv ``Physics`` object: ``A(x) = physics.A(x)`` (noiseless), ``Aᴴ y = physics.A_adjoint(y)``.

    Measurement noise stays with our noise models (deepinv's ``physics.noise_model`` is not used),
    so ``nll`` is exact and the solvers see the same interface as for built-in operators.
    ``halo`` defaults to ``None`` (global; pass an int only if you know the operator is local and
    shift-invariant). ``linear`` is True for ``deepinv.physics.LinearPhysics`` (or any object with
    ``A_adjoint``). Build with ``get_operator("deepinv", physics=...)`` or :func:`from_deepinv`.
    """

    def __init__(self, physics=None, halo: int | None = None):
        super().__init__()
        if physics is None:
            raise ValueError("deepinv adapter: pass the deepinv Physics object, get_operator('deepinv', physics=...)")
        if not callable(getattr(physics, "A", None)):
            raise ValueError(f"deepinv adapter: expected a deepinv Physics object with an A(x) method, got {type(physics).__name__}")
        self.physics = physics
        self.halo = halo
        self.linear = _is_linear(physics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, "deepinv adapter")
        return self.physics.A(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if not self.linear:
            raise NotImplementedError(f"{type(self.physics).__name__} is not linear: it has no adjoint")
        return self.physics.A_adjoint(y)

    def extra_repr(self) -> str:
        return f"physics={type(self.physics).__name__}, linear={self.linear}, halo={self.halo}"


def from_deepinv(physics, halo: int | None = None) -> DeepInvPhysics:
    """Shorthand for ``DeepInvPhysics(physics, halo)``."""
    return DeepInvPhysics(physics, halo=halo)
