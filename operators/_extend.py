"""Boundary extension by index maps, and its exact adjoint.

Room: ``operators`` — torch only.

Padding is written as "gather along an axis with an index map" so that the forward pass and its
adjoint (scatter-add with the same map) are exact transposes of each other, for any pad width.

Two boundary rules are used by the reference code (``baselines_spec.md`` §2):

* ``"reflect"`` — mirror **without** repeating the edge (``−1 → 1``), ``nn.ReflectionPad2d``;
  used by the DPS/DAPS blurs.
* ``"symmetric"`` — half-sample symmetric, edge repeated (``−1 → 0``, ``L → L−1``); used by the
  Resizer (super-resolution) and by ``scipy.ndimage``'s ``mode="reflect"``.
"""
from __future__ import annotations

import torch

__all__ = ["extension_index", "extend", "extend_adjoint"]


def extension_index(n: int, start: int, stop: int, mode: str, device=None) -> torch.Tensor:
    """Source indices in ``[0, n)`` of the extended positions ``start … stop−1`` (int64)."""
    if n < 1:
        raise ValueError(f"cannot extend an axis of length {n}")
    idx = torch.arange(start, stop, device=device)
    if mode == "reflect":
        if n == 1:
            return torch.zeros_like(idx)
        period = 2 * (n - 1)
        m = torch.remainder(idx, period)
        return torch.where(m < n, m, period - m)
    if mode == "symmetric":
        period = 2 * n
        m = torch.remainder(idx, period)
        return torch.where(m < n, m, period - 1 - m)
    raise ValueError(f"unknown extension mode {mode!r}; use 'reflect' or 'symmetric'")


def extend(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Gather ``x[..., rows, :][..., :, cols]`` — the padded image."""
    return x.index_select(-2, rows).index_select(-1, cols)


def extend_adjoint(z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Adjoint of :func:`extend`: scatter-add the padded image back onto an ``h × w`` grid."""
    out_c = z.new_zeros(z.shape[:-1] + (w,)).index_add(-1, cols, z)
    return out_c.new_zeros(out_c.shape[:-2] + (h, w)).index_add(-2, rows, out_c)
