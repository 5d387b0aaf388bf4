"""Risk-controlling prediction sets (RCPS): upper confidence bounds on a mean risk and the
calibrated factor λ with a finite-sample guarantee.

Room: ``ddiff`` — numpy and the standard library only (no scipy: the binomial tail is summed here).

Setting (Angelopoulos, Bates, Candès, Jordan, Lei, "Distribution-free, risk-controlling prediction
sets", JACM 2021; for images Angelopoulos et al., ICML 2022): calibration frames ``i = 1..n`` give
per-frame losses ``Lᵢ(λ) ∈ [0, 1]`` — here the fraction of a frame's pixels outside their bounds
``[x̄ − λ s, x̄ + λ s]`` — non-increasing in λ. With ``R̂(λ) = mean Lᵢ(λ)`` and an upper confidence
bound ``R̂⁺(λ)`` valid at level δ, the factor

    λ̂ = inf{ λ : R̂⁺(λ') < α for every λ' ≥ λ }                         (RCPS, Thm. 2.1 / eq. 6)

satisfies ``P( E[L(λ̂)] ≤ α ) ≥ 1 − δ`` over the draw of the calibration set, for a new frame
exchangeable with the calibration frames. Two bounds, both valid for any ``[0, 1]`` losses:

* Hoeffding–Bentkus (``"hb"``, RCPS eq. 11): ``p(α) = min( exp(−n h₁(R̂ ∧ α, α)),
  e · P(Binom(n, α) ≤ ⌈n R̂⌉) )`` with ``h₁(a, b) = a log(a/b) + (1−a) log((1−a)/(1−b))``; the
  UCB is ``sup{R : p(R) ≥ δ}``. Blind to the losses' variance: costly when each frame's loss is a
  pixel fraction with a small spread between frames.
* Waudby-Smith–Ramdas betting (``"wsr"``, RCPS Prop. 5, WSR 2020 Thm. 3, "hedged" capital with the
  predictable ``ν_i = min(1, √(2 log(1/δ) / (n σ̂²_{i−1})))``): ``R̂⁺ = inf{R : max_i Π_{j≤i}
  (1 − ν_j (L_j − R)) ≥ 1/δ}`` by Ville's inequality. Adapts to the variance; the default.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["BOUNDS", "binom_cdf", "certified", "hb_pvalue", "hb_ucb", "wsr_ucb", "ucb", "min_calibration_frames", "rcps_lambda",
           "miscoverage_losses"]

BOUNDS = ("wsr", "hb")


def binom_cdf(k: int, n: int, p: float) -> float:
    """``P(Binom(n, p) ≤ k)``, summed in log space (exact to float64 rounding)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(0, k + 1, dtype=np.float64)
    lg = np.vectorize(math.lgamma)
    logt = lg(n + 1.0) - lg(i + 1.0) - lg(n - i + 1.0) + i * math.log(p) + (n - i) * math.log1p(-p)
    m = logt.max()
    return float(min(1.0, math.exp(m) * np.exp(logt - m).sum()))


