"""``ingest_stack``: a source stack (TIFF, .npy, folder, HDF5) -> OME-Zarr input store.

Room: ``flows`` — prefect + ``storage``. The work is ``storage.ingest`` (streamed, bounded memory,
atomic); the flow adds parameters validation, logging and a markdown artifact.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import storage

from .params import IngestParams

__all__ = ["ingest_stack"]


@flow(name="ingest-stack", persist_result=False)
def ingest_stack(params: IngestParams, artifacts: bool = True) -> dict:
    """Ingest ``params.source`` into ``params.store``; returns ``{"store", "shape", "dtype", "data_sha256", "seconds"}``."""
    from .reconstruct import artifact_key

    p = params if isinstance(params, IngestParams) else IngestParams.model_validate(params)
    logger = get_run_logger()
    intensity = tuple(p.intensity) if isinstance(p.intensity, (list, tuple)) else p.intensity
    if p.domain != "image":  # measurements of a global operator: see flows.measure
        from .measure import ingest_measurements

        st = ingest_measurements(p)
    else:
        st = storage.ingest(p.source, p.store, axes=p.axes, chunk=p.chunk, intensity=intensity,
                            nonfinite=p.nonfinite, overwrite=p.overwrite)
    info = {"store": str(st.path), "shape": list(st.shape), "dtype": str(st.dtype),
            "data_sha256": st.meta["data_sha256"], "seconds": st.meta.get("seconds")}
    logger.info("ingested %s -> %s %s %s in %ss", p.source, st.path, st.shape, st.dtype, info["seconds"])
    if artifacts:
        create_markdown_artifact(
            f"# ingest\n\n- source: `{p.source}`\n- store: `{st.path}`\n- shape (t, c, y, x): {list(st.shape)}, "
            f"dtype {st.dtype}\n- intensity map: `{st.intensity.to_dict()}`\n- data sha256: `{info['data_sha256']}`\n"
            + (f"- measurements: {p.domain} of `{st.meta['measurement']['operator']['name']}`, image grid "
               f"{st.meta['measurement']['image_shape']}\n" if p.domain != "image" else ""),
            key=artifact_key("ingest", p.store), description="ingest summary")
    return info
