"""Alerts while a run goes: a threshold crossed is told once, its recovery once, off the sampler.

The monitor judges each sample against the thresholds and tells this module which limits are
crossed right now. A limit newly crossed sends one notification with event ``alert`` through
the target's notify channels, and one with ``recovered`` when it clears. At most one ``alert``
per limit goes out per ``alert_every``: a limit that flaps is told again only once the window
has passed and it is still crossed. Delivery runs in a thread of its own, so a slow webhook
never stalls sampling, and a channel that is down is recorded, never raised.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import notify, redaction
from .config import Target

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)
ALERT_COLUMNS = ("at", "name", "event", "level", "message", "sent")
SENDING = "sending"
# How long the end of a run waits for notifications still being sent.
DRAIN_S = 5.0


@dataclass(frozen=True)
class AlertRecord:
    """One alert raised or recovered, and what became of its notification."""

    at: datetime
    name: str  # the threshold crossed: "probe_latency_fail", "error_rate_warn", "deadlock", ...
    event: str  # "alert" or "recovered"
    level: str  # "warn" or "fail"
    message: str
    sent: str = (
        SENDING  # "delivered (webhook)", "not delivered (webhook: ...)", "rate-limited", ...
    )

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in ALERT_COLUMNS)


@dataclass
class _State:
    raised: bool = False
    told: bool = False  # whether this raise's alert went out (or was handed to delivery)
    last_sent: float | None = None
    level: str = "warn"
    message: str = ""


@dataclass(frozen=True)
class _Job:
    index: int
    event: str
    payload: Mapping[str, Any] = field(default_factory=dict)


class Alerter:
    """Turn crossed limits into notifications: one per crossing, rate-limited per limit name."""

    def __init__(
        self,
        target: Target | None,
        *,
        every_ms: int,
        env: Mapping[str, str] | None = None,
        context: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.every_ms = every_ms
        self._env = env
        self._context = dict(context or {})
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._records: list[AlertRecord] = []
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    def update(self, name: str, *, crossed: bool, level: str = "warn", message: str = "",
               event_only: bool = False) -> None:  # fmt: skip
        """Say whether limit ``name`` is crossed now; an event-only limit (a deadlock) has no
        recovery message."""
        state = self._states.setdefault(name, _State())
        now = self._clock()
        if crossed:
            if not state.raised:
                state.raised, state.told = True, False
                state.level, state.message = level, message
                if not self._window_open(state, now):
                    self._record(name, "alert", level, message, "rate-limited: told less than "
                                 f"{self.every_ms / 1000:g} s ago, told again if it lasts")  # fmt: skip
            if not state.told and self._window_open(state, now):
                state.told, state.last_sent = True, now
                self._send(name, "alert", level, message)
        elif state.raised:
            state.raised = False
            if state.told and not event_only:
                state.last_sent = now
                self._send(name, "recovered", state.level, f"recovered: {state.message}")

    def raised(self) -> list[str]:
        """The limits crossed at the last update, by name."""
        return [name for name, state in self._states.items() if state.raised]

    def records(self) -> tuple[AlertRecord, ...]:
        with self._lock:
            return tuple(self._records)

    def close(self, wait_s: float = DRAIN_S) -> tuple[AlertRecord, ...]:
        """Wait up to ``wait_s`` for notifications in flight; return every record."""
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(timeout=wait_s)
            self._worker = None
        with self._lock:
            self._records = [
                replace(r, sent="not delivered: still sending when the run ended")
                if r.sent == SENDING
                else r
                for r in self._records
            ]
            return tuple(self._records)

    def _window_open(self, state: _State, now: float) -> bool:
        return state.last_sent is None or (now - state.last_sent) * 1000 >= self.every_ms

    def _record(self, name: str, event: str, level: str, message: str, sent: str) -> int:
        with self._lock:
            self._records.append(
                AlertRecord(datetime.now(UTC), name, event, level, redaction.scrub(message), sent)
            )
            return len(self._records) - 1

    def _send(self, name: str, event: str, level: str, message: str) -> None:
        log_level = logging.INFO if event == "recovered" else logging.WARNING
        log.log(log_level, "%s %s: %s", event, name, message)
        if self.target is None:
            self._record(name, event, level, message, "no notify channel (no target)")
            return
        index = self._record(name, event, level, message, SENDING)
        payload = {**self._context, "alert": name, "level": level,
                   "message": redaction.scrub(message)}  # fmt: skip
        self._jobs.put(_Job(index, event, payload))
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._deliver, name="thorbis-runbook-alerts", daemon=True
            )
            self._worker.start()

    def _deliver(self) -> None:
        while (job := self._jobs.get()) is not None:
            assert self.target is not None
            try:
                deliveries = notify.notify(self.target, job.event, job.payload, self._env)
                sent = _outcome(deliveries)
            except Exception as exc:  # a notification must never break the run it reports on
                sent = f"not delivered ({type(exc).__name__})"
            with self._lock:
                self._records[job.index] = replace(self._records[job.index], sent=sent)


def _outcome(deliveries: list[notify.Delivery]) -> str:
    if not deliveries:
        return "no notify channel for this event"
    parts = [
        f"{d.channel}" if d.delivered else f"{d.channel}: {redaction.scrub(d.detail)}"
        for d in deliveries
    ]
    if all(d.delivered for d in deliveries):
        return f"delivered ({', '.join(parts)})"
    return f"not delivered ({'; '.join(parts)})"


def frame(records: tuple[AlertRecord, ...]) -> pandas.DataFrame:
    """The alerts as a table, one row per alert or recovery."""
    import pandas as pd

    return pd.DataFrame([r.as_tuple() for r in records], columns=list(ALERT_COLUMNS))
