"""Volumes solved as volumes vs slice by slice, same 2-D prior, same NFE (issue 19).

Run:  nice python benchmarks/volume.py [--volumes 2] [--size 64] [--planes 16] [--steps 50]

Two problems, each on ``--volumes`` synthetic volumes built from the HELD-OUT right 25 % of
scikit-image's bundled images (``flows.sample_data``; ``--split train`` uses the training part):
every plane is the same picture seen through an affine map (rotation, zoom, shift) that changes
smoothly with z, so structures drift and turn across the stack as they do through real samples.

* **widefield** — 3-D deconvolution of a widefield z-stack: :class:`operators.Widefield3D`
  (NA 1.0 water, n 1.33, 520 nm emission, 100 nm pixels, 250 nm planes, 9 × 33 × 33 kernel),
  Gaussian noise σ_y (``--sigma``, model units).
* **ct** — sparse-view parallel-beam CT of every slice (:class:`operators.CTStack`, ``--angles``
  views over 180°), Gaussian noise ``--ct-sigma`` in sinogram units (pixel × model units).

Methods, all DDiff self-calibrated (``x_update="discrepancy"``) with ``load_prior(--prior)`` and
``--steps`` steps, so the same NFE (one batched network call per step denoises every plane):

* ``slice-by-slice`` — :class:`ddiff.SliceBySlice` of 2-D DDiff; widefield: each plane
  deconvolved with the in-focus PSF plane (what a 2-D pipeline does); CT: the 2-D CT of the slice;
* ``volume, no coupling`` — :class:`ddiff.VolumeDDiff` with ``coupling=None`` (3-D data step);
* ``volume, coupled`` — :class:`ddiff.VolumeDDiff` (quadratic through-plane coupling, weight
  chosen from the data every step, the default).

Columns: PSNR (dB, over all planes of a volume, mean over volumes), SSIM (per plane, mean);
``Δz PSNR`` — PSNR of the through-plane differences ``D_z x̂`` against ``D_z x`` on the [−1, 1]
difference range (through-plane consistency: flicker between planes lowers it); ``Δz ratio`` —
``‖D_z x̂‖ / ‖D_z x‖`` (1: the truth's through-plane variation; > 1 flicker, < 1 over-smoothing);
``χ²_ν`` of the result under the true 3-D forward model (1: fits the data to the noise level);
seconds. Run it niced: it takes a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from ddiff import DDiff, SliceBySlice, VolumeDDiff  # noqa: E402
from ddiff.metrics import chi2_reduced, psnr, ssim  # noqa: E402
from ddiff.priors import load_prior  # noqa: E402
from flows.sample_data import sample_images  # noqa: E402
from operators import CTStack, GaussianNoise, Widefield3D  # noqa: E402
from operators.volume import to_slices  # noqa: E402


def smooth_volume(image: np.ndarray, planes: int, size: int, rng: np.random.RandomState) -> np.ndarray:
    """``(planes, size, size)`` float32: ``image`` sampled through an affine map that varies linearly
    in z — rotation by up to ±1.5° per plane, zoom by up to ±1 % per plane, a drift of up to
    0.6 px per plane — around a random centre (the whole stack stays inside the image)."""
    h, w = image.shape
    dtheta = math.radians(rng.uniform(-1.5, 1.5))
    dzoom = rng.uniform(-0.01, 0.01)
    drift = rng.uniform(-0.6, 0.6, size=2)
    reach = size * 0.75 + planes * (abs(drift).max() + 1)  # half-extent the stack may touch
    if h < 2 * reach or w < 2 * reach:
        raise ValueError(f"image {h}×{w} is too small for a {planes}×{size}×{size} volume")
    cy, cx = rng.uniform(reach, h - reach), rng.uniform(reach, w - reach)
    g = np.arange(size) - (size - 1) / 2
    yy, xx = np.meshgrid(g, g, indexing="ij")
    out = np.empty((planes, size, size), dtype=np.float32)
    for k in range(planes):
        kk = k - (planes - 1) / 2
        th, s = kk * dtheta, 1 + kk * dzoom
        ry = s * (math.cos(th) * yy - math.sin(th) * xx) + cy + kk * drift[0]
        rx = s * (math.sin(th) * yy + math.cos(th) * xx) + cx + kk * drift[1]
        out[k] = ndimage.map_coordinates(image, [ry, rx], order=3, mode="reflect")
    return np.clip(out, -1, 1)


def volumes(split: str, n: int, planes: int, size: int, seed: int) -> torch.Tensor:
    """``(n, 1, planes, size, size)`` from the images large enough, cycling through them."""
    train, held, _ = sample_images()
    pool = [im for im in (held if split == "heldout" else train) if min(im.shape) >= 2 * (size * 0.75 + planes * 1.6)]
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(pool))
    return torch.from_numpy(np.stack([smooth_volume(pool[order[i % len(pool)]], planes, size, rng)
                                      for i in range(n)]))[:, None]


def through_plane(xh: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """``(Δz PSNR, Δz ratio)`` (module docstring), means over volumes."""
    dh, d = (xh[:, :, 1:] - xh[:, :, :-1]).double(), (x[:, :, 1:] - x[:, :, :-1]).double()
    mse = (dh - d).flatten(1).square().mean(1)
    p = 10 * torch.log10(4.0 / mse)  # difference range [−2, 2]: peak 2, as PSNR on [−1, 1] images
    ratio = dh.flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)
    return p.mean().item(), ratio.mean().item()


def volume_psnr_ssim(xh: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    B = x.shape[0]
    a, b = to_slices(xh.float()), to_slices(x.float())
    mse = ((a.clamp(-1, 1) - b) / 2).square().reshape(B, -1).mean(1)  # PSNR over the whole volume
    return (10 * torch.log10(1.0 / mse)).mean().item(), ssim(a, b).mean().item()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--volumes", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--planes", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sigma", type=float, default=0.02, help="widefield noise (model units)")
    ap.add_argument("--angles", type=int, default=30, help="CT views over 180°")
    ap.add_argument("--ct-sigma", type=float, default=0.5, help="CT noise (sinogram units)")
    ap.add_argument("--split", choices=("heldout", "train"), default="heldout")
    ap.add_argument("--tasks", default="widefield,ct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    x = volumes(args.split, args.volumes, args.planes, args.size, args.seed)
    print(f"prior {args.prior}; {args.volumes} {args.split} volumes {args.planes}×{args.size}×{args.size}; "
          f"DDiff (auto) {args.steps} steps each; seed {args.seed}")
    print(f"{'task':<10} {'method':<22} {'NFE':>4} {'PSNR':>6} {'SSIM':>6} {'Δz PSNR':>8} {'Δz ratio':>8} {'χ²_ν':>6} {'s':>6}")
    for task in args.tasks.split(","):
        if task == "widefield":
            A = Widefield3D(na=1.0, wavelength=0.52, n_immersion=1.33, pixel_size=0.1, z_step=0.25, size=(9, 33))
            noise, A2 = GaussianNoise(args.sigma), None
            A2 = A.focal_plane()
        elif task == "ct":
            A = CTStack(angles=args.angles)
            noise, A2 = GaussianNoise(args.ct_sigma), A
        else:
            raise SystemExit(f"unknown task {task!r}; use widefield, ct")
        y = noise.sample(A(x), torch.Generator().manual_seed(args.seed + 1))
        methods = [
            ("slice-by-slice", lambda: SliceBySlice(DDiff(prior, steps=args.steps)).solve(y, A2, noise, generator=gens())),
            ("volume, no coupling", lambda: VolumeDDiff(prior, steps=args.steps, coupling=None).solve(y, A, noise, generator=gens())),
            ("volume, coupled", lambda: VolumeDDiff(prior, steps=args.steps).solve(y, A, noise, generator=gens())),
        ]

        def gens():
            return [torch.Generator().manual_seed(100 + i) for i in range(x.shape[0])]

        for name, run in methods:
            t = time.perf_counter()
            r = run()
            sec = time.perf_counter() - t
            p, s = volume_psnr_ssim(r.x, x)
            dp, ratio = through_plane(r.x, x)
            chi = chi2_reduced(y, A(r.x.to(y.dtype)), noise.sigma).mean().item()
            print(f"{task:<10} {name:<22} {r.nfe:4d} {p:6.2f} {s:6.3f} {dp:8.2f} {ratio:8.3f} {chi:6.3f} {sec:6.0f}", flush=True)


if __name__ == "__main__":
    main()
