"""``process_stack``: the nightly job — (ingest →) reconstruct → audit, one parent run in the Prefect UI.

Room: ``flows`` — prefect (flows, variables), the three stage flows, :mod:`flows.ui`.

Made to be *deployed* (``deployments/prefect.yaml``, ``docs/deploy.md``):

* its parameters are separate fields (stores, operator, noise, prior, solver, tiling, execution,
  audit settings), so the deployment page and the run form show each one, not a ``params`` blob;
* the stores (and the operator's name) left empty are read from Prefect **variables when the run
  starts** — ``ddiff_input_store``, ``ddiff_output_store``, ``ddiff_source`` (optional raw stack
  to ingest first) and ``ddiff_operator`` — so changing a variable changes the next run without a
  redeploy (a ``{{ prefect.variables.X }}`` template in prefect.yaml is resolved once, at deploy time);
* testing knobs (``fail_after_tiles``) are not parameters: the run form cannot offer them;
* each stage is a child run with a name from the data and the tags ``operator:``/``solver:``/
  ``prior:``/``user:``; a failed or interrupted stage publishes its failure summary and a
  ``ddiff.run.failed`` event itself; this flow reports what fails before a stage's run exists;
* the parent run carries the verdict artifact ``verdict-…``: OK / LOOK, the per-frame audit table,
  links to the child runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger, tags

from .params import AuditParams, ExecutionSpec, IngestParams, NoiseSpec, OperatorSpec, ReconstructParams, SolverSpec
from .run_report import deployment_run_command, publish_verdict
from .ui import abspath, artifact_key, flow_run_namer, report_failure, run_tags, tag_this_run

__all__ = ["process_stack", "VARIABLES"]

#: parameter -> the Prefect variable read at run time when the parameter is left empty
VARIABLES = {"input_store": "ddiff_input_store", "output_store": "ddiff_output_store", "source": "ddiff_source",
             "operator": "ddiff_operator"}


def _from_variable(name: str, value, required: bool):
    from prefect.variables import Variable

    if value not in (None, ""):
        return value, False
    var = VARIABLES[name]
    got = Variable.get(var, default=None)
    if got in (None, "") and required:
        raise ValueError(f"{name} is empty and the Prefect variable {var!r} is not set: pass {name}=... or run "
                         f"`prefect variable set {var} VALUE`")
    return got, got not in (None, "")


def _output_label(params: dict) -> str:
    return "" if params.get("output_store") else "stores from variables"


@flow(name="process-stack", persist_result=False, flow_run_name=flow_run_namer("process", "output_store", _output_label))
def process_stack(
    input_store: Optional[str] = None,
    output_store: Optional[str] = None,
    source: Optional[str] = None,
    operator: Optional[OperatorSpec] = None,
    noise: NoiseSpec = NoiseSpec(),
    prior: str = "default",
    solver: SolverSpec = SolverSpec(),
    tile: int = 256,
    overlap: int = 16,
    seed: int = 0,
    execution: ExecutionSpec = ExecutionSpec(),
    ingest_axes: Optional[str] = None,
    ingest_intensity: Any = "percentile",
    audit_alpha: float = 0.05,
    audit_window: int = 16,
    overwrite: bool = False,
) -> dict:
    """Ingest ``source`` (when given and ``input_store`` does not exist yet), reconstruct
    ``input_store`` into ``output_store``, audit it. Empty stores / source / operator are read
    from the Prefect variables :data:`VARIABLES` when the run starts. Rerunning resumes (ingest
    skipped, solved tiles skipped). Returns ``{"input", "output", "reconstruct", "audit"}``."""
    from prefect.runtime import flow_run

    from .audit import audit_reconstruction
    from .ingest import ingest_stack
    from .reconstruct import reconstruct_stack

    logger = get_run_logger()
    input_store, v_in = _from_variable("input_store", input_store, True)
    output_store, v_out = _from_variable("output_store", output_store, True)
    source, v_src = _from_variable("source", source, False)
    if operator is None:
        name, _ = _from_variable("operator", None, False)
        operator = OperatorSpec(name=name or "gaussian_blur")
    read = [f"{k}={v!r}" for k, v, used in (("input_store", input_store, v_in), ("output_store", output_store, v_out),
                                             ("source", source, v_src)) if used]
    if read:
        logger.info("read from Prefect variables at run time: %s", ", ".join(read))
    if flow_run.id and not flow_run.name.startswith(f"process {Path(output_store).name}"):
        _rename(f"process {Path(output_store).name} · from {Path(input_store).name}")
    run = run_tags(operator=operator.name, solver=solver.name, prior=prior)
    tag_this_run(run)
    stage, states, called = "ingest", {}, None  # called: the stage whose child run was started
    try:
        with tags(*run):
            if source and not (Path(input_store) / "zarr.json").is_file():
                ip = IngestParams(source=source, store=input_store, axes=ingest_axes, intensity=ingest_intensity)
                called = stage
                states["ingest"] = ingest_stack(ip, return_state=True)
                states["ingest"].result()
            elif source:
                logger.info("%s already ingested: ingest skipped", abspath(input_store))
            stage = "reconstruct"
            p = ReconstructParams(input_store=input_store, output_store=output_store, operator=operator, noise=noise,
                                  prior=prior, solver=solver, tile=tile, overlap=overlap, seed=seed,
                                  execution=execution, overwrite=overwrite)
            called = stage
            states["reconstruct"] = reconstruct_stack(p, return_state=True)
            rec = states["reconstruct"].result()
            stage = "audit"
            ap = AuditParams(output_store=output_store, alpha=audit_alpha, window=audit_window)
            called = stage
            states["audit"] = audit_reconstruction(ap, return_state=True)
            aud = states["audit"].result()
        verdict = publish_verdict(output_store, rec, aud, states, audit_alpha)
        logger.info("%s — %s", verdict, abspath(output_store))
    except BaseException as exc:
        if called != stage:  # it failed here, before its child run started (a child reports its own failure)
            report_failure(f"process-stack ({stage})", output_store, exc,
                           [f"the {stage} stage did not start: nothing of it was written"],
                           [deployment_run_command() or "rerun process_stack with the same parameters (finished "
                            "stages are skipped)"], key=artifact_key("process-failure", output_store),
                           payload={"input": abspath(input_store)})
        raise
    return {"input": abspath(input_store), "output": abspath(output_store), "verdict": verdict, "reconstruct": rec,
            "audit": {k: aud[k] for k in ("report", "dataset", "frames_flagged")}}


def _rename(name: str) -> None:
    """The run's name once the variables are known (it was named before they were read)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from .ui import today

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=f"{name} · {today()}")
    except Exception:  # noqa: BLE001 - a name never fails a run
        pass
