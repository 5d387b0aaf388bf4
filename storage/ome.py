"""OME-NGFF 0.5 metadata for the single-resolution ``(t, c, y, x)`` images this package writes.

Room: ``storage`` — standard library only.

An image group's ``zarr.json`` carries ``attributes["ome"] = {"version": "0.5", "multiscales":
[...]}`` with typed, unit-bearing axes and one dataset ``"0"`` with a ``scale`` transform; the
array ``"0"`` carries matching Zarr v3 ``dimension_names``. Only one resolution level is written
(no pyramid): viewers open it directly; pyramids are out of scope.
"""
from __future__ import annotations

from importlib import metadata as _md

__all__ = ["AXES", "ome_image_attrs", "package_version"]

AXES = ("t", "c", "y", "x")


def package_version() -> str:
    try:
        return _md.version("ddiff-pipeline")
    except _md.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def ome_image_attrs(name: str, pixel_size: tuple[float, float] = (1.0, 1.0), space_unit: str = "micrometer",
                    time_step: float = 1.0, time_unit: str = "second", path: str = "0") -> dict:
    """The ``ome`` attribute block of a ``(t, c, y, x)`` OME-NGFF 0.5 image."""
    py, px = (float(v) for v in pixel_size)
    if min(py, px, float(time_step)) <= 0:
        raise ValueError(f"pixel_size {pixel_size} and time_step {time_step} must be positive")
    axes = [
        {"name": "t", "type": "time", "unit": time_unit},
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": space_unit},
        {"name": "x", "type": "space", "unit": space_unit},
    ]
    return {
        "version": "0.5",
        "multiscales": [{
            "name": name,
            "axes": axes,
            "datasets": [{"path": path,
                          "coordinateTransformations": [{"type": "scale", "scale": [float(time_step), 1.0, py, px]}]}],
        }],
    }
