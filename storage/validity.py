"""Which ingested pixels are measurements: non-finite values, saturation, a user mask, a bad-pixel map.

Room: ``storage`` — numpy (+ the readers for mask files); never torch.

:class:`ValidityRules` is built once per ingest and asked, block by block, which entries of the
source are valid (``False`` = not a measurement). A pixel is invalid when

* it is NaN/Inf (with ``nonfinite="mask"``; ``"refuse"`` stops the ingest before this is asked);
* it is saturated: ``value >= saturation`` — ``"dtype"`` (default) takes the integer dtype's
  maximum (a clipped ADC reading; float data have none), a number is the user's level (e.g. 4095
  for a 12-bit camera stored in uint16), ``None`` turns it off;
* a user ``mask`` file says so (non-zero = valid; shape ``(H, W)``, ``(N, H, W)`` or ``(N, C, H, W)``
  with ``N`` the stack's frames — its (t, z) planes, frame = t·Z + z);
* a detector ``bad_pixels`` map says so (non-zero = bad; ``(H, W)`` or ``(C, H, W)``, every frame).

The store keeps the data unchanged and a boolean array ``valid`` (written only when some pixel is
invalid); the manifest's ``validity`` entry counts each cause and records the mask files' SHA-256.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .safety import SourceError, StorageError, file_sha256

__all__ = ["ValidityRules", "saturation_level"]


def saturation_level(saturation, dtype: np.dtype) -> float | None:
    """The level at or above which a value is saturated (None: no saturation check)."""
    if saturation is None or saturation == "none":
        return None
    if saturation == "dtype":
        return float(np.iinfo(dtype).max) if np.dtype(dtype).kind in "ui" else None
    try:
        level = float(saturation)
    except (TypeError, ValueError):
        level = None
    if level is None or not np.isfinite(level):  # NaN/Infinity would also not be valid JSON in the store's metadata
        raise StorageError(f"saturation={saturation!r}: give a finite level in data units (e.g. 4095), 'dtype' (default: "
                         "the integer type's maximum) or 'none' (no saturation check)")
    return level


def _load(path, what: str) -> np.ndarray:
    p = Path(path)
    meaning = "valid" if what == "mask" else "bad"
    if not p.is_file():
        raise SourceError(f"{what} file {p} does not exist")
    try:
        if p.suffix.lower() == ".npy":
            a = np.load(p, allow_pickle=False)
        elif p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            a = tifffile.imread(p)
        else:
            raise SourceError(f"{what} file {p}: use a .npy or .tif(f) image (non-zero = {meaning})")
    except (ValueError, OSError) as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(f"{what} file {p} cannot be read as an image ({' '.join(str(exc).split())[:120]}); save it "
                          f"as a bool or integer array (non-zero = {meaning})") from None
    if a.dtype.kind not in "biuf":  # strings, complex numbers, objects: no clear "non-zero"
        raise SourceError(f"{what} file {p} holds {a.dtype} values; give a bool or integer array (non-zero = {meaning})")
    return a


def _shape_to_tcyx(arr: np.ndarray, shape: tuple[int, int, int, int], what: str, allowed: str) -> np.ndarray:
    T, C, H, W = shape
    a = np.asarray(arr)
    if a.shape == (H, W):
        return a[None, None]
    if a.ndim == 3 and a.shape[1:] == (H, W):
        if "t" in allowed and a.shape[0] == T:
            return a[:, None]
        if "c" in allowed and a.shape[0] == C:
            return a[None]
    if "t" in allowed and a.shape == (T, C, H, W):
        return a
    forms = {"mask": "(H, W), (N, H, W) or (N, C, H, W)", "bad_pixels": "(H, W) or (C, H, W)"}[what]
    raise SourceError(f"{what} has shape {a.shape}; the stack is (frames, c, y, x) = {shape}: give {forms}")


class ValidityRules:
    """The validity of source blocks (see module docstring); ``counts`` accumulates per cause."""

    def __init__(self, shape: tuple[int, int, int, int], dtype: np.dtype, *, saturation="dtype", mask=None,
                 bad_pixels=None):
        self.shape = tuple(shape)
        self.level = saturation_level(saturation, dtype)
        self.mask = self.bad = None
        self.files: dict = {}
        if mask is not None:
            self.mask = _shape_to_tcyx(_load(mask, "mask"), self.shape, "mask", "tc") != 0
            if not self.mask.any():
                raise SourceError(f"mask file {mask} has no non-zero entry: it marks every pixel invalid (non-zero = "
                                  "valid); nothing would be left to measure — check the file (inverted?)")
            self.files["mask_file"] = {"path": str(Path(mask).resolve()), "sha256": file_sha256(mask)}
        if bad_pixels is not None:
            self.bad = _shape_to_tcyx(_load(bad_pixels, "bad_pixels"), self.shape, "bad_pixels", "c") != 0
            if self.bad.all():
                raise SourceError(f"bad_pixels file {bad_pixels} marks every pixel bad (non-zero = bad); nothing would "
                                  "be left to measure — check the file (inverted?)")
            self.files["bad_pixels_file"] = {"path": str(Path(bad_pixels).resolve()), "sha256": file_sha256(bad_pixels)}
        self.counts = {"nonfinite": 0, "saturated": 0, "mask": 0, "bad_pixels": 0, "invalid": 0}

    def block(self, block: np.ndarray, f0: int, win: tuple[slice, slice]) -> np.ndarray | None:
        """Bool validity of ``block`` = frames ``[f0, f0 + n)``, rows/columns ``win`` (None when every
        entry is valid)."""
        n = block.shape[0]
        ok = np.ones(block.shape, bool)
        if block.dtype.kind == "f":
            fin = np.isfinite(block)
            self.counts["nonfinite"] += int((~fin).sum())
            ok &= fin
        if self.level is not None:
            with np.errstate(invalid="ignore"):
                sat = block >= self.level
            self.counts["saturated"] += int(sat.sum())
            ok &= ~sat
        if self.mask is not None:
            m = self.mask[f0:f0 + n] if self.mask.shape[0] > 1 else self.mask
            m = np.broadcast_to(m[:, :, win[0], win[1]], block.shape)
            self.counts["mask"] += int((~m).sum())
            ok &= m
        if self.bad is not None:
            b = np.broadcast_to(self.bad[:, :, win[0], win[1]], block.shape)
            self.counts["bad_pixels"] += int(b.sum())
            ok &= ~b
        n_bad = int((~ok).sum())
        self.counts["invalid"] += n_bad
        return None if n_bad == 0 else ok

    def check_some_valid(self, source) -> None:
        """After the last block: refuse a stack in which no entry is a measurement, naming the causes."""
        total = int(np.prod(self.shape))
        if self.counts["invalid"] < total:
            return
        said = {"nonfinite": ("NaN/Inf", "nothing finite was measured"),
                "saturated": (f"at or above saturation={self.level:g}",
                              "give a saturation level above the signal (saturation='none': no check)"),
                "mask": ("outside the mask", "check the mask file (non-zero = valid)"),
                "bad_pixels": ("marked bad", "check the bad_pixels file (non-zero = bad)")}
        hit = [k for k in said if self.counts[k]]
        raise SourceError(f"{source}: none of its {total} entries is a valid measurement ("
                          + ", ".join(f"{self.counts[k]} {said[k][0]}" for k in hit) + "); nothing was written — "
                          + "; ".join(said[k][1] for k in hit))

    def summary(self, array: str | None) -> dict:
        """The manifest's ``validity`` entry."""
        total = int(np.prod(self.shape))
        return {"array": array, "saturation_level": self.level, **self.counts,
                "fraction_invalid": self.counts["invalid"] / max(total, 1), **self.files}
