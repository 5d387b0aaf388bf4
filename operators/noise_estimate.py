"""Noise parameters estimated from the measurements themselves (``--noise auto``).

Room: ``operators`` — torch only. Input: frames in the data's units (ADU), ``(N, H, W)``, and an
optional validity mask of the same shape; output: :class:`NoiseEstimate` (values and standard errors).

Gaussian σ (:func:`estimate_gaussian`): a robust MAD (``1.4826 · median|ρ − median ρ|``) of the
high-pass ``ρ = h ⊛ u``, ``h = δ − k`` with ``k`` the 5×5 Savitzky–Golay smoother that keeps
biquadratic scenes, divided by ``‖h‖₂`` (``Var ρ = ‖h‖² σ²`` for white noise). The scene leaks in
only through its third and higher derivatives (Donoho's finest-Haar-detail MAD, which keeps
curvature, read 1–8 % high on the benchmark's scenes); edges move the median little.

Gaussian σ of **k-space** (:func:`estimate_kspace_gaussian`): the image the pipeline reconstructs is
real, so its centred DFT is Hermitian, ``k(−q) = conj k(q)``, and the antisymmetric part
``a(q) = (k(q) − conj k(−q))/2`` of the measured k-space is noise alone — the scene cancels exactly,
at any undersampling, wherever both ``q`` and ``−q`` were measured. With independent noise of sd σ in
each real and imaginary part, ``Re a`` and ``Im a`` have sd ``σ/√2``: ``σ = √2 ·`` their robust MAD.
(An image with a phase — coil sensitivities, B0 — is not real: its estimate reads high, and the
run's χ²_ν says the real-image model does not fit either.) **Sinograms**
(:func:`estimate_sinogram_gaussian`) likewise: a parallel beam measures every line twice when two
views are 180° apart, so their difference is noise alone.

Camera (:func:`estimate_camera`, the photon-transfer relation of the stack itself): at a pixel with
mean ``μ`` (ADU) a camera ``u = o + (k + r n)/g``, ``k ~ P(λ)``, has

    Var u = (μ − o)/g + σ_r²,        κ₃(u) = (μ − o)/g²,        σ_r = r/g (ADU).

The same high-pass ``ρ`` (scene removed up to its curvature) keeps ``Var ρ = ‖h‖² Var u`` and
``κ₃(ρ) = Σh³ κ₃(u)`` (independent pixels); pixels are binned by the mean of the ring between
their 5×5 and 7×7 neighbourhoods (pixels ``ρ`` does not use, so binning does not select on the
noise) and outliers (``|ρ − median| > 5`` robust σ in the bin: edges, hot spots) are left out. A
weighted line through the bins' variances gives the slope ``1/g`` and intercept ``σ_r² − o/g``; the
bins' third cumulants then give the black level ``o = μ − g² κ₃`` (weights ∝ ``n/Var³``), and
``σ_r² = intercept + o/g``. Integer-valued data carry the ADC's quantisation variance 1/12 ADU²,
subtracted from ``σ_r²``. Parameters the user knows are held fixed (``gain``, ``offset``,
``read_noise``), and the rest estimated given them. Standard errors: delete-one-group jackknife
over 8 groups of image strips. The black level rests on the third cumulant and is the least
certain parameter: scenes with dark regions pin it well, bright flat scenes do not (give
``--offset`` then; the error of each parameter is in ``benchmarks/noise_estimation.py``'s table).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["NoiseEstimate", "estimate_gaussian", "estimate_kspace_gaussian", "estimate_sinogram_gaussian",
           "estimate_camera", "estimate_noise", "fluorescence_scene", "simulate_camera"]

_GROUPS = 8  # jackknife groups (strips of every frame)
_BINS = 24  # intensity bins of the photon-transfer curve


@dataclass
class NoiseEstimate:
    """Estimated noise model. ``kind``: ``gaussian`` | ``poisson`` | ``poisson_gaussian``; values in
    the data's units (σ, offset: ADU; gain: e⁻/ADU; read noise: e⁻); ``*_se``: standard errors (0 for
    a parameter the user fixed); ``fixed``: the parameters given, not estimated."""

    kind: str
    sigma: float | None = None
    sigma_se: float | None = None
    gain: float | None = None
    gain_se: float | None = None
    offset: float | None = None
    offset_se: float | None = None
    read_noise: float | None = None
    read_noise_se: float | None = None
    n_pixels: int = 0
    fixed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self, unit: str = "ADU") -> str:
        """One line, values ± standard errors; ``unit``: the data's unit (a Gaussian σ's)."""
        def pm(v, se, unit):
            return f"{v:.4g} {unit}" + ("" if not se else f" ± {se:.2g}")
        if self.kind == "gaussian":
            return f"Gaussian σ = {pm(self.sigma, self.sigma_se, unit)}"
        s = f"camera gain = {pm(self.gain, self.gain_se, 'e⁻/ADU')}, offset = {pm(self.offset, self.offset_se, 'ADU')}"
        if self.kind == "poisson_gaussian":
            s += f", read noise = {pm(self.read_noise, self.read_noise_se, 'e⁻')}"
        return s


def _prepare(frames, valid):
    y = torch.as_tensor(frames).to(torch.float64)
    if y.ndim == 2:
        y = y[None]
    if y.ndim != 3:
        raise ValueError(f"noise estimation: frames must be (N, H, W), got {tuple(y.shape)}")
    v = torch.isfinite(y) if valid is None else (torch.as_tensor(valid).to(torch.bool).reshape(y.shape) & torch.isfinite(y))
    return torch.where(v, y, torch.zeros_like(y)), v


def _strip_groups(shape) -> torch.Tensor:
    """Group index (N, H, W): horizontal strips of every frame, interleaved across frames."""
    N, H, W = shape
    strip = (torch.arange(H) * _GROUPS // max(H, 1))[None, :, None]
    return ((strip + torch.arange(N)[:, None, None]) % _GROUPS).expand(N, H, W)


def _jackknife(values: torch.Tensor) -> float:
    """Standard error from delete-one-group estimates ``values`` (G,)."""
    v = values[torch.isfinite(values)]
    G = v.numel()
    if G < 2:
        return float("nan")
    return float(math.sqrt((G - 1) / G * float(((v - v.mean()) ** 2).sum())))


def _robust_sd(values: torch.Tensor, groups: torch.Tensor, norm: float = 1.0) -> tuple[float, float]:
    """``(σ, standard error)`` of values with sd ``norm · σ``: ``1.4826 · MAD / norm``, the error by the
    delete-one-group jackknife over ``groups`` (values ``0 … _GROUPS − 1``; an empty group is skipped)."""
    def sd(t):
        return 1.4826 * float((t - t.median()).abs().median()) / norm

    loo = torch.tensor([sd(values[groups != g]) if bool((groups != g).any()) else math.nan for g in range(_GROUPS)],
                       dtype=torch.float64)
    return sd(values), _jackknife(loo)


def estimate_gaussian(frames, valid=None) -> NoiseEstimate:
    """Gaussian σ (data units): robust MAD of the 5×5 Savitzky–Golay high-pass (module docstring)."""
    y, v = _prepare(frames, valid)
    vf = v.to(y.dtype)
    full = _box(vf, 5) > 24.5  # the high-pass window is valid (and inside the frame)
    rho = F.conv2d((y * vf)[:, None], _H[None, None], padding=2)[:, 0]
    r, grp = rho[full], _strip_groups(y.shape)[full]
    if r.numel() < 256:
        raise ValueError("noise estimation: fewer than 256 valid pixels with a valid 5x5 neighbourhood; give noise.sigma")
    sigma, se = _robust_sd(r, grp, math.sqrt(_H2))
    return NoiseEstimate(kind="gaussian", sigma=sigma, sigma_se=se, n_pixels=int(r.numel()))


def _from_null_pairs(diff: torch.Tensor, what: str, note: str) -> NoiseEstimate:
    """σ from values ``diff`` that are pure noise of sd σ each (differences of measurements the scene
    cancels from): :func:`_robust_sd`, the jackknife groups dealt out in turn."""
    if diff.numel() < 256:
        raise ValueError(f"{what} noise estimation: {diff.numel()} noise-only values, need 256; give noise.sigma "
                         "(--sigma S)")
    sigma, se = _robust_sd(diff, torch.arange(diff.numel()) % _GROUPS)
    return NoiseEstimate(kind="gaussian", sigma=sigma, sigma_se=se, n_pixels=int(diff.numel()), notes=[note])


def estimate_kspace_gaussian(kspace, measured=None) -> NoiseEstimate:
    """Gaussian σ per real/imaginary part (the k-space's units) from the Hermitian-antisymmetric part of
    ``kspace`` ``(N, H, W)`` complex, DC at ``(H//2, W//2)`` (centred DFT); ``measured``: bool ``(H, W)`` or
    ``(N, H, W)`` (default: the non-zero entries). Uses every pair ``q ≠ −q`` with both ends measured."""
    k = torch.as_tensor(kspace)
    if not k.is_complex() or k.ndim not in (2, 3):
        raise ValueError(f"k-space noise estimation: need complex (N, H, W) k-space, got {k.dtype} {tuple(k.shape)}")
    k = (k[None] if k.ndim == 2 else k).to(torch.complex128)
    N, H, W = k.shape
    m = (k != 0) if measured is None else torch.as_tensor(measured).to(torch.bool).expand(N, H, W)
    m = m & torch.isfinite(k.real) & torch.isfinite(k.imag)
    # partner of index i about the DC index c = n//2 is (2c - i) mod n (the centred grid's -f)
    pi, pj = (2 * (H // 2) - torch.arange(H)) % H, (2 * (W // 2) - torch.arange(W)) % W
    kp, mp = k[:, pi][:, :, pj], m[:, pi][:, :, pj]
    idx = torch.arange(H * W).view(H, W)
    first = idx < idx[pi][:, pj]  # each pair once; self-paired entries (DC, Nyquist) drop out
    a = ((k - kp.conj()) / math.sqrt(2))[m & mp & first]  # Re and Im: sd σ each
    return _from_null_pairs(torch.cat([a.real, a.imag]), "k-space",
                            "k-space: Hermitian-antisymmetric part (exact for a real-valued image)")


def estimate_sinogram_gaussian(sinogram, angles_deg, tol_deg: float = 1e-3) -> NoiseEstimate:
    """Gaussian σ (the sinogram's units) from opposite views: a parallel beam sees the same line
    integrals at ``θ`` and ``θ + 180°`` with the detector mirrored about its centre bin ``D//2``
    (``p(θ + 180°, t) = p(θ, −t)``), so ``(p(θ, t) − p(θ + 180°, −t))/√2`` is noise alone, sd σ.
    ``sinogram`` ``(N, A, D)``; ``angles_deg`` ``(A,)``. A scan over ``[0°, 180°)`` has no opposite
    views (one line says so); one that includes 180° (or covers 360°) has them."""
    p = torch.as_tensor(sinogram).to(torch.float64)
    p = p[None] if p.ndim == 2 else p
    th = torch.as_tensor(angles_deg, dtype=torch.float64).ravel()
    if p.ndim != 3 or p.shape[1] != th.numel():
        raise ValueError(f"sinogram noise estimation: need (N, {th.numel()} angles, D), got {tuple(p.shape)}")
    off = torch.remainder(th[None, :] - th[:, None] - 180.0, 360.0)
    i, j = torch.nonzero((torch.minimum(off, 360.0 - off) < tol_deg) & (torch.arange(th.numel())[:, None]
                                                                        < torch.arange(th.numel())[None, :]),
                         as_tuple=True)
    if i.numel() == 0:
        raise ValueError(f"sinogram noise estimation: no two views are 180° apart (angles {float(th.min()):g}° to "
                         f"{float(th.max()):g}°), so σ cannot be told from the scene; give noise.sigma (--sigma S)")
    D = p.shape[2]
    t = torch.arange(D)
    mirror = 2 * (D // 2) - t
    ok = (mirror >= 0) & (mirror < D)
    d = (p[:, i][:, :, t[ok]] - p[:, j][:, :, mirror[ok]]) / math.sqrt(2)
    return _from_null_pairs(d[torch.isfinite(d)], "sinogram",
                            f"sinogram: {i.numel()} pairs of opposite views (exact for a parallel beam "
                            "centred on the detector)")


def _box(t: torch.Tensor, k: int) -> torch.Tensor:
    return F.conv2d(t[:, None], torch.ones(1, 1, k, k, dtype=t.dtype), padding=k // 2)[:, 0]


def _highpass_kernel() -> torch.Tensor:
    """``h = δ − k``: ``k`` the 5×5 Savitzky–Golay smoother that keeps biquadratic scenes (so ``h``
    removes a scene up to its curvature and leaves noise)."""
    k1 = torch.tensor([-3.0, 12.0, 17.0, 12.0, -3.0], dtype=torch.float64) / 35
    h = -torch.outer(k1, k1)
    h[2, 2] += 1
    return h


_H = _highpass_kernel()
_H2, _H3 = float((_H**2).sum()), float((_H**3).sum())  # Var ρ = Σh² Var u;  κ₃(ρ) = Σh³ κ₃(u)


def _bin_sums(y, v):
    """Per (group, bin) sums ``n, Σu, Σρ, Σρ², Σρ³`` of the photon-transfer statistics ``(G, B)``."""
    vf = v.to(y.dtype)
    full = _box(vf, 7) > 48.5  # the whole 7×7 neighbourhood is valid (and inside the frame)
    rho = F.conv2d((y * vf)[:, None], _H[None, None], padding=2)[:, 0]
    ring = (_box(y * vf, 7) - _box(y * vf, 5)) / 24  # the local level, from pixels ρ does not use
    grp = _strip_groups(y.shape)
    u, r, m, g = (t[full] for t in (y, rho, ring, grp))
    if u.numel() < 1000:
        raise ValueError("noise estimation: fewer than 1000 valid pixels with a valid 7x7 neighbourhood")
    qs = torch.linspace(0, 1, _BINS + 1, dtype=torch.float64)[1:-1]
    sub = m[:: max(1, m.numel() // 2_000_000)]
    edges = torch.quantile(sub, qs)
    b = torch.bucketize(m, edges)
    keep = torch.ones_like(u, dtype=torch.bool)
    for k in range(_BINS):  # robust noise level per bin -> drop outliers (edges, hot spots)
        sel = b == k
        if int(sel.sum()) < 20:
            keep &= ~sel
            continue
        rk = r[sel]
        sd = max(1.4826 * float((rk - rk.median()).abs().median()), 1e-12)
        keep &= ~sel | ((r - rk.median()).abs() <= 5 * sd)
    idx = (g * _BINS + b)[keep]
    out = []
    for t in (torch.ones_like(u), u, r, r**2, r**3):
        out.append(torch.zeros(_GROUPS * _BINS, dtype=torch.float64).index_add_(0, idx, t[keep]).reshape(_GROUPS, _BINS))
    integer = bool(torch.all(u == torch.round(u)))
    return out, int(keep.sum()), integer


def _moments(n, su, sr, sr2, sr3):
    """Per-bin mean μ, variance and third cumulant of u (from ρ) for summed groups."""
    n_ = n.clamp_min(1)
    mu, m1 = su / n_, sr / n_
    m2 = sr2 / n_ - m1**2
    m3 = sr3 / n_ - 3 * m1 * sr2 / n_ + 2 * m1**3
    return mu, m2 / _H2, m3 / _H3


def _fit(sums, known: dict, quant: float) -> dict:
    """Camera parameters from the bin sums ``(B,)`` each (see module docstring)."""
    n, su, sr, sr2, sr3 = sums
    ok = n >= 20
    mu, var, k3 = (t[ok] for t in _moments(n, su, sr, sr2, sr3))
    n = n[ok]
    w = n / (2 * var.clamp_min(1e-30) ** 2)  # 1 / Var(sample variance)
    g = known.get("gain")
    if g is None:  # weighted least squares var = α μ + β
        W, Wm, Wv = w.sum(), (w * mu).sum(), (w * var).sum()
        Wmm, Wmv = (w * mu * mu).sum(), (w * mu * var).sum()
        alpha = float((W * Wmv - Wm * Wv) / (W * Wmm - Wm**2))
        beta = float((Wv - alpha * Wm) / W)
        g = 1.0 / alpha if alpha > 0 else float("nan")
    else:
        alpha = 1.0 / g
        beta = float((w * (var - alpha * mu)).sum() / w.sum())
    o = known.get("offset")
    r = known.get("read_noise")
    if o is None and r is not None:  # σ_r² = β + o/g  ->  o = g (σ_r² − β)
        o = g * ((r / g) ** 2 + quant - beta)
    if o is None:  # third cumulant: κ₃ = (μ − o)/g²
        wk = n / var.clamp_min(1e-30) ** 3
        o = float((wk * (mu - g * g * k3)).sum() / wk.sum())
    if r is None:
        s2 = beta + o / g - quant
        r = g * math.sqrt(s2) if s2 > 0 else 0.0
    return {"gain": g, "offset": o, "read_noise": r, "alpha": alpha}


def estimate_camera(frames, valid=None, *, gain=None, offset=None, read_noise=None, poisson_only=False,
                    _sums=None) -> NoiseEstimate:
    """Camera gain (e⁻/ADU), black level (ADU) and read noise (e⁻) from the stack (module docstring);
    any of them given is held fixed. ``poisson_only``: no read noise (then the offset comes from the
    intercept, ``β = −o/g``)."""
    (n, su, sr, sr2, sr3), npix, integer = _sums or _bin_sums(*_prepare(frames, valid))
    quant = 1 / 12 if integer else 0.0
    known = {k: float(x) for k, x in (("gain", gain), ("offset", offset), ("read_noise", read_noise)) if x is not None}
    if poisson_only:
        known["read_noise"] = 0.0
        quant = 0.0 if "offset" in known else quant
    def fit(sel):
        return _fit(tuple(t[sel].sum(0) for t in (n, su, sr, sr2, sr3)), known, quant)
    every = torch.ones(_GROUPS, dtype=torch.bool)
    est = fit(every)
    loo = [fit(torch.arange(_GROUPS) != k) for k in range(_GROUPS)]
    se = {k: _jackknife(torch.tensor([d[k] for d in loo], dtype=torch.float64)) for k in ("gain", "offset", "read_noise")}
    notes = []
    if not (est["alpha"] > 0):
        raise ValueError("noise estimation: the variance does not grow with the signal (no shot noise seen); "
                         "the data do not look like camera counts — use Gaussian noise (noise kind 'gaussian')")
    if integer and "read_noise" not in known:
        notes.append("integer data: the ADC quantisation variance (1/12 ADU²) was subtracted from the read noise")
    if not poisson_only and est["read_noise"] <= 0:
        notes.append("read noise below what the data resolve; set to 0.1 e⁻")
        est["read_noise"] = 0.1
    return NoiseEstimate(kind="poisson" if poisson_only else "poisson_gaussian", gain=est["gain"],
                         gain_se=0.0 if "gain" in known else se["gain"], offset=est["offset"],
                         offset_se=0.0 if "offset" in known else se["offset"], read_noise=est["read_noise"],
                         read_noise_se=0.0 if "read_noise" in known else se["read_noise"], n_pixels=npix,
                         fixed=sorted(known), notes=notes)


def estimate_noise(frames, valid=None, kind: str = "auto", **known) -> NoiseEstimate:
    """``kind``: ``gaussian`` (σ), ``poisson`` / ``poisson_gaussian`` (camera), or ``auto``: a camera
    when the stack's variance grows with its signal (the slope of the photon-transfer line is
    > 5 standard errors from 0 and changes the variance by > 5 % over the central 80 % of the
    intensities), else Gaussian. ``known``: ``sigma`` / ``gain`` / ``offset`` / ``read_noise`` given by the user."""
    known = {k: v for k, v in known.items() if v is not None}
    if kind == "gaussian":
        return estimate_gaussian(frames, valid)
    if kind in ("poisson", "poisson_gaussian"):
        return estimate_camera(frames, valid, poisson_only=kind == "poisson",
                               **{k: known.get(k) for k in ("gain", "offset", "read_noise")})
    if kind != "auto":
        raise ValueError(f"noise kind {kind!r}: use auto, gaussian, poisson or poisson_gaussian")
    sums = _bin_sums(*_prepare(frames, valid))
    n, su, sr, sr2, sr3 = sums[0]
    tot = [t.sum(0) for t in (n, su, sr, sr2, sr3)]
    ok = tot[0] >= 20
    mu, var, _ = (t[ok] for t in _moments(*tot))
    slopes = []
    for k in range(_GROUPS):
        sel = torch.arange(_GROUPS) != k
        s = [t[sel].sum(0)[ok] for t in (n, su, sr, sr2, sr3)]
        m_k, v_k, _ = _moments(*s)
        slopes.append(float(torch.linalg.lstsq(torch.stack([m_k, torch.ones_like(m_k)], 1), v_k[:, None]).solution[0]))
    slope = float(torch.linalg.lstsq(torch.stack([mu, torch.ones_like(mu)], 1), var[:, None]).solution[0])
    se = _jackknife(torch.tensor(slopes, dtype=torch.float64))
    lo, hi = float(mu[len(mu) // 10]), float(mu[-1 - len(mu) // 10])
    if slope > 5 * se and slope * (hi - lo) > 0.05 * float(var.min()):
        return estimate_camera(frames, valid, _sums=sums, **{k: known.get(k) for k in ("gain", "offset", "read_noise")})
    return estimate_gaussian(frames, valid)


def fluorescence_scene(n: int, size: int, generator: torch.Generator, background: float = 10.0,
                       peak: float = 1000.0, blobs: int = 40, psf_sigma: float = 2.0) -> torch.Tensor:
    """``(n, size, size)`` expected photo-electrons of a widefield-like scene: a background plus
    Gaussian blobs (cells, beads) of random size and brightness, blurred by a Gaussian PSF (pixels).
    Test and benchmark data for the estimators (``simulate_camera``)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    out = torch.full((n, size, size), float(background), dtype=torch.float64)
    for i in range(n):
        c = torch.rand(blobs, 2, generator=generator, dtype=torch.float64) * size
        s = 1.5 + 6 * torch.rand(blobs, generator=generator, dtype=torch.float64)
        s = torch.sqrt(s**2 + psf_sigma**2)  # blob ⊛ PSF: variances add
        amp = peak * (0.1 + 0.9 * torch.rand(blobs, generator=generator, dtype=torch.float64))
        d2 = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
        out[i] += (amp[:, None, None] * torch.exp(-d2 / (2 * s[:, None, None] ** 2))).sum(0)
    return out


def simulate_camera(expected_electrons: torch.Tensor, gain: float, offset: float, read_noise: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Integer ADU frames of a camera (``u = round(o + (k + r n)/g)``, ``k ~ P(λ)``; float64)."""
    from .noise_units import CameraNoise

    cam = CameraNoise(gain, offset, read_noise, 1.0, 0.0)  # model space = ADU
    return torch.round(cam.sample(offset + expected_electrons / gain, generator))
