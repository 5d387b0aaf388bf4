"""Parallel-beam CT: the discrete Radon transform and its exact adjoint (back-projection).

Room: ``operators`` — torch and numpy.

Ray-driven model: for angle ``θ`` and detector offset ``t`` (pixels from the centre), the line
integral is a Riemann sum with unit step along the ray,

    p(θ, t) = Σ_s f̃( c + t cosθ + s sinθ ,  c − t sinθ + s cosθ )   (column, row),

``f̃`` the bilinear interpolant of the image (zero outside), ``c = N // 2``, ``t = j − T // 2`` for
detector bin ``j``, ``s`` over ``ceil(N√2)`` unit-spaced samples centred on the ray midpoint
(covers the whole square). Orientation and centre follow ``skimage.transform.radon(image,
theta)`` (its column ``[:, i]`` is our row ``[..., i, :]``). ``A`` is ``grid_sample`` (bilinear, zero padding); ``Aᵀ`` is its exact
transpose, obtained as the vector–Jacobian product of the linear map.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import ForwardModel, check_image, register

__all__ = ["CTParallelBeam"]


@register("ct_parallel_beam")
class CTParallelBeam(ForwardModel):
    """Parallel-beam projections of square images: ``(B, C, N, N) → (B, C, n_angles, n_detectors)``.

    ``angles``: an int ``n`` (``n`` angles evenly spaced over ``[0°, 180°)``, ``θ_i = 180 i/n``;
    default 60 — a sparse-view scan) or an explicit sequence of angles in degrees.
    ``n_detectors``: detector bins of 1 pixel (default ``N``, as ``skimage``'s ``circle=True``;
    use ``ceil(N√2)`` to see the corners too). Linear; ``adjoint`` = back-projection (the exact
    transpose of the discrete forward). Global: ``halo = None``.
    """

    linear = True
    halo = None

    def __init__(self, angles=60, n_detectors: int | None = None):
        super().__init__()
        if isinstance(angles, (int, np.integer)):
            if angles < 1:
                raise ValueError(f"ct_parallel_beam: need at least one angle, got {angles}")
            theta = np.arange(int(angles)) * 180.0 / int(angles)
        else:
            theta = np.asarray(angles, dtype=np.float64).ravel()
            if theta.size == 0 or not np.isfinite(theta).all():
                raise ValueError("ct_parallel_beam: angles must be a count or a non-empty finite sequence of degrees")
        self.register_buffer("theta_deg", torch.as_tensor(theta, dtype=torch.float64))
        self.n_detectors = None if n_detectors is None else int(n_detectors)
        self._grid_cache: dict = {}

    def _grid(self, n: int, dtype, device) -> torch.Tensor:
        """Sampling grid ``(1, A·S, T, 2)`` in ``grid_sample``'s normalised (x, y), align_corners=True."""
        key = (n, dtype, device)
        if key not in self._grid_cache:
            n_det = self.n_detectors or n
            n_s = int(math.ceil(n * math.sqrt(2)))
            th = torch.deg2rad(self.theta_deg.to(torch.float64))
            t = torch.arange(n_det, dtype=torch.float64) - n_det // 2
            s = torch.arange(n_s, dtype=torch.float64) - (n_s - 1) / 2
            cos, sin = th.cos()[:, None, None], th.sin()[:, None, None]
            c = n // 2
            col = c + t[None, None, :] * cos + s[None, :, None] * sin
            row = c - t[None, None, :] * sin + s[None, :, None] * cos
            scale = 2 / (n - 1) if n > 1 else 1.0
            grid = torch.stack([col * scale - 1, row * scale - 1], dim=-1)  # (A, S, T, 2)
            self._grid_cache = {key: grid.reshape(1, -1, n_det, 2).to(device=device, dtype=dtype)}
        return self._grid_cache[key]

    def _check(self, x: torch.Tensor, who: str) -> None:
        check_image(x, who)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"{who}: expected square images (N x N), got {tuple(x.shape[-2:])}; pad or crop first")
        if x.is_complex():
            raise ValueError(f"{who}: expected a real image, got a complex tensor")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "ct_parallel_beam")
        b, c, n, _ = x.shape
        grid = self._grid(n, x.dtype, x.device)
        samples = F.grid_sample(x, grid.expand(b, -1, -1, -1), mode="bilinear", padding_mode="zeros", align_corners=True)
        n_ang = self.theta_deg.numel()
        return samples.reshape(b, c, n_ang, -1, grid.shape[2]).sum(dim=3)

    def adjoint(self, y: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
        """Back-projection ``Aᵀ y``: ``y`` ``(B, C, n_angles, n_detectors)`` → ``(B, C, N, N)``.

        ``N`` = ``image_size``, else ``n_detectors`` (or the sinogram width when it is not fixed).
        """
        if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[-2] != self.theta_deg.numel():
            raise ValueError(
                f"ct_parallel_beam.adjoint: expected a sinogram (B, C, {self.theta_deg.numel()}, n_detectors), "
                f"got {tuple(getattr(y, 'shape', ()))}"
            )
        if image_size is None and self.n_detectors is not None:
            raise ValueError("ct_parallel_beam.adjoint: pass image_size when n_detectors is set")
        n = int(image_size if image_size is not None else y.shape[-1])
        x0 = torch.zeros(y.shape[:2] + (n, n), dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            out = self.forward(x0)
            if out.shape != y.shape:
                raise ValueError(f"ct_parallel_beam.adjoint: sinogram {tuple(y.shape)} does not match {n}x{n} images")
            (grad,) = torch.autograd.grad(out, x0, grad_outputs=y, create_graph=y.requires_grad)
        return grad

    def extra_repr(self) -> str:
        return f"angles={self.theta_deg.numel()}, n_detectors={self.n_detectors}, halo=None"
