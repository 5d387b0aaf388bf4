"""What an operator sees in the Prefect UI, read back from the (real, temporary) Prefect API server of
the test harness the way the UI reads it: run and task-run names, tags, artifact payloads (tables,
markdown with inline PNGs, progress), failure summaries and events. No browser: these are the JSON
payloads the UI renders (its renderers: docs/deploy.md §"What the UI shows")."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from conftest import BLUR, SIGMA

import flows
import storage
from flows import tiles as T
from flows.ui import artifact_key

STEPS = 3


def params(env, out, **kw):
    base = dict(input_store=str(env["input"]), output_store=str(out), prior=str(env["prior"]), operator=BLUR,
                noise={"kind": "gaussian", "sigma": SIGMA}, solver={"name": "ddiff", "steps": STEPS}, tile=24,
                overlap=4, seed=3, execution={"batch_size": 3, "torch_threads": 1}, artifacts=True)
    base.update(kw)
    return flows.ReconstructParams(**base)


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def artifacts_of(run_id) -> dict:
    """``{key: artifact}`` of one flow run (latest version per key), as the run page lists them."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with client() as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    out = {}
    for a in sorted(arts, key=lambda a: a.created):
        out[a.key] = a
    return out


def events_about(name: str, store, where=lambda e: True) -> list:
    """Events ``name`` whose resource is ``store`` (``ddiff.store.<absolute path>``) and that satisfy
    ``where``, oldest first (waits up to ~10 s for the server to persist them)."""
    import datetime as dt
    import time

    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    flt = EventFilter(occurred=EventOccurredFilter(since=since), event=EventNameFilter(name=[name]),
                      resource=EventResourceFilter(id=[f"ddiff.store.{store}"]))
    for _ in range(50):  # the server persists events asynchronously
        with client() as c:
            page = c.read_events(filter=flt, limit=50)
        found = [e for e in page.events if where(e)]
        if found:
            return sorted(found, key=lambda e: e.occurred)
        time.sleep(0.2)
    return []


def png_payloads(markdown: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)]


@pytest.fixture(scope="module")
def ops_run(flows_env):
    """One reconstruction + audit, their flow-run ids (returned states, as a caller of the API sees them)."""
    out = flows_env["dir"] / "ops" / "recon.zarr"
    out.parent.mkdir(exist_ok=True)
    state = flows.reconstruct_stack(params(flows_env, out), return_state=True)
    rec = state.result()
    astate = flows.audit_reconstruction(flows.AuditParams(output_store=str(out), window=8), return_state=True)
    return out, rec, state.state_details.flow_run_id, astate.result(), astate.state_details.flow_run_id


def test_artifact_keys_are_unique_per_resolved_path(tmp_path, monkeypatch):
    a, b = tmp_path / "nightly" / "recon.zarr", tmp_path / "ddiff-demo" / "recon.zarr"
    assert artifact_key("reconstruct-summary", a) != artifact_key("reconstruct-summary", b)
    monkeypatch.chdir(tmp_path)
    assert artifact_key("audit", "nightly/recon.zarr") == artifact_key("audit", a)  # relative = its absolute form
    key = artifact_key("reconstruct-progress", tmp_path / ("x" * 300))
    assert len(key) <= 100 and re.fullmatch(r"[a-z0-9-]+", key)


def test_run_names_tags_and_reconstruction_artifacts(ops_run):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter

    out, rec, run_id, aud, _ = ops_run
    with client() as c:
        run = c.read_flow_run(run_id)
        assert run.name.startswith("reconstruct recon.zarr · 2 frames from in.zarr · ")
        assert {"operator:gaussian_blur", "solver:ddiff", "prior:tiny.safetensors"} <= set(run.tags)
        assert any(t.startswith("user:") for t in run.tags)
        sub = c.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(
            any_=[run_id])))
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id] + [s.id for s in sub]}),
                                 task_run_filter=TaskRunFilter())
    names = sorted(t.name for t in tasks)
    # 2 frames x 4 tiles in batches of 3 tiles of one shape
    assert any(re.fullmatch(r"solve frames 0(-1)? · tiles [0-9,\-]+ · batch 1/\d", n) for n in names), names
    assert "assemble frame 0" in names and "assemble frame 1" in names
    solve_tasks = [t for t in tasks if t.name.startswith("solve ")]
    assert solve_tasks and all("solver:ddiff" in t.tags for t in solve_tasks)

    arts = artifacts_of(run_id)
    assert set(arts) == {artifact_key(k, out) for k in ("reconstruct-progress", "reconstruct-frames",
                                                        "reconstruct-summary")}
    assert arts[artifact_key("reconstruct-progress", out)].data == 100.0
    summary = arts[artifact_key("reconstruct-summary", out)].data
    assert f"`{out.resolve()}`" in summary and "χ²_ν (frame)" in summary
    table = json.loads(arts[artifact_key("reconstruct-frames", out)].data)
    assert [r["frame"] for r in table] == [0, 1]
    # ONE frame χ²_ν: the reconstruction's table and the audit report the same number
    np.testing.assert_allclose([r["chi2_nu"] for r in table], aud["chi2_nu"], atol=1e-4)
    tile_chi = storage.open_output(out).open_diagnostics()["chi2_nu"].values
    assert table[1]["tile_chi2_nu_max"] == pytest.approx(tile_chi[1].max(), abs=1e-4)