def _h1(a: float, b: float) -> float:
    """Bernoulli KL divergence ``h₁(a, b)`` (0 log 0 = 0)."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hb_pvalue(rhat: float, n: int, alpha: float) -> float:
    """Hoeffding–Bentkus p-value of ``H₀: E[L] > α`` from the mean ``rhat`` of ``n`` losses in [0, 1]."""
    hoeffding = math.exp(-n * _h1(min(rhat, alpha), alpha))
    bentkus = math.e * binom_cdf(math.ceil(n * rhat - 1e-12), n, alpha)
    return min(1.0, hoeffding, bentkus)


def hb_ucb(rhat: float, n: int, delta: float) -> float:
    """``sup{R : p_HB(rhat; R) ≥ δ}`` by bisection (the p-value falls as R grows past ``rhat``)."""
    if hb_pvalue(rhat, n, 1.0 - 1e-12) >= delta:
        return 1.0
    lo, hi = rhat, 1.0 - 1e-12
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if hb_pvalue(rhat, n, mid) >= delta else (lo, mid)
    return hi


def _wsr_nu(x: np.ndarray, delta: float) -> np.ndarray:
    """The predictable bets ``ν_i`` of WSR's hedged capital, for losses ``x`` ``(n, ...)`` (axis 0: frames)."""
    n = x.shape[0]
    i = np.arange(1, n + 1, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
    mu_hat = (0.5 + np.cumsum(x, 0)) / (1.0 + i)  # the running mean, shrunk to 1/2
    s2 = (0.25 + np.cumsum((x - mu_hat) ** 2, 0)) / (1.0 + i)
    s2 = np.concatenate([np.full((1,) + x.shape[1:], 0.25), s2[:-1]], 0)  # predictable: step i uses i − 1
    return np.minimum(1.0, np.sqrt(2.0 * math.log(1.0 / delta) / (n * s2)))


def _wsr_log_capital(x: np.ndarray, nu: np.ndarray, r) -> np.ndarray:
    """``max_i log Π_{j≤i} (1 − ν_j (x_j − r))`` over axis 0."""
    return np.max(np.cumsum(np.log(np.maximum(1.0 - nu * (x - r), 1e-300)), 0), 0)


def wsr_ucb(losses: np.ndarray, delta: float) -> float:
    """Waudby-Smith–Ramdas upper confidence bound on the mean of ``losses`` (in their given order)."""
    x = np.clip(np.asarray(losses, dtype=np.float64), 0.0, 1.0)
    nu, target = _wsr_nu(x, delta), math.log(1.0 / delta)
    if _wsr_log_capital(x, nu, 1.0) < target:
        return 1.0
    if _wsr_log_capital(x, nu, 0.0) >= target:
        return 0.0
    lo, hi = 0.0, 1.0  # the capital grows with r: the bound is where it first reaches 1/δ
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if _wsr_log_capital(x, nu, mid) >= target else (mid, hi)
    return hi


def certified(L: np.ndarray, alpha: float, delta: float, bound: str = "wsr") -> np.ndarray:
    """``UCB(L[:, g]) < α`` for every column g of losses ``L`` ``(n, G)`` — without computing the UCBs:
    WSR: the capital at ``R = α`` reaches ``1/δ``; HB: ``p_HB(R̂; α) < δ`` (both monotone in R)."""
    L = np.clip(np.asarray(L, dtype=np.float64), 0.0, 1.0)
    if bound == "wsr":
        return _wsr_log_capital(L, _wsr_nu(L, delta), alpha) >= math.log(1.0 / delta)
    if bound == "hb":
        n = L.shape[0]
        return np.array([hb_pvalue(float(r), n, alpha) < delta for r in L.mean(0)])
    raise ValueError(f"bound {bound!r}: choose one of {', '.join(BOUNDS)}")


def ucb(losses: np.ndarray, delta: float, bound: str = "wsr") -> float:
    """The chosen upper confidence bound on the mean of ``losses`` ∈ [0, 1] at level δ."""
    losses = np.asarray(losses, dtype=np.float64)
    if bound == "hb":
        return hb_ucb(float(losses.mean()), losses.size, delta)
    if bound == "wsr":
        return wsr_ucb(losses, delta)
    raise ValueError(f"bound {bound!r}: choose one of {', '.join(BOUNDS)}")


def min_calibration_frames(alpha: float, delta: float, bound: str = "wsr") -> int:
    """The fewest frames for which any λ can be certified: even with every loss 0 the UCB must be < α.

    HB: ``(1 − α)ⁿ < δ``, i.e. ``n > log δ / log(1 − α)`` (22 at α = δ = 0.1, 45 at α = 0.05). WSR:
    found by search (slightly more). A usable λ needs more: losses near α/2 need several times this.
    """
    if not (0 < alpha < 1 and 0 < delta < 1):
        raise ValueError(f"alpha {alpha} and delta {delta} must both lie in (0, 1)")
    n = 1
    while ucb(np.zeros(n), delta, bound) >= alpha:
        n = n * 2 if n < 4096 else n + 4096
        if n > 1 << 20:
            raise ValueError(f"alpha {alpha}, delta {delta}: no calibration set size below 2^20 frames suffices")
    lo, hi = n // 2, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ucb(np.zeros(mid), delta, bound) < alpha else (mid, hi)
    return hi


def miscoverage_losses(ratios: list[np.ndarray], lambdas: np.ndarray) -> np.ndarray:
    """``L[i, g]`` = fraction of frame i's pixels with ``|x − x̄| / s > λ_g`` (``ratios[i]`` any shape)."""
    out = np.empty((len(ratios), len(lambdas)))
    for i, r in enumerate(ratios):
        srt = np.sort(np.asarray(r, dtype=np.float64).ravel())
        out[i] = 1.0 - np.searchsorted(srt, lambdas, side="right") / srt.size
    return out


def rcps_lambda(ratios: list[np.ndarray], alpha: float, delta: float, bound: str = "wsr",
                grid: int = 2000) -> dict:
    """RCPS factor λ̂ from per-frame ratios ``|x − x̄| / s`` (one array per calibration frame).

    Scans a geometric grid of λ from the largest ratio (every pixel covered) down, and stops at the
    first λ whose UCB reaches α; returns ``{"lambda", "ucb", "risk", "n", "bound"}`` (risk = the
    calibration frames' mean miscoverage at λ̂). Raises ``ValueError`` when even covering every
    calibration pixel cannot be certified (too few frames; :func:`min_calibration_frames`).
    """
    n = len(ratios)
    need = min_calibration_frames(alpha, delta, bound)
    if n < need:
        raise ValueError(f"{n} calibration frames cannot certify miscoverage ≤ {alpha:g} at δ = {delta:g} "
                         f"({bound.upper()}); at least {need} are needed")
    finite = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in ratios])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    top = float(finite.max()) * (1 + 1e-9) if finite.size else 1.0
    lams = top * np.geomspace(1.0, 1e-6, grid)
    L = miscoverage_losses(ratios, lams)
    ok = certified(L, alpha, delta, bound)
    g = int(np.argmin(ok)) if not ok.all() else grid  # the first λ (from the top) that is not certified
    if g == 0:
        raise ValueError(f"{n} calibration frames: even bounds covering every calibration pixel give a risk bound "
                         f"≥ {alpha:g} (some pixels have zero width and nonzero error?); add frames or raise alpha")
    return {"lambda": float(lams[g - 1]), "ucb": ucb(L[:, g - 1], delta, bound), "risk": float(L[:, g - 1].mean()),
            "n": n, "bound": bound}
