"""A validity mask composed with any forward model: entries that were not measured.

Room: ``operators`` — torch only.

Dead, hot or saturated pixels, pixels outside a user's mask and non-finite values are not
measurements. ``Validity(A, valid, fill)`` is the forward model ``A`` restricted to the valid
entries: ``forward(x) = A(x)`` where ``valid``, ``fill`` elsewhere, and the measurement is given the
same ``fill`` there (:meth:`Validity.apply`), so those entries have a residual of exactly 0 and
drop out of the likelihood, its gradient and the discrepancy. What still has to know the mask
reads it from the operator:

* ``valid`` — bool, broadcastable to the measurement ``(B, C', h, w)``: solvers count the real
  measurements ``m`` from it (``ddiff.solvers.observed``), so the discrepancy target ``τ m`` counts
  observed entries only, and ignore what ``y`` holds at invalid entries (``Solver.solve`` applies
  the same ``fill`` there: a raw frame with dead pixels still reading data gives the answer of
  :meth:`Validity.apply`'d data);
* ``mask`` — the audit's observed entries (``ddiff.audit.observed_mask``): ``valid`` combined with
  ``A.mask`` when ``A`` has one (inpainting).

``fill`` is the model-space value of a zero-signal measurement under the noise model
(``noise.neutral()``: 0 for Gaussian noise, the black level for camera counts, so a Poisson model
sees 0 counts there). With ``fill = 0`` the operator is linear when ``A`` is
(``adjoint(r) = Aᴴ(valid ⊙ r)``), so CGLS solves exactly ``min ‖valid ⊙ (y − A x)‖²``.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ForwardModel

__all__ = ["Validity"]


class Validity(ForwardModel):
    """``A`` restricted to the entries where ``valid`` is True (see module docstring)."""

    def __init__(self, operator: nn.Module, valid: torch.Tensor, fill: float = 0.0):
        super().__init__()
        self.operator = operator
        self.register_buffer("valid", torch.as_tensor(valid).to(torch.bool))
        self.fill = float(fill)
        self.linear = bool(getattr(operator, "linear", False)) and self.fill == 0.0
        self.halo = getattr(operator, "halo", None)
        if hasattr(operator, "x_shape"):
            self.x_shape = operator.x_shape
        inner = getattr(operator, "mask", None)
        m = self.valid
        if isinstance(inner, torch.Tensor):
            try:
                m = m & torch.broadcast_to(inner.to(m.device) != 0, m.shape)
            except RuntimeError:
                pass
        self.register_buffer("mask", m)

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """The measurement with its invalid entries set to ``fill`` (whatever they held: NaN, 0, 65535)."""
        return torch.where(self.valid.to(y.device), y, torch.full_like(y, self.fill))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Ax = self.operator(x)
        return torch.where(self.valid.to(Ax.device), Ax, torch.full_like(Ax, self.fill))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if not self.linear:
            raise NotImplementedError("Validity: no adjoint (the operator is not linear, or fill != 0)")
        return self.operator.adjoint(y * self.valid.to(device=y.device, dtype=y.real.dtype))

    def select(self, keep: torch.Tensor) -> "Validity":
        """The operator for the samples ``keep`` of the batch (a solver that stops some samples early
        keeps each remaining sample's own mask); a mask shared by the batch is kept as it is."""
        inner = self.operator.select(keep) if hasattr(self.operator, "select") else self.operator
        valid = self.valid[keep.to(self.valid.device)] if self.valid.ndim and self.valid.shape[0] > 1 else self.valid
        return Validity(inner, valid, self.fill)

    def extra_repr(self) -> str:
        return f"valid={int(self.valid.sum())}/{self.valid.numel()}, fill={self.fill:g}, halo={self.halo}"
