"""Per-pixel error bounds ``[x̄ − λ s, x̄ + λ s]`` around the K-seed mean, calibrated by RCPS.

Room: ``ddiff`` — torch and numpy only.

Three per-pixel features (model units, channels pooled, ``(B, H, W)``), from what a run knows:

* ``spread_local`` — the sd over the K seeds pooled over a 5×5 neighbourhood (RMS; 0 for one seed): a
  pixel's own sd from K = 4 seeds is too noisy an estimate (pooling measured on deblurring: 25 → 27 %
  narrower than a constant band, corr(width, |error|) 0.51 → 0.56; docs/audit.md §6);
* ``posterior_sd`` — how weakly the measurements see the pixel: the sd of a Gaussian posterior
  with prior sd ``s₀`` and the data's Fisher information on that pixel alone,
  ``1 / √(diag(Aᴴ W A) + 1/s₀²)``, ``W = 1/σ²`` per entry (exact from a mask, Hutchinson
  ``mean z ⊙ Aᴴ W A z`` over Rademacher probes, box-smoothed, for other linear operators; ``s₀``
  where the operator is blind, ``σ/√d`` where it sees the pixel with weight ``d``);
* ``structure`` — the local standard deviation of x̄ in a 5×5 window (errors gather at edges).

The scale ``s = w₀ + Σ_f w_f · feature_f / m_f`` (``m_f`` the feature's mean on the fitting frames,
weights ``w ≥ 0`` summing to 1) is fitted on one part of the calibration frames — by default as a model
of the error's sd (``balanced``: Gaussian scale likelihood), or for the smallest mean width
``mean(s) · Q_{1−α}(|x − x̄| / s)`` (``narrow``); λ is then chosen on the *other* frames by
:func:`ddiff.audit.rcps.rcps_lambda`. Because ``s`` is fixed before λ is chosen, RCPS's guarantee
holds whatever ``s`` looks like: over frames exchangeable with the calibration frames, the expected
fraction of pixels outside their bounds is ≤ α with probability ≥ 1 − δ.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .rcps import min_calibration_frames, rcps_lambda
from .spread import _diag_ata
from .stats import entry_sd

__all__ = ["FEATURES", "PRIOR_SD", "OBJECTIVES", "bound_features", "ScaleRule", "fit_scale_rule", "calibrate_bounds",
           "apply_bounds"]

FEATURES = ("spread_local", "posterior_sd", "structure")
PRIOR_SD = 0.5  # s₀: the sd of natural images in model units [−1, 1] (the blind pixels' posterior sd)


def _box(t: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, H, W)`` box mean over ``k × k`` (reflect padding; ``k`` odd, clipped to the image)."""
    k = min(k, 2 * ((min(t.shape[-2:]) - 1) // 2) + 1)
    if k <= 1:
        return t
    p = k // 2
    return F.avg_pool2d(F.pad(t[:, None], (p, p, p, p), mode="reflect"), k, stride=1)[:, 0]


@torch.no_grad()
def bound_features(samples: torch.Tensor, operator, noise, y: torch.Tensor | None = None, *,
                   prior_sd: float = PRIOR_SD, probes: int = 32, smooth: int = 9, seed: int = 0) -> torch.Tensor:
    """``(B, 3, H, W)`` float64: the features of :data:`FEATURES` from ``samples`` ``(K, B, C, H, W)``
    (K ≥ 1; the bounds are centred on their mean). ``noise`` sets each entry's sd (at ``A(x̄)``)."""
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5:
        raise ValueError("bound_features: samples must be a (K, B, C, H, W) tensor")
    s64 = samples.double()
    mean = s64.mean(0)
    K, B, C, H, W = samples.shape
    var = s64.var(0, unbiased=True).mean(1) if K > 1 else torch.zeros(B, H, W, dtype=torch.float64)
    spread = _box(var, 5).clamp_min(0).sqrt()  # pooled over 5×5: K seeds give a noisy per-pixel sd
    Ax = operator(mean.to(samples.dtype))
    sd = entry_sd(noise, Ax.abs() if Ax.is_complex() else Ax, y)
    sd = sd.clamp_min(1e-6 * float(sd.max()) + 1e-30)  # a zero-count Poisson entry: finite weight, no NaN
    g = torch.Generator(device="cpu").manual_seed(seed)
    d = _diag_ata(operator, samples[0], probes, g, weight=1.0 / sd**2)
    if d is None:  # nonlinear: no per-pixel information; the constant and the other features carry s
        d = torch.zeros(B, H, W, dtype=torch.float64)
    elif not isinstance(getattr(operator, "mask", None), torch.Tensor):
        d = _box(d.clamp_min(0), smooth)  # Hutchinson is noisy pixel by pixel; the information varies slowly
    post = 1.0 / (d.clamp_min(0) / C + 1.0 / prior_sd**2).sqrt()  # per channel: d was summed over channels
    m = mean.mean(1)
    structure = (_box(m**2, 5) - _box(m, 5) ** 2).clamp_min(0).sqrt()
    return torch.stack([spread, post.to(spread), structure], 1)


@dataclass(frozen=True)
class ScaleRule:
    """``s = w₀ + Σ_f w_f · feature_f / m_f`` (model units), ``weights = (w₀, w_spread_local, w_post, w_struct)``."""

    weights: tuple[float, ...]
    norms: tuple[float, ...]
    features: tuple[str, ...] = FEATURES

    def scale(self, feats) -> np.ndarray | torch.Tensor:
        """``s`` for features ``(..., F, H, W)`` (numpy or torch) → ``(..., H, W)``."""
        s = self.weights[0] + 0 * feats[..., 0, :, :]
        for i, (w, m) in enumerate(zip(self.weights[1:], self.norms)):
            if w > 0:
                s = s + (w / m) * feats[..., i, :, :]
        return s

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ScaleRule":
        return cls(tuple(float(v) for v in d["weights"]), tuple(float(v) for v in d["norms"]),
                   tuple(d.get("features", FEATURES)))


def _width_objective(s: np.ndarray, err: np.ndarray, alpha: float) -> float:
    """``mean(s) · Q_{1−α}(|e| / s)``: the mean width a pooled (1 − α) quantile of the ratios would give."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(s > 0, err / np.where(s > 0, s, 1), np.where(err > 0, np.inf, 0.0))
    q = np.partition(r, int((1 - alpha) * (r.size - 1)))[int((1 - alpha) * (r.size - 1))]
    return float(s.mean() * q) if np.isfinite(q) else np.inf


def _scale_nll(s: np.ndarray, err: np.ndarray, alpha: float) -> float:
    """Gaussian scale-model NLL with the best common factor c (``e ~ N(0, (c s)²)``), up to constants:
    ``½ log mean(e²/s²) + mean log s`` — invariant to scaling ``s``."""
    if (s <= 0).any():
        return np.inf
    return float(0.5 * np.log(np.mean((err / s) ** 2)) + np.mean(np.log(s)))


#: how the scale rule's weights are fitted (docs/audit.md §6 compares them):
#: ``balanced`` — s models the error's sd (Gaussian scale likelihood): misses spread over all kinds of pixels
#: (measured, inpainting at α = 0.1: 9 % of the hole's pixels missed, 5 % elsewhere); ``narrow`` — the
#: smallest mean width at 1 − α coverage, which puts the misses where errors are largest (19 % vs 1.8 %)
OBJECTIVES = {"balanced": _scale_nll, "narrow": _width_objective}


def fit_scale_rule(feats: np.ndarray, err: np.ndarray, alpha: float, max_pixels: int = 200_000,
                   seed: int = 0, objective: str = "balanced") -> ScaleRule:
    """The non-negative weights (simplex grid at step 1/10, then 1/40 around the best) minimising the
    ``objective`` (:data:`OBJECTIVES`) on ``feats`` ``(n, F, H, W)`` and ``err = |x − x̄|`` ``(n, H, W)``;
    a feature that is 0 everywhere (one seed's spread) keeps weight 0."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    score = OBJECTIVES[objective]
    n, nf = feats.shape[:2]
    f = np.moveaxis(np.asarray(feats, np.float64), 1, -1).reshape(-1, nf)
    e = np.asarray(err, np.float64).reshape(-1)
    if e.size > max_pixels:  # a seeded subsample: the objective is a quantile, well estimated from 2·10⁵
        keep = np.random.default_rng(seed).choice(e.size, max_pixels, replace=False)
        f, e = f[keep], e[keep]
    norms = f.mean(0)
    usable = norms > 1e-12
    fn = np.concatenate([np.ones((f.shape[0], 1)), f / np.where(usable, norms, 1.0)], 1)
    live = np.concatenate([[True], usable])

    def simplex(step: int, centre=None, radius=None):
        for c in itertools.product(range(step + 1), repeat=nf):
            if sum(c) > step:
                continue
            w = np.array((step - sum(c),) + c, float) / step
            if (w[~live] > 0).any() or (centre is not None and np.abs(w - centre).max() > radius + 1e-12):
                continue
            yield w

    best = min(simplex(10), key=lambda w: score(fn @ w, e, alpha))
    best = min(simplex(40, best, 0.1), key=lambda w: score(fn @ w, e, alpha))
    return ScaleRule(tuple(float(v) for v in best), tuple(float(v) if u else 1.0 for v, u in zip(norms, usable)))


def calibrate_bounds(feats: np.ndarray, err: np.ndarray, alpha: float, delta: float, bound: str = "wsr",
                     fit_fraction: float = 0.5, rule: ScaleRule | None = None, seed: int = 0,
                     objective: str = "balanced") -> dict:
    """Fit the scale rule on the first ``fit_fraction`` of the frames (or take ``rule``), choose λ by
    RCPS on the rest. ``feats`` ``(n, F, H, W)``, ``err`` ``(n, H, W)`` or ``(n, C, H, W)`` = |truth − x̄|
    (model units, frames in a random order; every channel of a pixel shares its half-width).
    Returns ``{"rule", "lambda", "ucb", "risk", "n_fit", "n_lambda", ...}``."""
    err = np.asarray(err, np.float64)
    if err.ndim == 3:
        err = err[:, None]
    n, C = int(err.shape[0]), int(err.shape[1])
    need = min_calibration_frames(alpha, delta, bound)
    n_fit = 0 if rule is not None else int(round(fit_fraction * n))
    if n - n_fit < need:
        total = need if rule is not None else int(np.ceil(need / (1 - fit_fraction)))
        raise ValueError(f"{n} calibration frames are too few for alpha {alpha:g}, delta {delta:g} ({bound.upper()}): "
                         f"at least {total} are needed ({need} for choosing λ"
                         + ("" if rule is not None else f", after {fit_fraction:.0%} fit the scale rule") + ")")
    if rule is None:  # every channel of a fitting frame is one more set of pixels for the fit
        f = np.repeat(np.asarray(feats[:n_fit], np.float64)[:, None], C, 1).reshape((-1,) + feats.shape[1:])
        rule = fit_scale_rule(f, err[:n_fit].reshape((-1,) + err.shape[2:]), alpha, seed=seed, objective=objective)
    s = np.asarray(rule.scale(np.asarray(feats[n_fit:], np.float64)))[:, None]
    e = err[n_fit:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(s > 0, e / np.where(s > 0, s, 1), np.where(e > 0, np.inf, 0.0))
    lam = rcps_lambda(list(ratios), alpha, delta, bound)
    return {"rule": rule.to_dict(), "lambda": lam["lambda"], "ucb": lam["ucb"], "risk": lam["risk"],
            "n_fit": n_fit, "n_lambda": n - n_fit, "alpha": alpha, "delta": delta, "bound": bound,
            "objective": objective if n_fit else None}


def apply_bounds(mean, feats, rule: ScaleRule, lam: float):
    """``(lower, upper)`` = ``x̄ ∓ λ s`` per channel; ``mean`` (..., C, H, W), ``feats`` (..., F, H, W)."""
    h = lam * rule.scale(feats)
    h = h[..., None, :, :]
    return mean - h, mean + h
