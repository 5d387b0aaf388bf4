"""An independent reference for DDiff's data step: the nearest point of a discrepancy set from the
dense matrix of the operator (SVD) and a root find on the Tikhonov multiplier (scipy, float64).
It shares no code with ``ddiff.solvers.projection`` (hybrid LSQR)."""
import numpy as np
import torch
from scipy.optimize import brentq

from ddiff.priors.exact import operator_matrix


def real_flat(t: torch.Tensor) -> np.ndarray:
    """One sample as a real vector (complex entries as [real parts, imaginary parts], like operator_matrix)."""
    t = t.detach().flatten()
    t = t.to(torch.complex128) if t.is_complex() else t.double()
    return torch.cat([t.real, t.imag]).numpy() if t.is_complex() else t.numpy()


def observed_rows(A, shape) -> np.ndarray:
    """The real rows of ``A``'s dense matrix that belong to an observed entry: a non-zero row, or
    for complex data an entry whose real or imaginary row is non-zero (a complex measurement counts
    twice, e.g. the imaginary part of a real image's DC coefficient, always 0, still holds noise)."""
    M = operator_matrix(A, shape).numpy()
    nz = np.abs(M).sum(1) > 0
    z = torch.zeros((1, *shape), dtype=torch.float64)
    if A(z).is_complex():
        half = nz.size // 2
        nz = np.tile(nz[:half] | nz[half:], 2)
    return nz


def nearest_in_discrepancy_set(A, y: torch.Tensor, v: torch.Tensor, sigma: float, tau: float = 1.0) -> torch.Tensor:
    """``argmin ‖x − v‖ s.t. Σ_observed (y − A x)² ≤ τ m σ²`` per sample (dense, float64); the
    observed entries are the non-zero rows of ``A``'s matrix, ``m`` their number."""
    rows = observed_rows(A, tuple(v.shape[1:]))
    M = operator_matrix(A, tuple(v.shape[1:])).numpy()[rows]
    eps = np.full(v.shape[0], tau * rows.sum() * sigma**2)
    U, s, Vt = np.linalg.svd(M, full_matrices=True)
    k = int((s > 1e-12 * s[0]).sum())
    out = []
    for b in range(v.shape[0]):
        r0 = real_flat(y[b])[rows] - M @ real_flat(v[b])
        vb = real_flat(v[b])
        if r0 @ r0 <= eps[b]:
            out.append(vb)
            continue
        c = U.T @ r0
        def excess(L, c=c, e=eps[b]):
            mu = np.exp(L)
            return ((c[:k] * mu / (s[:k] ** 2 + mu)) ** 2).sum() + (c[k:] ** 2).sum() - e
        mu = np.exp(brentq(excess, -80, 80, xtol=1e-15, rtol=1e-15))
        out.append(vb + Vt[:k].T @ (s[:k] / (s[:k] ** 2 + mu) * c[:k]))
    return torch.from_numpy(np.stack(out)).reshape(v.shape).to(v.dtype)
