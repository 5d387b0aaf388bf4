"""Volumes ``(B, C, Z, H, W)`` solved as volumes with a 2-D diffusion prior (issue 19).

Room: ``ddiff`` — pure torch (+ ``operators`` for the slice reshapes).

DDiff is ADMM; a volume adds one block. With a 2-D prior ``p`` on every plane, a 3-D forward
model ``A`` (``operators.volume``) and a Gaussian model of the through-plane differences
``D_z x = x[:, :, 1:] − x[:, :, :-1]`` with per-voxel scale ``s``, the MAP problem is

    min_x  Σ_k −log p(x_k)  +  λ/2 ‖D_z x‖²  +  ι{D(y, A x) ≤ τ m},        λ = 1/s²,

split into consensus ADMM with the prior block ``z``, the coupling block ``w`` and the data block
``x`` (penalties ``ρ_t = 1/σ̄_t²`` for the prior, as in DDiff, and ``κ ρ_t`` for the coupling):

    z = x̂_0(x_t) on every slice, one batched network call    (1) prior (DDiff's z-update, 1 NFE)
    w = (I + λ σ̄_t²/κ · D_zᵀD_z)⁻¹ (x + v)                  (1') coupling: the quadratic's prox along z
    x = Π_C( (z − u + κ (w − v)) / (1 + κ) )                 (2) data: DDiff's discrepancy projection
    x_{t−1} = noising of x + u (DDiff's (3)–(5))                   of the penalty-weighted mean
    u ← (u + x − z)·σ̄²_{t−1}/σ̄²_t,  v ← (v + x − w)·σ̄²_{t−1}/σ̄²_t     (6) both duals, unscaled duals fixed

(2) is the exact minimiser over ``x`` of the data indicator plus both penalty terms (the sum of two
isotropic quadratics is one, centred at their weighted mean), so the projection machinery of
:mod:`.data_fit` is reused unchanged. With ``coupling=None`` the w-block is absent: DDiff on the
volume (per-slice prior, 3-D data step). :class:`SliceBySlice` is the baseline of independent slices.

**The weight from the data** (``coupling_weight="auto"``). ``λ = 1/s²`` is the precision of the
Gaussian model of the through-plane differences. It is re-estimated at every step by maximum
likelihood from the prior block's estimate, ``λ_t = #d / ‖D_z z_t‖²`` — the empirical-Bayes (EM-type)
update of a prior's precision (Vidal et al., SIAM J. Imaging Sci. 13:1945, 2020). ``z_t`` is what the
data step and the 2-D prior make of the volume, every slice denoised on its own, so no ground truth
and no tuning enter; its slices carry the prior's independent per-slice variation, so the rule errs
towards weaker coupling rather than collapsing the volume. Read as a Wiener rule: at diffusion
level ``σ̄_t`` the coupling smooths over about ``σ̄_t √λ_t`` planes — slices are averaged where the
current noise level hides their differences. (Estimating ``s²`` from the differenced measurements
``D_z y`` by the discrepancy principle instead was tried and rejected: the stopped solution has the
smallest norm that explains the data, so on a 30 %-observed mask it put ``λ`` 15–400× above the
truth's ``1/s²``; ``docs/results.md``.)
"""
from __future__ import annotations

import math
import time

import torch

from operators.volume import SliceWise, from_slices, to_slices

from .base import Result, check_positive, per_sample_norm, randn
from .ddiff import DDiff, DiffPnPADMM
from .seed_mean import _child

__all__ = ["VolumeDDiff", "VolumeDiffPnPADMM", "SliceBySlice", "COUPLINGS", "through_plane_difference", "ZSmoother"]

#: the through-plane coupling blocks: a quadratic smoothness across z, or none
COUPLINGS = ("quadratic", None)


def through_plane_difference(x: torch.Tensor) -> torch.Tensor:
    """``D_z x``: differences of neighbouring planes, ``(B, C, Z, …) → (B, C, Z − 1, …)``."""
    return x[:, :, 1:] - x[:, :, :-1]


