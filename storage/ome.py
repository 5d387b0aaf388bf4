"""OME-NGFF 0.5 metadata: multiscale images with the axes the data has, label images, units.

Room: ``storage`` — standard library only.

An image group's ``zarr.json`` carries ``attributes["ome"] = {"version": "0.5", "multiscales":
[...]}`` with typed, unit-bearing axes (a subset of ``t, c, z, y, x`` in that order) and one
dataset per pyramid level ``"0"``, ``"1"``, …: level ``l`` is ``2^l`` times coarser in ``y`` and
``x`` (each pixel the mean — for labels the maximum — of a ``2^l × 2^l`` block), so its ``scale``
is the level-0 pixel size times ``2^l`` and its ``translation`` ``(2^l − 1)/2`` level-0 pixels puts
the block centre where its pixels were. The arrays carry matching Zarr v3 ``dimension_names``.
Label images (``labels/<name>``) have the image's axes less ``c`` and its levels, and an
``image-label`` block (colours, properties, ``source`` = the image two levels up).
"""
from __future__ import annotations

from importlib import metadata as _md

from .axes import AXIS_TYPES

__all__ = ["ome_image_attrs", "ome_label_attrs", "ome_labels_attrs", "package_version", "normalize_unit",
           "SPACE_UNITS", "TIME_UNITS"]

#: OME-NGFF unit names and the spellings found in OME-XML, ImageJ and HDF5 files
SPACE_UNITS = {"angstrom": ("å", "angstrom", "a"), "nanometer": ("nm", "nanometer", "nanometre"),
               "micrometer": ("µm", "μm", "um", "micron", "microns", "micrometer", "micrometre", "\\u00b5m"),
               "millimeter": ("mm", "millimeter", "millimetre"), "centimeter": ("cm", "centimeter"),
               "meter": ("m", "meter", "metre"), "inch": ("in", "inch")}
TIME_UNITS = {"nanosecond": ("ns", "nanosecond"), "microsecond": ("µs", "μs", "us", "microsecond"),
              "millisecond": ("ms", "millisecond"), "second": ("s", "sec", "second", "seconds"),
              "minute": ("min", "minute", "minutes"), "hour": ("h", "hr", "hour", "hours")}


def normalize_unit(unit: str | None, kind: str) -> str | None:
    """OME-NGFF name of ``unit`` (``kind`` ``"space"`` or ``"time"``), ``None`` if unknown/empty."""
    if unit is None:
        return None
    u = str(unit).strip().lower()
    for name, spellings in (SPACE_UNITS if kind == "space" else TIME_UNITS).items():
        if u == name or u in spellings:
            return name
    return None


def package_version() -> str:
    try:
        return _md.version("ddiff-pipeline")
    except _md.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def _axes_meta(axes: str, units: dict) -> list[dict]:
    out = []
    for a in axes:
        d = {"name": a, "type": AXIS_TYPES[a]}
        if a != "c" and units.get(a):
            d["unit"] = units[a]
        out.append(d)
    return out


def _datasets(axes: str, scale: dict, levels: int) -> list[dict]:
    for a in axes:
        if a != "c" and not float(scale.get(a, 1.0)) > 0:
            raise ValueError(f"the {a} step {scale.get(a)} must be positive")
    out = []
    for level in range(int(levels)):
        f = 2 ** level
        sc = [float(scale.get(a, 1.0)) * (f if a in "yx" else 1) if a != "c" else 1.0 for a in axes]
        tr = [float(scale.get(a, 1.0)) * (f - 1) / 2 if a in "yx" else 0.0 for a in axes]
        ct = [{"type": "scale", "scale": sc}]
        if level:
            ct.append({"type": "translation", "translation": tr})
        out.append({"path": str(level), "coordinateTransformations": ct})
    return out


def ome_image_attrs(name: str, axes: str, scale: dict, units: dict, levels: int = 1) -> dict:
    """The ``ome`` attribute block of an image with ``axes`` (canonical order), per-axis physical
    ``scale`` (``{"y": 0.1, "x": 0.1, "z": 0.5, "t": 2.0}``; missing = 1) and ``units``
    (OME-NGFF names), with ``levels`` pyramid levels."""
    return {"version": "0.5", "multiscales": [{"name": name, "axes": _axes_meta(axes, units),
                                               "datasets": _datasets(axes, scale, levels)}]}


def ome_label_attrs(name: str, axes: str, scale: dict, units: dict, levels: int, colors: dict[int, tuple],
                    properties: dict[int, dict] | None = None) -> dict:
    """The ``ome`` block of the label image ``labels/<name>``: ``colors`` ``{value: (r, g, b, a)}``
    (0–255), ``properties`` ``{value: {key: text}}``."""
    attrs = ome_image_attrs(name, axes, scale, units, levels)
    attrs["image-label"] = {
        "colors": [{"label-value": int(v), "rgba": [int(c) for c in rgba]} for v, rgba in sorted(colors.items())],
        "properties": [{"label-value": int(v), **p} for v, p in sorted((properties or {}).items())],
        "source": {"image": "../../"},
    }
    return attrs


def ome_labels_attrs(names: list[str]) -> dict:
    """The ``ome`` block of the ``labels`` group listing its label images."""
    return {"version": "0.5", "labels": list(names)}
