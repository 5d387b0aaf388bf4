"""Prefect automations that notify a facility when the pipeline needs a human: ``python -m flows.automations``.

Room: ``flows`` — prefect (client, blocks, automations); nothing of ours but the event names.

Two automations, both reactive on the events the flows emit (:mod:`flows.ui`):

* ``ddiff: frames flagged by the audit`` — on ``ddiff.audit.flagged`` (payload: ``frames_flagged``,
  ``frames``, ``tiles_flagged``, ``flagged_frames``, ``report``, ``alpha``);
* ``ddiff: run failed`` — on ``ddiff.run.failed`` (payload: ``flow``, ``error``, ``tiles_solved``,
  ``tiles_total``, ``resume``).

Each sends a notification through a notification block: an existing one (``--block NAME``: Slack,
Teams, e-mail, ... made in the UI under Blocks; ``TYPE/NAME``), or a Custom Webhook block this command saves
(``--webhook-url URL``, JSON ``{"text": subject + body}`` — what Slack/Mattermost incoming webhooks take).

    python -m flows.automations --webhook-url https://hooks.slack.com/services/XXX
    python -m flows.automations --block email/lab-alerts
"""
from __future__ import annotations

import argparse
import sys
from uuid import UUID

__all__ = ["AUTOMATIONS", "automation_specs", "install"]

#: name -> (event, subject, body); bodies are Jinja templates rendered by the Prefect server
AUTOMATIONS = {
    "ddiff: frames flagged by the audit": (
        "ddiff.audit.flagged", "ddiff audit: {{ event.payload.frames_flagged }} frame(s) flagged",
        "{{ event.payload.frames_flagged }} of {{ event.payload.frames }} frames of "
        "{{ event.resource['ddiff.store.path'] }} contradict the measurements (alpha {{ event.payload.alpha }}; "
        "{{ event.payload.tiles_flagged }} tiles touch a flagged window). Frames: {{ event.payload.flagged_frames }}. "
        "Report: {{ event.payload.report }}"),
    "ddiff: run failed": (
        "ddiff.run.failed", "ddiff run FAILED: {{ event.resource['prefect.resource.name'] }}",
        "{{ event.payload.flow }} failed on {{ event.resource['ddiff.store.path'] }}: {{ event.payload.error }}. "
        "Tiles kept: {{ event.payload.tiles_solved }} / {{ event.payload.tiles_total }}. "
        "Resume: {{ event.payload.resume }}"),
}


def automation_specs(block_document_id: UUID | str) -> list[dict]:
    """The automations as ``AutomationCore`` dictionaries (what ``prefect automation create --from-json`` takes)."""
    specs = []
    for name, (event, subject, body) in AUTOMATIONS.items():
        specs.append({
            "name": name, "description": f"notify on {event} (ddiff-pipeline, flows/automations.py)", "enabled": True,
            "trigger": {"type": "event", "posture": "Reactive", "expect": [event],
                        "match": {"prefect.resource.id": "ddiff.store.*"}, "threshold": 1, "within": 0},
            "actions": [{"type": "send-notification", "block_document_id": str(block_document_id),
                         "subject": subject, "body": body}]})
    return specs


def install(*, webhook_url: str | None = None, block: str | None = None, block_name: str = "ddiff-notify") -> list[UUID]:
    """Create (or replace, by name) the two automations on the current Prefect API; returns their ids."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    if bool(webhook_url) == bool(block):
        raise ValueError("give either --webhook-url URL (a Custom Webhook block is saved) or --block NAME")
    if webhook_url:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        blk = CustomWebhookNotificationBlock(name=block_name, url=webhook_url,
                                             json_data={"text": "{{subject}}\n{{body}}"})
        block_id = blk.save(block_name, overwrite=True)
    else:
        from prefect.blocks.core import Block

        block_id = Block.load(block)._block_document_id
    ids = []
    with get_client(sync_client=True) as client:
        for spec in automation_specs(block_id):
            for old in client.read_automations_by_name(spec["name"]):
                client.delete_automation(old.id)
            ids.append(client.create_automation(AutomationCore.model_validate(spec)))
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.automations", description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--webhook-url", help="save a Custom Webhook notification block posting {'text': ...} here")
    g.add_argument("--block", help="use this existing notification block: TYPE/NAME, e.g. slack-webhook/lab-alerts")
    a = ap.parse_args(argv)
    ids = install(webhook_url=a.webhook_url, block=a.block)
    for name, i in zip(AUTOMATIONS, ids):
        print(f"automation {name!r}: {i}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
