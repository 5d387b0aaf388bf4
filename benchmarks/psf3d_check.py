"""The widefield 3-D PSF model against its formula and the textbook widths.

Run:  python benchmarks/psf3d_check.py

1. ``operators.psf3d.defocus_intensity`` (Gauss–Legendre in torch) against scipy's adaptive
   quadrature of the same integral at points off axis and out of focus, both defocus models.
2. Lateral and axial FWHM of the model against the widely used approximations: lateral
   ``0.51 λ/NA``; axial ``1.77 n λ/NA²`` (paraxial Born–Wolf: exact for that model) and
   ``0.88 λ/(n − √(n² − NA²))`` (non-paraxial, the approximation quoted for high NA).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from scipy import integrate, special  # noqa: E402
from scipy.optimize import brentq  # noqa: E402

from operators.psf3d import DEFOCUS_MODELS, defocus_intensity  # noqa: E402

OPTICS = {"NA 1.4 oil": (1.4, 0.52, 1.518), "NA 1.2 water": (1.2, 0.52, 1.33), "NA 1.0 water": (1.0, 0.52, 1.33),
          "NA 0.5 air": (0.5, 0.6, 1.0)}


def quadrature(r, z, na, lam, n, defocus):
    k = 2 * math.pi / lam

    def phase(p):
        return -0.5 * k * na**2 * z / n * p**2 if defocus == "paraxial" else k * z * (math.sqrt(n**2 - na**2 * p**2) - n)

    opts = dict(limit=400, epsabs=1e-14, epsrel=1e-12)
    re = integrate.quad(lambda p: special.j0(k * na * r * p) * math.cos(phase(p)) * p, 0, 1, **opts)[0]
    im = integrate.quad(lambda p: special.j0(k * na * r * p) * math.sin(phase(p)) * p, 0, 1, **opts)[0]
    return 4 * (re**2 + im**2)


def main() -> None:
    na, lam, n = OPTICS["NA 1.4 oil"]
    points = [(0.1, 0.0), (0.2, 0.3), (0.35, -0.8), (0.05, 1.5), (1.0, 2.0), (0.6, -0.4)]
    print("1. model vs adaptive quadrature (NA 1.4 oil, 520 nm; r, z in µm; I(0, 0) = 1)")
    for defocus in DEFOCUS_MODELS:
        err = max(abs(float(defocus_intensity(r, z, na, lam, n, defocus)) - quadrature(r, z, na, lam, n, defocus))
                  for r, z in points)
        print(f"   {defocus:<12} max |difference| over {len(points)} points: {err:.1e}")
    print("2. widths (µm) and their ratio to the approximation")
    print(f"   {'optics':<13} {'lateral':>8} {'/0.51λ/NA':>9} {'axial BW':>9} {'/1.77nλ/NA²':>11} "
          f"{'axial np':>9} {'/0.88λ/(n−√)':>12}")
    for name, (na, lam, n) in OPTICS.items():
        def fwhm(f, hi):
            return 2 * brentq(lambda s: f(s) - 0.5, 0, hi)

        lat = fwhm(lambda r: float(defocus_intensity(r, 0.0, na, lam, n)), lam / na)
        ax_p = fwhm(lambda z: float(defocus_intensity(0.0, z, na, lam, n, "paraxial")), 4 * n * lam / na**2)
        ax_np = fwhm(lambda z: float(defocus_intensity(0.0, z, na, lam, n, "nonparaxial")), 4 * n * lam / na**2)
        print(f"   {name:<13} {lat:8.4f} {lat / (0.51 * lam / na):9.4f} {ax_p:9.4f} {ax_p / (1.77 * n * lam / na**2):11.4f} "
              f"{ax_np:9.4f} {ax_np / (0.88 * lam / (n - math.sqrt(n * n - na * na))):12.4f}")


if __name__ == "__main__":
    main()