class ZSmoother:
    """``(I + c · D_zᵀD_z)⁻¹`` along the z axis (dim 2) with free ends, through the eigenbasis of
    the path-graph Laplacian ``D_zᵀD_z`` (``Z × Z``, computed once); ``c`` per sample ``(B,)``."""

    def __init__(self, planes: int, dtype, device):
        D = torch.diff(torch.eye(planes, dtype=torch.float64), dim=0)  # (Z − 1, Z)
        mu, Q = torch.linalg.eigh(D.T @ D)
        self.mu, self.Q = mu.clamp_min(0).to(dtype=dtype, device=device), Q.to(dtype=dtype, device=device)

    def prox(self, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        coeff = b.movedim(2, -1) @ self.Q  # coordinates in the eigenbasis, (B, C, H, W, Z)
        coeff = coeff / (1 + c.view(-1, *([1] * (coeff.ndim - 1))) * self.mu)
        return (coeff @ self.Q.T).movedim(-1, 2)


class VolumeDDiff(DDiff):
    """DDiff on volumes with a 2-D prior and a through-plane coupling block (module docstring).

    Args (besides DDiff's; ``early_stop`` is not available for volumes):
        coupling: ``"quadratic"`` (default) or ``None`` (per-slice prior, 3-D data step only).
        coupling_weight: ``λ`` (a positive number) or ``"auto"`` (default: re-estimated every step,
            ``λ_t = #d / ‖D_z z_t‖²``, see the module docstring).
        penalty_ratio: ``κ``, the coupling penalty relative to the prior's ``1/σ̄_t²`` (1: the
            data step starts from the plain mean of the two blocks' proposals).

    ``solve(y, operator, noise, …)`` takes ``y`` ``(B, C, Z, …)`` and a volume operator; ``Result.x``
    is ``(B, C, Z, H, W)``. NFE = steps: one network call per step denoises every slice.
    """

    image_ndim = 5
    _on_manifold = True  # DDiff's noising step (False: the PnP ablation)

    def __init__(self, prior, coupling: str | None = "quadratic", coupling_weight="auto", penalty_ratio: float = 1.0,
                 **kwargs):
        super().__init__(prior, **kwargs)
        if getattr(self, "early_stop", None) is not None:
            raise ValueError("early_stop is not available for volumes (every plane shares one trajectory)")
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be 'quadratic' or None, got {coupling!r}")
        if coupling is not None and self.x_update != "discrepancy":
            raise ValueError("the through-plane coupling needs x_update='discrepancy' (its penalty follows the prior "
                             "step's 1/σ̄_t², which only the self-calibrated x-update defines); use coupling=None")
        if coupling_weight != "auto":
            coupling_weight = check_positive("coupling_weight", coupling_weight)
        self.coupling, self.coupling_weight = coupling, coupling_weight
        self.penalty_ratio = check_positive("penalty_ratio", penalty_ratio)

    @classmethod
    def auto(cls, steps: int = 100) -> dict:
        """DDiff's self-calibrated setting with the data-chosen quadratic coupling. The volume path
        keeps the stopped-CGLS data step (``projection="cgls"``) until the exact projection is measured
        on volumes: with it, one plane of the 8-plane widefield z-stack of tests/test_volume_flows.py
        was flagged by the audit on honest data."""
        return dict(super().auto(steps), projection="cgls", coupling="quadratic", coupling_weight="auto",
                    penalty_ratio=1.0)

    def data_step(self, operator, noise, y, v, gamma, last: bool = False, observed=None):
        """(2) DDiff's x-update on the volume. A slice-wise operator (``SliceWise``: CT of every slice,
        a 2-D operator per plane) measures each slice on its own, so each slice's measurements are a
        data set of their own and are fitted to their own noise level: the projection onto
        ``∩_k {D(y_k, A x_k) ≤ τ m_k}`` separates into one projection per slice (exact). One constraint
        on the sum would let one slice sit above its noise while another is pulled below it
        (``benchmarks/ct_volume_fit.py``, sparse-view CT volume: per-slice χ²_ν 0.86–1.17 with one
        constraint, 0.92–1.00 with one per slice, the same PSNR).
        A 3-D operator mixes planes: the whole volume's fit is then one constraint. ``info`` values
        are per volume (the mean over its slices)."""
        if self.x_update != "discrepancy" or not isinstance(operator, SliceWise):
            return super().data_step(operator, noise, y, v, gamma, last, observed)
        B = y.shape[0]
        x, info = super().data_step(operator.op, noise, to_slices(y), to_slices(v), gamma, last)
        per_volume = {k: (val.reshape(B, -1).double().mean(1).to(val.dtype) if isinstance(val, torch.Tensor)
                          and val.ndim == 1 and val.numel() % B == 0 else val) for k, val in info.items()}
        return from_slices(x, B), per_volume

    def weight(self, z: torch.Tensor) -> torch.Tensor:
        """``λ`` per sample ``(B,)`` at the prior block's estimate ``z`` (``"auto"``: ``#d / ‖D_z z‖²``)."""
        if self.coupling_weight == "auto":
            return 1.0 / through_plane_difference(z).flatten(1).square().mean(1).clamp_min(1e-12)
        return torch.full((z.shape[0],), self.coupling_weight, dtype=z.dtype, device=z.device)

    def _run(self, net, y, operator, noise, x_shape, generator, emit):
        return _volume_loop(self, net, y, operator, noise, x_shape, generator, emit)


class VolumeDiffPnPADMM(VolumeDDiff, DiffPnPADMM):
    """:class:`VolumeDDiff` without the noising step: the prior block denoises ``√ᾱ_t (x + u)`` at step
    ``t`` (PnP-ADMM with a diffusion denoiser). Deterministic; with a Gaussian prior each block is an
    exact proximal map, so it is exact ADMM on the MAP problem of the module docstring."""

    _on_manifold = False


def _volume_loop(solver, net, y, operator, noise, x_shape, generator, emit):
    sched, dev = net.schedule, y.device
    dt = y.real.dtype if y.is_complex() else y.dtype
    B, n = x_shape[0], math.prod(x_shape[1:])
    ts = sched.respace(solver.steps)
    coupled, kappa = solver.coupling is not None and x_shape[2] > 1, solver.penalty_ratio
    smoother = ZSmoother(x_shape[2], dt, dev) if coupled else None
    x_t = randn(x_shape, generator, dt, dev) if solver._on_manifold else None  # x_T ~ N(0, I)
    x = torch.zeros(x_shape, dtype=dt, device=dev)
    u, v = torch.zeros_like(x), torch.zeros_like(x)  # duals of the prior and the coupling blocks
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ab, ab_prev = sched.abar(t), sched.abar(t_prev)
        gamma = solver.gamma(t, n) if solver.x_update == "gradient" else None
        prior_in = x_t if solver._on_manifold else math.sqrt(ab) * (x + u)
        z = from_slices(net.x0(to_slices(prior_in), t), B)  # (1) every slice denoised, one batched call
        target, w = z - u, None
        if coupled:  # (1') prox of λ/2‖D_z w‖² at penalty κ/σ̄_t², evaluated at x + v (z at the first step)
            lam = solver.weight(z)
            w = smoother.prox((z if i == 0 else x) + v, lam * sched.sigma_bar(t) ** 2 / kappa)
            target = (z - u + kappa * (w - v)) / (1 + kappa)
        x, fit = solver.data_step(operator, noise, y, target, gamma, last=t_prev < 0)  # (2) data projection
        if solver._on_manifold:  # (3)–(5) DDiff's implied noise and noising step, from x + u
            eps_tilde = (x_t - math.sqrt(ab) * x) / math.sqrt(1 - ab)
            s = solver.noise_scale(ab, ab_prev)
            xi = randn(x.shape, generator, dt, dev) if t > solver.t0 and s > 0 else 0.0
            x_t = math.sqrt(ab_prev) * (x + u) + math.sqrt(max(1 - ab_prev - s**2, 0.0)) * eps_tilde + s * xi
        info = {"i": i, "t": t, "gamma": gamma, "x": x, "z": z, "primal_residual": per_sample_norm(x - z).flatten()}
        result = solver.returned_point(x, u)  # DDiff's convention (ddiff.solvers.ddiff)
        u = solver.dual_update(u, x, z, sched, t, t_prev)  # (6) duals, rescaled with the penalties
        if coupled:
            info.update(w=w, coupling_residual=per_sample_norm(x - w).flatten(), coupling_weight=lam)
            v = solver.dual_update(v, x, w, sched, t, t_prev)
        through = through_plane_difference(x).flatten(1).square().mean(1).sqrt() if x_shape[2] > 1 else None
        emit({**info, "u": u, "x_t": x_t, "dual_norm": per_sample_norm(u).flatten(), "through_plane_rms": through, **fit})
    return result


class SliceBySlice:
    """The baseline: a 2-D solver on every plane of a volume independently (all planes one batch).

    ``SliceBySlice(DDiff(prior)).solve(y, operator, noise, …)``: ``y`` ``(B, C, Z, …)``;
    ``operator`` a 2-D operator, or a :class:`~operators.volume.SliceWise` one (its 2-D operator is
    used). Each plane is fitted to the noise level on its own. NFE = the 2-D solver's (one batched
    call per step). A list of ``B`` generators gives each plane a child generator of its volume's.
    """

    def __init__(self, solver):
        self.solver = solver
        self.prior = solver.prior

    def solve(self, y, operator, noise, generator=None, callback=None, x_shape=None) -> Result:
        if not isinstance(y, torch.Tensor) or y.ndim < 4:
            raise ValueError(f"y must be a volume measurement (B, C, Z, …), got {tuple(getattr(y, 'shape', ()))}")
        t0 = time.perf_counter()
        B, Z = y.shape[0], y.shape[2]
        op2d = operator.op if isinstance(operator, SliceWise) else operator
        if isinstance(generator, (list, tuple)):
            generator = [_child(g, y.device) for g in generator for _ in range(Z)]  # plane (b, z) ↦ b·Z + z
        shape2d = None if x_shape is None else (B * Z, x_shape[1], *x_shape[3:])
        r = self.solver.solve(to_slices(y), op2d, noise, generator=generator, callback=callback, x_shape=shape2d)
        return Result(x=from_slices(r.x, B), nfe=r.nfe, trace=r.trace, seconds=time.perf_counter() - t0,
                      nfe_with_grad=r.nfe_with_grad)
