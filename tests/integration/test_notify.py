"""Notifications against a real local HTTP server and a real local SMTP server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.webhook import Webhook
from thorbis_runbook import notify
from thorbis_runbook.config import Target


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.content.decode()))
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[_Mailbox, int]]:
    handler = _Mailbox()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _target(**notify_options: object) -> Target:
    return Target(name="staging", options={"notify": notify_options})


def test_webhook_and_email_are_delivered(webhook: Webhook, mailbox) -> None:  # type: ignore[no-untyped-def]
    box, port = mailbox
    target = _target(webhook_url_env="HOOK", smtp_host="127.0.0.1", smtp_port=port,
                     mail_from="runbook@example.test", mail_to=["dba@example.test"])  # fmt: skip
    deliveries = notify.notify(
        target, "failed", {"runbook": "apply", "run_id": "r1"}, env={"HOOK": webhook.url}
    )
    assert [(d.channel, d.delivered) for d in deliveries] == [("webhook", True), ("email", True)]
    assert webhook.received == [
        {"event": "failed", "target": "staging", "runbook": "apply", "run_id": "r1"}
    ]
    sender, recipients, content = box.messages[0]
    assert sender == "runbook@example.test" and recipients == ["dba@example.test"]
    assert "[thorbis-runbook] apply failed on staging" in content


def test_undeliverable_notifications_are_recorded_not_raised() -> None:
    target = _target(webhook_url_env="HOOK", smtp_host="127.0.0.1", smtp_port=_free_port(),
                     mail_to=["dba@example.test"], timeout=2)  # fmt: skip
    url = f"http://user:hook-token@127.0.0.1:{_free_port()}/hook"
    deliveries = notify.notify(target, "finished", {"runbook": "apply"}, env={"HOOK": url})
    assert [(d.channel, d.delivered) for d in deliveries] == [("webhook", False), ("email", False)]
    assert all("hook-token" not in d.detail for d in deliveries)


def test_events_filter_and_missing_variable() -> None:
    target = _target(webhook_url_env="HOOK", events=["failed"])
    assert notify.notify(target, "finished", {}, env={}) == []
    (delivery,) = notify.notify(target, "failed", {}, env={})
    assert not delivery.delivered and "HOOK is not set" in delivery.detail
    bad = _target(events=["exploded"])
    (config_error,) = notify.notify(bad, "failed", {}, env={})
    assert config_error.channel == "config" and "exploded" in config_error.detail
