"""Physical geometry of a source: pixel sizes, z step, time step and their units.

Room: ``storage`` — standard library + numpy (the readers hand in tifffile/h5py objects).

:class:`Geometry` is what :func:`storage.ingest` records in the input store's OME metadata and
what every output inherits: ``scale`` ``{axis: step}`` for the axes ``t, z, y, x`` and ``units``
``{axis: OME-NGFF unit name}``; ``source`` says where the numbers came from (``"ome-xml"``,
``"imagej"``, ``"hdf5"``, ``"user"`` or ``"default"`` = 1 micrometer / 1 second, nothing known).
Readers fill it from the file (OME-XML ``PhysicalSize*``/``TimeIncrement``, ImageJ ``spacing``,
``unit``, ``finterval`` and the X/YResolution tags, HDF5 ``element_size_um``); the user's
``pixel_size``/``z_step``/``time_step`` arguments override it axis by axis.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .ome import normalize_unit

__all__ = ["Geometry", "from_ome_xml", "from_imagej", "from_hdf5"]


@dataclass
class Geometry:
    scale: dict = field(default_factory=dict)   # axis -> step (t, z, y, x)
    units: dict = field(default_factory=dict)   # axis -> OME-NGFF unit name
    source: str = "default"

    def resolved(self, axes: str) -> tuple[dict, dict]:
        """``(scale, units)`` for every non-channel axis of ``axes`` (defaults: 1 micrometer, 1 second)."""
        scale, units = {}, {}
        for a in axes:
            if a == "c":
                continue
            scale[a] = float(self.scale.get(a, 1.0))
            units[a] = self.units.get(a) or ("second" if a == "t" else "micrometer")
        return scale, units

    def override(self, pixel_size=None, z_step=None, time_step=None, space_unit=None, time_unit=None) -> "Geometry":
        """A copy with the user's values (``None`` keeps the file's)."""
        g = Geometry(dict(self.scale), dict(self.units), self.source)
        user = False
        if pixel_size is not None:
            py, px = (pixel_size, pixel_size) if isinstance(pixel_size, (int, float)) else tuple(pixel_size)
            g.scale.update(y=float(py), x=float(px))
            user = True
        if z_step is not None:
            g.scale["z"] = float(z_step)
            user = True
        if time_step is not None:
            g.scale["t"] = float(time_step)
            user = True
        for axes, unit, kind in (("zyx", space_unit, "space"), ("t", time_unit, "time")):
            if unit is not None:
                name = normalize_unit(unit, kind)
                if name is None:
                    raise ValueError(f"unknown {kind} unit {unit!r}; use an OME-NGFF name such as "
                                     f"{'micrometer' if kind == 'space' else 'second'}")
                g.units.update({a: name for a in axes})
                user = True
        for a, v in g.scale.items():
            if not v > 0:
                raise ValueError(f"the {a} step {v} must be positive")
        if user:
            g.source = "user" if self.source == "default" else f"{self.source}+user"
        return g


def _set(g: Geometry, axis: str, value, unit, kind: str) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return
    if v > 0:
        g.scale[axis] = v
        name = normalize_unit(unit, kind)
        if name:
            g.units[axis] = name


def from_ome_xml(xml: str) -> Geometry | None:
    """Pixel sizes and time increment of the first image of an OME-XML document."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    g = Geometry(source="ome-xml")
    a = pixels.attrib
    for axis, key in (("x", "PhysicalSizeX"), ("y", "PhysicalSizeY"), ("z", "PhysicalSizeZ")):
        if key in a:
            _set(g, axis, a[key], a.get(key + "Unit", "µm"), "space")
    if "TimeIncrement" in a:
        _set(g, "t", a["TimeIncrement"], a.get("TimeIncrementUnit", "s"), "time")
    return g if g.scale else None


def from_imagej(meta: dict | None, page) -> Geometry | None:
    """ImageJ hyperstack metadata (``spacing``, ``unit``, ``finterval``) and X/YResolution tags."""
    if not meta:
        return None
    g = Geometry(source="imagej")
    unit = meta.get("unit")
    unit = "micrometer" if unit in (None, "micron", "\\u00B5m") else unit
    for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
        t = page.tags.get(tag) if page is not None else None
        if t is not None:
            num, den = t.value
            if num and den and (num, den) != (1, 1):
                _set(g, axis, den / num, unit, "space")
    if "spacing" in meta:
        _set(g, "z", meta["spacing"], unit, "space")
    if "finterval" in meta:
        _set(g, "t", meta["finterval"], meta.get("tunit", "s"), "time")
    return g if g.scale else None


def from_hdf5(ds, axes: str) -> Geometry | None:
    """``element_size_um`` (one value per dimension, or per spatial dimension z, y, x)."""
    sizes = ds.attrs.get("element_size_um")
    if sizes is None:
        return None
    sizes = [float(v) for v in sizes]
    spatial = [a for a in axes if a in "zyx"]
    if len(sizes) == len(axes):
        pairs = [(a, v) for a, v in zip(axes, sizes) if a in "zyx"]
    elif len(sizes) == len(spatial):
        pairs = list(zip(spatial, sizes))
    else:
        return None
    g = Geometry(source="hdf5")
    for a, v in pairs:
        _set(g, a, v, "micrometer", "space")
    return g if g.scale else None
