"""Hallucination audit: calibrated data-fit statistics per tile, per region, and seed spread.

Room: ``ddiff`` — torch and numpy only (plus ``operators`` for the noise models and
``ddiff.metrics`` for the paper's numbers). No scipy, xarray, zarr or prefect: the results are plain
tensors/numbers in :class:`AuditResult`; ``storage``/``flows`` turn them into xarray and reports.

What is tested (``docs/audit.md`` explains how to read it)
----------------------------------------------------------
Under the noise model, with the *true* image ``x`` in place of the reconstruction ``x̂``, every
measurement entry ``i`` gives a normalised squared residual ``dᵢ`` with a known mean ``eᵢ``,
variance ``vᵢ`` and third cumulant ``κᵢ``:

* Gaussian ``N(0, σ²)``:          ``dᵢ = (yᵢ − A(x̂)ᵢ)² / σ²``  (χ²₁: ``e = 1``, ``v = 2``; a complex
  entry counts twice, χ²₂);
* Poisson (``operators.noise`` units: counts ``kᵢ = gain·yᵢ ~ P(λᵢ)``, ``λᵢ = gain·A(x̂)ᵢ``): the
  deviance ``dᵢ = 2 [kᵢ log(kᵢ/λᵢ) − (kᵢ − λᵢ)]``, whose exact cumulants under ``P(λᵢ)`` are
  tabulated once (they differ from 1 and 2 at low counts, which is why the plain χ²_m
  approximation is mis-calibrated there);
* Poisson–Gaussian (``y = k/gain + σ n``): Pearson's ``dᵢ = (yᵢ − A(x̂)ᵢ)² / (A(x̂)ᵢ/gain + σ²)``,
  exact mean 1, variance and third cumulant from the Poisson and normal central moments.

The terms of a sum ``S = Σ dᵢ`` over a set of entries (a tile, or a window) are independent, so
``E = Σ eᵢ``, ``V = Σ vᵢ``, ``K₃ = Σ κᵢ``. ``S`` is referred to ``a + c·χ²_k`` with the same three
cumulants (Pearson type III; :func:`scaled_chi2_sf`). For Gaussian noise ``a = 0, c = 1, k = m``
and the p-value is *exact*: ``P(χ²_m ≥ S) = Q(m/2, S/2)`` (regularised upper incomplete gamma).
The tile statistic printed as ``chi2_nu = S/m`` is the paper's ``χ²_ν = ‖y − A(x̂)‖²/(m σ²)``
(ideal ``1 ± √(2/m)``); the z-score is ``(S − E)/√V``.

Regions: for a local operator (``operator.halo`` is an ``int``) the map ``dᵢ`` lives on a grid tied
to the image (same grid for blur/inpainting/microscopy; ``1/scale`` for super-resolution; shrunk by
``2·halo`` for a 'valid' blur). It is summed in windows of ``window`` image pixels (converted to
measurement pixels), giving per-window ``S, E, V`` and p-values, mapped back on the image grid by
nearest upsampling. Sliding windows (stride 1) give the display map ``window_p``; the *flags* use the
disjoint windows of one grid, whose statistics are independent under the null, so the family-wise
error over the tile's windows is controlled exactly by Šidák (``control="sidak"``, default;
``"bonferroni"`` ≤ α; ``"bh"`` controls the false-discovery rate instead). Unobserved entries (an
inpainting mask: ``operator.mask`` when present, else rows of a linear ``A`` that are identically
zero; optionally a border of ``exclude_border`` pixels, e.g. a tile's halo) count neither in ``d``
nor in ``m``.

Uncertainty (:func:`uncertainty`): from K reconstructions with different seeds, the per-pixel spread,
the spread of their re-measurements ``A(x̂ₖ)`` in noise units (what the data can tell apart), the
data constraint ``diag(AᵀA)`` (exact from a mask, Hutchinson probes otherwise), and the
*prior-filled* map: pixels where the seeds disagree but their re-measurements do not — the part of
the image the prior chose inside the operator's null space. Reported, never flagged: residuals
cannot see such content (see ``docs/audit.md``).

Modules (every public name is importable from ``ddiff.audit``):
:mod:`~ddiff.audit.stats` (per-entry statistics, null cumulants, p-values, multiplicity control),
:mod:`~ddiff.audit.regions` (observed entries, grids, windows, :func:`audit`),
:mod:`~ddiff.audit.spread` (:func:`uncertainty` from K seeds),
:mod:`~ddiff.audit.synthetic` (synthetic truths, planted disks, detection rates),
:mod:`~ddiff.audit.bounds` (per-pixel bound features, the fitted scale rule, calibrated bounds),
:mod:`~ddiff.audit.rcps` (Hoeffding–Bentkus / Waudby-Smith–Ramdas bounds, the RCPS factor λ).
"""
from __future__ import annotations

from .bounds import FEATURES, ScaleRule, apply_bounds, bound_features, calibrate_bounds, fit_scale_rule
from .rcps import BOUNDS, hb_pvalue, hb_ucb, min_calibration_frames, rcps_lambda, ucb, wsr_ucb
from .regions import AuditResult, audit, image_grid_factor, observed_mask, to_image_grid, window_sums
from .spread import UncertaintyResult, uncertainty
from .stats import (
    CONTROLS,
    elementwise_stats,
    entry_sd,
    fwer_threshold,
    poisson_deviance_moments,
    scaled_chi2_cdf,
    scaled_chi2_pdf,
    scaled_chi2_sf,
)
from .synthetic import detection_rates, plant_disk, smooth_field

__all__ = [
    "AuditResult",
    "UncertaintyResult",
    "audit",
    "uncertainty",
    "elementwise_stats",
    "entry_sd",
    "scaled_chi2_sf",
    "scaled_chi2_cdf",
    "scaled_chi2_pdf",
    "poisson_deviance_moments",
    "observed_mask",
    "image_grid_factor",
    "window_sums",
    "fwer_threshold",
    "smooth_field",
    "plant_disk",
    "detection_rates",
    "FEATURES",
    "ScaleRule",
    "bound_features",
    "fit_scale_rule",
    "calibrate_bounds",
    "apply_bounds",
    "BOUNDS",
    "hb_pvalue",
    "hb_ucb",
    "wsr_ucb",
    "ucb",
    "min_calibration_frames",
    "rcps_lambda",
]
