"""Alerts while a run goes, and the judging behind them: one message per crossing, its recovery,
the rate limit, delivery off the caller's thread, and the guard's thresholds refused when wrong."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from thorbis_runbook import signals
from thorbis_runbook.alerts import Alerter
from thorbis_runbook.config import Target, settings_from_mapping
from thorbis_runbook.errors import ConfigError
from thorbis_runbook.probes import ProbeTiming
from thorbis_runbook.sessions import Session
from thorbis_runbook.signals import Rates, Sample
from thorbis_runbook.thresholds import Thresholds, load_thresholds


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _SlowHook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    delay: ClassVar[float] = 0.0

    def do_POST(self) -> None:
        time.sleep(_SlowHook.delay)
        _SlowHook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    _SlowHook.received, _SlowHook.delay = [], 0.0
    server = HTTPServer(("127.0.0.1", 0), _SlowHook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _target(**notify: Any) -> Target:
    return Target(name="staging", options={"notify": {"webhook_url_env": "HOOK", **notify}})


def test_one_alert_per_crossing_then_its_recovery_and_a_rate_limit_per_name() -> None:
    clock = _Clock()
    alerter = Alerter(None, every_ms=60_000, clock=clock)
    for _ in range(5):  # crossed on five samples in a row: told once
        alerter.update("error_rate_warn", crossed=True, message="2 % rolled back")
    clock.now = 10
    alerter.update("error_rate_warn", crossed=False)
    clock.now = 20  # crossed again within the minute: recorded, not told yet
    alerter.update("error_rate_warn", crossed=True, message="3 % rolled back")
    clock.now = 71  # still crossed once the window has passed: told now
    alerter.update("error_rate_warn", crossed=True, message="3 % rolled back")
    alerter.update("error_rate_warn", crossed=True, message="3 % rolled back")
    records = alerter.close()
    assert [(r.event, r.sent.split(":")[0]) for r in records] == [
        ("alert", "no notify channel (no target)"),
        ("recovered", "no notify channel (no target)"),
        ("alert", "rate-limited"),
        ("alert", "no notify channel (no target)"),
    ]
    assert records[1].message == "recovered: 2 % rolled back"
    assert alerter.raised() == ["error_rate_warn"]


def test_an_event_alert_has_no_recovery_and_names_are_independent() -> None:
    alerter = Alerter(None, every_ms=60_000, clock=_Clock())
    alerter.update("deadlock", crossed=True, message="1 deadlock(s)", event_only=True)
    alerter.update("deadlock", crossed=False, event_only=True)
    alerter.update("disk_used_warn_pct", crossed=True, message="81 % full")
    assert [(r.name, r.event) for r in alerter.close()] == [
        ("deadlock", "alert"), ("disk_used_warn_pct", "alert"),
    ]  # fmt: skip


def test_delivery_runs_off_the_callers_thread_and_arrives(hook: str) -> None:
    _SlowHook.delay = 1.0
    alerter = Alerter(_target(), every_ms=60_000, env={"HOOK": hook}, context={"runbook": "apply"})
    began = time.monotonic()
    alerter.update("probe_latency_fail", crossed=True, level="fail", message="probe 2100 ms")
    assert time.monotonic() - began < 0.5  # a slow webhook never stalls the sampler
    assert alerter.records()[0].sent == "sending"
    (record,) = alerter.close()
    assert record.sent == "delivered (webhook)"
    assert _SlowHook.received == [{
        "event": "alert", "target": "staging", "runbook": "apply",
        "alert": "probe_latency_fail", "level": "fail", "message": "probe 2100 ms",
    }]  # fmt: skip


def test_a_channel_that_is_down_is_recorded_never_raised() -> None:
    url = f"http://user:hook-secret-token@127.0.0.1:{_free_port()}/hook"
    alerter = Alerter(_target(timeout=2), every_ms=0, env={"HOOK": url})
    alerter.update("blocked_warn", crossed=True, message="pid 7 waits 1.2 s")
    alerter.update("blocked_warn", crossed=False)
    records = alerter.close()
    assert [r.event for r in records] == ["alert", "recovered"]
    assert all(r.sent.startswith("not delivered (webhook: ") for r in records), records
    assert all("hook-secret-token" not in r.sent for r in records)
    unset = Alerter(_target(), every_ms=0, env={})
    unset.update("blocked_warn", crossed=True, message="x")
    assert "HOOK is not set" in unset.close()[0].sent


def _sample(**values: Any) -> Sample:
    base: dict[str, Any] = dict(
        at=datetime.now(UTC), elapsed_s=1.0, connections=3, active=1, idle=1,
        idle_in_transaction=0, waiting=0, max_wait_ms=0, longest_pid=None, longest_ms=None,
        longest_query=None, deadlocks=0,
    )  # fmt: skip
    return Sample(**{**base, **values})


def _waiter(app: str, wait_ms: int) -> Session:
    now = datetime.now(UTC)
    return Session(now, 42, "app", app, "10.0.0.9", "active", now, 5_000, 5_000, 5_000,
                   "SELECT * FROM orders", (7,), "public.orders", "AccessShareLock", wait_ms)  # fmt: skip


def test_crossings_and_strain_name_what_suffers() -> None:
    limits = Thresholds()
    quiet = signals.crossings(_sample(probe_ms=3.0, error_rate=0.0, disk_used_pct=40.0), [], limits)
    assert not [c for c in quiet if c.crossed] and signals.strain_reasons(quiet) == []
    latest = [ProbeTiming(datetime.now(UTC), 1.0, "orders", 2_000.0, False, "timed out")]
    found = signals.crossings(
        _sample(probe_ms=2_000.0, error_rate=7.5, disk_used_pct=91.0, deadlocks=1),
        [_waiter("shop", 2_500), _waiter("thorbis-runbook probe", 9_000)], limits,
        latest_round=latest,
    )  # fmt: skip
    crossed = {c.name for c in found if c.crossed}
    assert crossed == {
        "probe_latency_warn", "probe_latency_fail", "probe_failed", "error_rate_warn",
        "error_rate_fail", "disk_used_warn_pct", "disk_used_fail_pct", "blocked_warn",
        "max_app_wait", "deadlock",
    }  # fmt: skip
    strain = signals.strain_reasons(found)
    assert any("probe latency 2000 ms (probe 'orders')" in s for s in strain)
    # Our own probe waiting is not an application session waiting.
    assert any("pid 42 waits 2.5 s" in s for s in strain) and not any("9.0 s" in s for s in strain)


def test_a_probe_slower_than_its_start_warns_past_the_floor() -> None:
    def runs(name: str, values: list[float]) -> list[ProbeTiming]:
        return [ProbeTiming(datetime.now(UTC), float(i), name, v, True)
                for i, v in enumerate(values)]  # fmt: skip

    history = runs("a", [10, 11, 10, 30, 31, 32]) + runs("b", [0.3, 0.3, 0.3, 0.9, 0.9, 0.9])
    found = signals.crossings(
        _sample(probe_ms=32.0), [], Thresholds(), baselines=signals.baseline(history),
        recent=signals.recent(history),
    )  # fmt: skip
    (slower,) = [c for c in found if c.name == "degradation_warn_pct"]
    # a tripled 10 ms probe warns; a tripled 0.3 ms one is noise under the floor
    assert slower.crossed and "'a' takes 31 ms against 10 ms" in slower.message
    assert "'b'" not in slower.message


def test_rates_leave_out_our_own_transactions_and_wait_for_enough_to_judge() -> None:
    rates = Rates()
    first = rates.update(0.0, commits=100, rollbacks=0, own_commits=0, own_rollbacks=0, wal=0.0)
    assert first["error_rate"] is None and first["commits_per_s"] is None
    # Our sampler committed 10 of these and one probe timed out: the application did nothing.
    quiet = rates.update(1.0, commits=110, rollbacks=1, own_commits=10, own_rollbacks=1, wal=8192.0)
    assert quiet["commits_per_s"] == 0 and quiet["rollbacks_per_s"] == 0
    assert quiet["error_rate"] is None and quiet["wal_bytes_per_s"] == 8192
    storm = rates.update(2.0, commits=130, rollbacks=31, own_commits=20, own_rollbacks=1, wal=None)
    assert storm["error_rate"] == 75.0 and storm["wal_bytes_per_s"] is None
    assert rates.archive_failures(3, "t1", None) == 0
    assert rates.archive_failures(5, "t1", "t2") == 2  # failing since the last success


def _limits(tmp_path: Path, top: dict[str, Any], own: dict[str, Any] | None = None) -> Thresholds:
    target: dict[str, Any] = {"dsn_env": "X", **({"thresholds": own} if own else {})}
    data = {"runbook": {"default_target": "t"}, "targets": {"t": target}, "thresholds": top}
    settings = settings_from_mapping(data, root=tmp_path, env={})
    return load_thresholds(settings, settings.target("t"))


def test_guard_thresholds_parse_with_their_units(tmp_path: Path) -> None:
    limits = _limits(
        tmp_path, {"max_app_wait": "3s", "probe_latency_warn": "250ms", "error_rate_warn": "2%",
                   "disk_used_fail_pct": 95, "migration_time_warn": "30min"},
        {"probe_latency_fail": "5s"},
    )  # fmt: skip
    assert (limits.max_app_wait, limits.probe_latency_warn, limits.probe_latency_fail) == (
        3_000,
        250,
        5_000,
    )
    assert (limits.error_rate_warn, limits.disk_used_fail_pct) == (2.0, 95.0)
    assert limits.migration_time_warn == 1_800_000


@pytest.mark.parametrize(
    ("values", "what"),
    [
        ({"error_rate_fail": 150}, "is not a percentage from 0 to 100"),
        ({"disk_used_warn_pct": "2s"}, "is not a percentage"),
        ({"connections_warn_pct": -5}, "is not a percentage"),
        ({"probe_latency_fail": "10MB"}, "is not a duration"),
        ({"max_app_wait": 1.5}, "is not a duration"),
        ({"error_rate_warn": 10}, "sets error_rate_warn above error_rate_fail"),
        ({"probe_latency_warn": "3s"}, "sets probe_latency_warn above probe_latency_fail"),
    ],
)
def test_guard_thresholds_of_the_wrong_unit_are_refused(
    tmp_path: Path, values: dict[str, Any], what: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _limits(tmp_path, values)
    assert what in caught.value.message and caught.value.hint


def test_a_probe_that_errors_fast_alerts_but_does_not_throttle() -> None:
    latest = [ProbeTiming(datetime.now(UTC), 1.0, "renamed", 0.4, False, "relation does not exist")]
    found = signals.crossings(_sample(probe_ms=0.4), [], Thresholds(), latest_round=latest)
    (failed,) = [c for c in found if c.name == "probe_failed"]
    assert failed.crossed and "relation does not exist" in failed.message
    assert signals.strain_reasons(found) == []
