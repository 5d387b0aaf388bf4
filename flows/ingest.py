"""``ingest_stack``: a source stack (TIFF, .npy, folder, HDF5) -> OME-Zarr input store.

Room: ``flows`` — prefect + ``storage``. The work is ``storage.ingest`` (streamed, bounded memory,
atomic); the flow adds parameters validation, logging and a markdown artifact.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import storage

from .params import IngestParams
from .ui import abspath, artifact_key, flow_run_namer, report_failure

__all__ = ["ingest_stack"]


def _source(params: dict):
    p = params.get("params")
    return p.get("source") if isinstance(p, dict) else getattr(p, "source", "")


@flow(name="ingest-stack", persist_result=False,
      flow_run_name=flow_run_namer("ingest", "params.store", lambda prm: f"from {Path(str(_source(prm))).name}"))
def ingest_stack(params: IngestParams, artifacts: bool = True) -> dict:
    """Ingest ``params.source`` into ``params.store``; returns ``{"store", "shape" (frames N, C, H, W), "axes", "sizes", "scale",
    "units", "geometry_source", "dtype", "data_sha256", "seconds"}``."""
    p = params if isinstance(params, IngestParams) else IngestParams.model_validate(params)
    logger = get_run_logger()
    intensity = tuple(p.intensity) if isinstance(p.intensity, (list, tuple)) else p.intensity
    pixel = None if p.pixel_size is None else (p.pixel_size[0] if len(p.pixel_size) == 1 else tuple(p.pixel_size))
    try:
        if p.domain != "image":  # measurements of a global operator, solved per frame: see flows.measure
            from .measure import ingest_measurements

            st = ingest_measurements(p, pixel_size=pixel, z_step=p.z_step, time_step=p.time_step,
                                     space_unit=p.space_unit, time_unit=p.time_unit)
        else:
            st = storage.ingest(p.source, p.store, axes=p.axes, chunk=p.chunk, intensity=intensity,
                                nonfinite=p.nonfinite, saturation=p.saturation, mask=p.mask, bad_pixels=p.bad_pixels,
                                overwrite=p.overwrite, pixel_size=pixel, z_step=p.z_step,
                                time_step=p.time_step, space_unit=p.space_unit, time_unit=p.time_unit,
                                max_size=p.max_size)
    except BaseException as exc:
        if artifacts:
            report_failure("ingest-stack", p.store, exc,
                           [f"the source `{abspath(p.source)}` is only read", f"`{abspath(p.store)}` is written in a "
                            "hidden sibling folder and renamed into place when complete: no half-written store is left"],
                           [f"ddiff ingest {abspath(p.source)} {abspath(p.store)}   # with the same options"],
                           key=artifact_key("ingest", p.store), payload={"source": abspath(p.source)})
        raise
    vd = st.meta.get("validity", {})
    info = {"store": str(st.path), "shape": list(st.shape), "dtype": str(st.dtype), "axes": st.axes,
            "sizes": dict(zip(st.layout.axes, st.layout.shape)), "scale": st.scale, "units": st.units,
            "geometry_source": st.meta["geometry"]["source"],
            "data_sha256": st.meta["data_sha256"], "seconds": st.meta.get("seconds"),
            "invalid": {k: vd.get(k, 0) for k in ("invalid", "nonfinite", "saturated", "mask", "bad_pixels")}}
    logger.info("ingested %s -> %s %s %s in %ss", p.source, st.path, st.shape, st.dtype, info["seconds"])
    if artifacts:
        create_markdown_artifact(
            f"# ingest\n\n- source: `{abspath(p.source)}`\n- store: `{abspath(st.path)}`\n- axes `{st.axes}` sizes {info['sizes']}, "
            f"dtype {st.dtype}; {st.n_frames} frames (t, z planes)\n- physical steps {st.scale} {st.units} "
            f"(from {info['geometry_source']})\n- intensity map: `{st.intensity.to_dict()}`\n- data sha256: `{info['data_sha256']}`\n"
            f"- invalid entries (left out of every likelihood): {info['invalid']}\n"
            + (f"- measurements: {p.domain} of `{st.meta['measurement']['operator']['name']}`, image grid "
               f"{st.meta['measurement']['image_shape']}\n" if p.domain != "image" else ""),
            key=artifact_key("ingest", p.store), description="ingest summary")
    return info