def test_audit_table_settings_and_pictures_via_api(ops_run):
    out, _, _, aud, audit_run = ops_run
    with client() as c:
        run = c.read_flow_run(audit_run)
    assert run.name.startswith("audit recon.zarr · ") and "solver:ddiff" in run.tags
    arts = artifacts_of(audit_run)
    table = arts[artifact_key("audit-frames", out)]
    assert table.type == "table"
    rows = json.loads(table.data)
    assert [r["frame"] for r in rows] == [0, 1]
    assert {"chi2_nu", "expected", "z", "p_misfit", "p_overfit", "flagged_windows", "tiles_flagged", "flagged"} <= set(rows[0])
    np.testing.assert_allclose([r["chi2_nu"] for r in rows], aud["chi2_nu"], atol=1e-4)
    assert [r["frame"] for r in rows if r["flagged"]] == aud["frames_flagged"]
    settings = {r["setting"]: r["value"] for r in json.loads(arts[artifact_key("audit-settings", out)].data)}
    assert settings["alpha"] == "0.05" and settings["window"] == "8" and "solver data step" in settings
    md = arts[artifact_key("audit", out)]
    assert md.type == "markdown" and f"`{out.resolve()}`" in md.data
    pngs = png_payloads(md.data)
    assert len(pngs) == 3 and all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)  # 2 frames + the χ² histogram


def test_failed_run_marks_progress_publishes_summary_and_event(flows_env):
    out = flows_env["dir"] / "ops" / "failing.zarr"
    p = params(flows_env, out, fail_after_tiles=2)
    state = flows.reconstruct_stack(p, return_state=True)
    assert state.is_failed()
    with pytest.raises(T.InjectedFailure):
        state.result()
    arts = artifacts_of(state.state_details.flow_run_id)
    assert arts[artifact_key("reconstruct-progress", out)].data == pytest.approx(25.0)
    assert "FAILED at 2/8" in arts[artifact_key("reconstruct-progress", out)].description
    fail = arts[artifact_key("reconstruct-summary", out)].data
    assert "FAILED" in fail and "2 of 8 tiles" in fail and f"ddiff reconstruct {flows_env['input'].resolve()}" in fail
    events = events_about("ddiff.run.failed", out.absolute())
    assert events and events[0].payload["tiles_solved"] == 2 and events[0].payload["tiles_total"] == 8
    assert "InjectedFailure" in events[0].payload["error"]
    # auditing the unfinished output fails in one line and is reported the same way
    with pytest.raises(storage.StorageError, match="not complete"):
        flows.audit_reconstruction(flows.AuditParams(output_store=str(out)))
    audit_events = events_about("ddiff.run.failed", out.absolute(), lambda e: e.payload["flow"] == "audit-reconstruction")
    assert audit_events and audit_events[0].payload["resume"].startswith(f"ddiff audit {out.absolute()}")
    # (resuming from the ledger is tests/test_flows.py::test_interrupted_run_resumes_to_identical_output)


def test_audit_emits_frames_flagged_event(ops_run):
    out = ops_run[0]
    # alpha = 0.999: nearly every frame is "flagged" — a deterministic way to exercise the event
    res = flows.audit_reconstruction(flows.AuditParams(output_store=str(out), window=8, alpha=0.999, artifacts=False))
    assert res["frames_flagged"]
    ev = events_about("ddiff.audit.flagged", out.resolve())
    assert ev and ev[-1].payload["frames_flagged"] == len(res["frames_flagged"]) and ev[-1].payload["frames"] == 2


