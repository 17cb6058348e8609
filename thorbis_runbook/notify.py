"""Notifications: tell stakeholders when a run starts, fails, rolls back or finishes.

Per target in runbook.toml (credentials only ever through environment variables):

    [targets.production.notify]
    events = ["started", "failed", "rolled_back", "finished", "alert", "recovered"]
    webhook_url_env = "THORBIS_WEBHOOK_URL"      # JSON POST
    smtp_host = "smtp.internal"                  # email
    smtp_port = 587
    smtp_starttls = true
    smtp_user_env = "THORBIS_SMTP_USER"
    smtp_password_env = "THORBIS_SMTP_PASSWORD"
    mail_from = "runbook@thorbis.example"
    mail_to = ["dba@thorbis.example"]

A notification that cannot be delivered is logged and recorded, never raised: a broken mail
server must not fail a migration.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Target, reject_unknown_keys
from .errors import ConfigError

log = logging.getLogger(__name__)
# The transports (urllib, smtplib with ssl and email) load when a notification is sent: every
# CLI verb imports this module, most never notify.

# "alert" and "recovered" go out while a run is still going (alerts.py): a limit crossed, and
# cleared again.
EVENTS = ("started", "failed", "rolled_back", "finished", "alert", "recovered")
_KEYS = {
    "events", "webhook_url_env", "smtp_host", "smtp_port", "smtp_starttls", "smtp_user_env",
    "smtp_password_env", "mail_from", "mail_to", "timeout",
}  # fmt: skip


@dataclass(frozen=True)
class NotifySettings:
    events: tuple[str, ...] = EVENTS
    webhook_url_env: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_user_env: str | None = None
    smtp_password_env: str | None = None
    mail_from: str = "thorbis-runbook@localhost"
    mail_to: tuple[str, ...] = field(default_factory=tuple)
    timeout: float = 10.0


@dataclass(frozen=True)
class Delivery:
    """One attempt to notify: which channel, which event, whether it arrived."""

    channel: str
    event: str
    delivered: bool
    detail: str = ""


def settings_for(target: Target) -> NotifySettings | None:
    """Parse the target's ``notify`` table; None when it has none. Raises ConfigError."""
    raw = target.options.get("notify")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"targets.{target.name}.notify must be a table", "see notify.py for the keys"
        )
    reject_unknown_keys(raw, _KEYS, where=f"targets.{target.name}.notify")
    events = tuple(raw.get("events", EVENTS))
    bad = sorted(set(events) - set(EVENTS))
    if bad:
        raise ConfigError(
            f"targets.{target.name}.notify.events has {', '.join(bad)}", f"use: {', '.join(EVENTS)}"
        )
    return NotifySettings(
        events=events, webhook_url_env=raw.get("webhook_url_env"), smtp_host=raw.get("smtp_host"),
        smtp_port=int(raw.get("smtp_port", 25)), smtp_starttls=bool(raw.get("smtp_starttls", False)),
        smtp_user_env=raw.get("smtp_user_env"), smtp_password_env=raw.get("smtp_password_env"),
        mail_from=str(raw.get("mail_from", "thorbis-runbook@localhost")),
        mail_to=tuple(raw.get("mail_to", ())), timeout=float(raw.get("timeout", 10)),
    )  # fmt: skip


def notify(
    target: Target, event: str, payload: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> list[Delivery]:
    """Send ``event`` on every configured channel; return what happened, never raise."""
    env = os.environ if env is None else env
    try:
        chosen = settings_for(target)
    except ConfigError as exc:
        log.error("notifications not sent: %s", exc)
        return [Delivery("config", event, False, str(exc))]
    if chosen is None or event not in chosen.events:
        return []
    message = {"event": event, "target": target.name, **payload}
    deliveries = []
    if chosen.webhook_url_env:
        deliveries.append(_webhook(chosen, event, message, env))
    if chosen.smtp_host and chosen.mail_to:
        deliveries.append(_email(chosen, event, message, env))
    for delivery in deliveries:
        if not delivery.delivered:
            log.warning(
                "notification %s via %s not delivered: %s", event, delivery.channel, delivery.detail
            )
    return deliveries


def _webhook(
    chosen: NotifySettings, event: str, message: Mapping[str, Any], env: Mapping[str, str]
) -> Delivery:
    import urllib.error
    import urllib.request

    url = env.get(chosen.webhook_url_env or "", "")
    if not url:
        return Delivery(
            "webhook", event, False, f"environment variable {chosen.webhook_url_env} is not set"
        )
    request = urllib.request.Request(
        url, data=json.dumps(message, default=str).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "thorbis-runbook"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=chosen.timeout) as response:
            return Delivery(
                "webhook", event, 200 <= response.status < 300, f"HTTP {response.status}"
            )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # The URL may carry a token: name only the failure, never the address.
        return Delivery(
            "webhook", event, False, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        )


def _email(
    chosen: NotifySettings, event: str, message: Mapping[str, Any], env: Mapping[str, str]
) -> Delivery:
    import smtplib
    from email.message import EmailMessage

    mail = EmailMessage()
    mail["Subject"] = (
        f"[thorbis-runbook] {message.get('runbook', 'run')} {event} on {message.get('target')}"
    )
    mail["From"] = chosen.mail_from
    mail["To"] = ", ".join(chosen.mail_to)
    mail.set_content(json.dumps(message, indent=2, default=str))
    try:
        with smtplib.SMTP(chosen.smtp_host or "", chosen.smtp_port, timeout=chosen.timeout) as smtp:
            if chosen.smtp_starttls:
                smtp.starttls()
            user = env.get(chosen.smtp_user_env or "", "")
            if user:
                smtp.login(user, env.get(chosen.smtp_password_env or "", ""))
            smtp.send_message(mail)
    except (smtplib.SMTPException, OSError) as exc:
        detail = f"{type(exc).__name__}: {exc}"
        password = env.get(chosen.smtp_password_env or "", "")
        return Delivery(
            "email", event, False, detail.replace(password, "***") if password else detail
        )
    return Delivery("email", event, True, f"to {len(chosen.mail_to)} recipient(s)")
