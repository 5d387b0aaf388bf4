"""The forward-model protocol and the operator registry.

Room: ``operators`` — torch and numpy only; never imports ``ddiff``, storage, flows, prefect,
zarr or xarray.

A forward model is an ``nn.Module`` mapping an image batch ``x`` of shape ``(B, C, H, W)`` in
model space ``[−1, 1]`` to a measurement ``y = A(x)`` (any shape, real or complex). It declares

* ``linear`` — whether ``A`` is linear; linear models also implement ``adjoint(y)`` (``Aᴴ``);
* ``halo`` — pixels of context a tile needs so that ``A`` is exact in the tile's core
  (an ``int``), or ``None`` when ``A`` is global (Fourier, Radon, …) and only whole frames can be
  solved;
* optionally ``solve_regularized(y, z, rho)`` — the closed form of
  ``argmin_x ‖y − A x‖² + ρ ‖x − z‖²`` (used by DiffPIR's data step when present).

Any user module with ``forward``, ``halo`` (and ``adjoint`` when linear) works with every solver;
subclassing :class:`ForwardModel` only adds input checks and a readable ``repr``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["ForwardModel", "register", "get_operator", "available", "check_image"]


def check_image(x: torch.Tensor, who: str = "operator") -> None:
    """Raise ``ValueError`` unless ``x`` is a finite ``(B, C, H, W)`` floating tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{who}: expected an image batch of shape (B, C, H, W), got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.is_complex()):
        raise ValueError(f"{who}: expected a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{who}: input contains NaN or Inf values; clean or mask them first")


class ForwardModel(nn.Module):
    """Base class of forward models ``A``.

    Subclasses implement :meth:`forward` (and :meth:`adjoint` when ``linear``) and set ``halo``.
    """

    linear: bool = False
    halo: int | None = 0

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not linear: it has no adjoint")

    def tile_operator(self, top: int, left: int, height: int, width: int) -> nn.Module:
        """The operator to apply to the window ``x[..., top:top+height, left:left+width]`` of a frame.

        Used by tiled solving (cut a tile with ``halo`` pixels of context, solve it with this
        operator, keep its core). Shift-invariant operators (blurs, point-wise maps) return
        ``self``; position-dependent ones (inpainting masks) return an operator on the cropped
        window. Offsets of super-resolution tiles must be multiples of the scale factor.
        """
        return self

    def extra_repr(self) -> str:
        return f"linear={self.linear}, halo={self.halo}"


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_ENTRY_POINTS_LOADED = False
ENTRY_POINT_GROUP = "ddiff.operators"


def register(name: str) -> Callable:
    """Class/factory decorator adding an operator under ``name`` (``get_operator(name, **params)``)."""

    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"operator {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_entry_points() -> None:
    """Add third-party operators published under the entry-point group ``ddiff.operators``."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            try:
                _REGISTRY[ep.name] = ep.load()
            except Exception as exc:  # a broken plug-in must not break the built-ins
                import warnings

                warnings.warn(f"could not load operator plug-in {ep.name!r} ({ep.value}): {exc}")


def available() -> list[str]:
    """Sorted names of every registered operator (built-in and plug-in)."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_operator(name: str, **params) -> nn.Module:
    """Build the operator registered as ``name`` with keyword ``params``.

    Raises ``ValueError`` listing the available names when ``name`` is unknown.
    """
    _load_entry_points()
    if name not in _REGISTRY:
        raise ValueError(f"unknown operator {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](**params)