def test_gpu_limit_is_created_on_first_use(prefect_harness):
    from flows.ui import ensure_gpu_limit

    assert ensure_gpu_limit("ddiff-test-first-use") is True
    assert ensure_gpu_limit("ddiff-test-first-use") is False
    with client() as c:
        assert c.read_global_concurrency_limit_by_name("ddiff-test-first-use").limit == 1


def test_deployed_entry_point_shows_fields_and_hides_testing_knobs():
    """What the deployment page / run form renders: process_stack's parameter schema has one field per
    parameter, and no testing knob anywhere (also not inside ReconstructParams)."""
    from prefect.utilities.callables import parameter_schema

    from flows.process import process_stack

    schema = parameter_schema(process_stack.fn).model_dump()
    assert {"input_store", "output_store", "source", "operator", "noise", "prior", "solver", "tile", "execution",
            "audit_alpha"} <= set(schema["properties"])
    assert "params" not in schema["properties"] and "fail_after_tiles" not in json.dumps(schema)
    assert "fail_after_tiles" not in json.dumps(parameter_schema(flows.reconstruct_stack.fn).model_dump())


def test_process_stack_reads_variables_at_run_time(flows_env):
    """The nightly flow: stores left empty come from Prefect variables read when the run starts — change
    the variable, the next run follows it. One parent run with named, tagged child runs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.variables import Variable

    from flows.process import process_stack

    d = flows_env["dir"] / "ops"
    kw = dict(operator=BLUR, noise={"kind": "gaussian", "sigma": SIGMA}, prior=str(flows_env["prior"]),
              solver={"name": "ddiff", "steps": 2}, tile=48, overlap=4, execution={"batch_size": 2, "torch_threads": 1},
              audit_window=8)
    Variable.set("ddiff_input_store", str(d / "night_in.zarr"), overwrite=True)
    Variable.set("ddiff_source", str(flows_env["y"]), overwrite=True)
    Variable.set("ddiff_output_store", str(d / "night1.zarr"), overwrite=True)
    s1 = process_stack(ingest_axes="tcyx", ingest_intensity=[0, 1], return_state=True, **kw)
    r1 = s1.result()
    assert r1["output"] == str(d / "night1.zarr") and storage.open_output(d / "night1.zarr").complete
    Variable.set("ddiff_output_store", str(d / "night2.zarr"), overwrite=True)  # no redeploy, no new parameters
    s2 = process_stack(ingest_axes="tcyx", ingest_intensity=[0, 1], return_state=True, **kw)
    r2 = s2.result()
    assert r2["output"] == str(d / "night2.zarr") and storage.open_output(d / "night2.zarr").complete
    run_id = s2.state_details.flow_run_id
    with client() as c:
        parent = c.read_flow_run(run_id)
        kids = c.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(
            any_=[run_id])))
    assert parent.name.startswith("process night2.zarr · from night_in.zarr · ")
    assert "operator:gaussian_blur" in parent.tags
    names = sorted(k.name.split(" · ")[0] for k in kids)
    assert names == ["audit night2.zarr", "reconstruct night2.zarr"]  # ingest skipped: the store exists
    assert all("prior:tiny.safetensors" in k.tags for k in kids)
    # the parent's own page answers "can I trust it?": verdict, per-frame table, links to the children
    verdict = artifacts_of(run_id)[artifact_key("verdict", d / "night2.zarr")]
    assert verdict.description.startswith(r2["verdict"]) and r2["verdict"].split(":")[0] in ("OK", "LOOK")
    assert all(f"/runs/flow-run/{k.id}" in verdict.data for k in kids)
    assert "| 1 |" in verdict.data
    for v in ("ddiff_input_store", "ddiff_source", "ddiff_output_store"):
        Variable.unset(v)


def test_demo_is_one_parent_run_with_named_children(flows_env, tmp_path, capsys):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.cli import main

    folder = tmp_path / "demo-here"
    assert main(["demo", "--dir", str(folder), "--prior", str(flows_env["prior"]), "--frames", "2", "--size", "48",
                 "--tile", "48", "--steps", "2", "--no-progress"]) == 0
    assert "PSNR recon" in capsys.readouterr().out
    with client() as c:
        parent = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="demo demo-here")),
                                  sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        kids = c.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(
            any_=[parent.id])))
    assert parent.name.startswith("demo demo-here · 2 frames 48px · ") and "demo" in parent.tags
    assert sorted(k.name.split(" · ")[0] for k in kids) == ["audit recon.zarr", "ingest input.zarr",
                                                            "reconstruct recon.zarr"]
    assert all({"operator:gaussian_blur", "solver:ddiff"} <= set(k.tags) for k in kids)
    assert artifact_key("verdict", folder / "recon.zarr") in artifacts_of(parent.id)


def test_documented_automations_notify_through_a_webhook(prefect_harness):
    """`python -m flows.automations --webhook-url URL` as documented: both automations fire on their
    events and the server posts the rendered notification to a (local) webhook."""
    import http.server
    import threading
    import time

    from flows.automations import main
    from flows.ui import emit

    got = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers.get("content-length", 0)))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert main(["--webhook-url", f"http://127.0.0.1:{srv.server_address[1]}/hook"]) == 0
        time.sleep(1.0)  # the triggers service loads new automations
        emit("ddiff.audit.flagged", "/data/night/recon.zarr", {"frames_flagged": 2, "frames": 8, "tiles_flagged": 3,
                                                               "flagged_frames": [1, 4], "report": "/r.md", "alpha": 0.05})
        emit("ddiff.run.failed", "/data/night/recon.zarr", {"flow": "reconstruct-stack", "error": "OSError: disk full",
                                                            "tiles_solved": 5, "tiles_total": 8, "resume": "ddiff reconstruct A B"})
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all()
        deadline = time.time() + 30
        while len([g for g in got if "/data/night/" in g["text"]]) < 2 and time.time() < deadline:
            time.sleep(0.2)
    finally:
        srv.shutdown()
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as c:  # leave no automation behind for other tests
            for a in c.read_automations():
                if a.name.startswith("ddiff: "):
                    c.delete_automation(a.id)
    texts = sorted(g["text"] for g in got if "/data/night/" in g["text"])
    assert len(texts) == 2, texts
    assert texts[0].startswith("ddiff audit: 2 frame(s) flagged\n2 of 8 frames of /data/night/recon.zarr")
    assert "Frames: [1, 4]" in texts[0]
    assert texts[1].startswith("ddiff run FAILED: recon.zarr\nreconstruct-stack failed on /data/night/recon.zarr: "
                               "OSError: disk full. Tiles kept: 5 / 8. Resume: ddiff reconstruct A B")


def test_failure_summary_says_interrupted_for_ctrl_c_and_lists_what_is_safe():
    from flows.ui import failure_markdown

    md = failure_markdown("reconstruction of `/d/out.zarr`", KeyboardInterrupt(), ["5 of 8 tiles are kept"],
                          ["ddiff reconstruct /d/in.zarr /d/out.zarr"])
    assert md.startswith("# reconstruction of `/d/out.zarr` INTERRUPTED") and "- 5 of 8 tiles are kept" in md
    assert "```\nddiff reconstruct /d/in.zarr /d/out.zarr\n```" in md


def test_the_ui_markdown_renderer_keeps_the_inline_pictures(ops_run):
    """The audit artifact through the installed Prefect UI's own markdown pipeline (its bundled
    react-markdown + rehype-sanitize, configured as the UI does; tests/ui/render_markdown.mjs, run by
    node): the React tree has one <img> per picture with its data:image/png source — and plain
    react-markdown, without the UI's exception, would drop them (the control)."""
    import shutil
    import subprocess
    from pathlib import Path

    import prefect
    from prefect.settings import get_current_settings

    node = shutil.which("node")
    assets = Path(prefect.__file__).parent / "server" / "ui-v2" / "assets"
    if node is None or not assets.is_dir():
        pytest.skip("needs node and the installed Prefect UI (prefect/server/ui-v2)")
    script = Path(__file__).parent / "ui" / "render_markdown.mjs"
    r = subprocess.run([node, str(script), str(assets), str(get_current_settings().api.url),
                        artifact_key("audit", ops_run[0])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    tree, control = (json.loads(line) for line in r.stdout.strip().splitlines()[-2:])
    assert tree["type"] == "markdown" and tree["elements"]["img"] == 3 and tree["elements"]["h3"] == 3
    assert all(i["src_prefix"].startswith("data:image/png;base64,") and i["png_bytes"] > 1000 for i in tree["images"])
    assert control["control_img_src_chars"] == [0, 0, 0]
