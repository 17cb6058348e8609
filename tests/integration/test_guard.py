"""The guard on a real server: probes, health signals, alerts sent while the run goes, strain."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import write_migrations
from tests.webhook import Webhook
from thorbis_runbook import charts, migrate, runbook
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.errors import ConfigError
from thorbis_runbook.migrate import ApplyRequest
from thorbis_runbook.monitor import Monitor, MonitorResult
from thorbis_runbook.sessions import Session
from thorbis_runbook.signals import Sample

Conn = psycopg2.extensions.connection


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    """A local webhook receiver; its URL is in GUARD_HOOK."""
    with Webhook() as hook:
        monkeypatch.setenv("GUARD_HOOK", hook.url)
        yield hook


@pytest.fixture
def guarded(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Settings]:
    """Settings for target `test` on this test's database, with [guard] and target options."""
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)

    def build(guard: dict[str, Any] | None = None, **target: Any) -> Settings:
        data = {
            "runbook": {"migrations_dir": str(tmp_path / "migrations"), "default_target": "test"},
            "targets": {"test": {"dsn_env": "THORBIS_TEST_DSN", **target}},
            "guard": {"probe_interval": "200ms", **(guard or {})},
        }
        return settings_from_mapping(data, root=tmp_path, env={})

    return build


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _storm(dsn: str, stop: threading.Event) -> None:
    """Fail transaction after transaction, as an application in trouble does."""
    connection = psycopg2.connect(dsn, application_name="storming-app")
    connection.autocommit = True
    try:
        with connection.cursor() as cur:
            while not stop.is_set():
                try:
                    cur.execute("SELECT 1 / 0")
                except psycopg2.Error:
                    time.sleep(0.005)
    finally:
        connection.close()


def test_an_error_storm_during_apply_sends_the_error_rate_alert_then_its_recovery(
    tmp_path: Path, conn: Conn, pg_database: str, guarded: Callable[..., Settings], webhook: Webhook
) -> None:
    # The migration waits for an advisory lock this test holds, so the run lasts until the
    # test lets it finish.
    write_migrations(tmp_path / "migrations",
                     {"20250301000001_wait.sql": "SELECT pg_advisory_xact_lock(4242);\n"})  # fmt: skip
    settings = guarded(
        probes=[{"name": "one", "sql": "SELECT 1"}], notify={"webhook_url_env": "GUARD_HOOK"},
        lock_timeout="60s", backup_before_apply="none",
    )  # fmt: skip
    endpoint = resolve(settings)
    stop = threading.Event()
    storm = threading.Thread(target=_storm, args=(pg_database, stop), daemon=True)
    applied: list[migrate.ApplyResult] = []
    run = threading.Thread(
        target=lambda: applied.append(migrate.apply(endpoint, ApplyRequest(monitor=False)))
    )
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(4242)")
    monitor = Monitor.for_endpoint(endpoint).start()
    try:
        run.start()
        storm.start()

        def raised() -> bool:
            return any(m.get("alert") == "error_rate_fail" for m in webhook.received)

        assert _wait_for(raised, 20), webhook.received
        assert run.is_alive()  # the alert arrived while the migration was still running
        stop.set()
        storm.join()

        def recovered() -> bool:
            return any(m["event"] == "recovered" and m["alert"] == "error_rate_fail"
                       for m in webhook.received)  # fmt: skip

        assert _wait_for(recovered, 20), webhook.received
    finally:
        stop.set()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(4242)")
        run.join(timeout=60)
        result = monitor.stop()
    assert applied and applied[0].ok
    alert = next(m for m in webhook.received if m.get("alert") == "error_rate_fail")
    assert alert["event"] == "alert" and alert["target"] == "test" and alert["level"] == "fail"
    assert "rolled back" in alert["message"]
    # One alert per crossing: the storm lasted many samples, the webhook heard it once.
    assert sum(m == alert for m in webhook.received) == 1
    assert max(s.error_rate or 0 for s in result.samples) >= 50
    sent = [a for a in result.alerts if a.name == "error_rate_fail"]
    assert [a.event for a in sent] == ["alert", "recovered"]
    assert all(a.sent.startswith("delivered") for a in sent), sent
    # Our runner waited on a lock all along, but it is not the application: no blocked alert.
    assert not [a for a in result.alerts if a.name in ("blocked_warn", "max_app_wait")]
    assert "alerts during the run" in result._repr_html_()


def test_a_probe_blocked_behind_a_lock_times_out_while_sampling_goes_on(
    conn: Conn, pg_database: str, guarded: Callable[..., Settings]
) -> None:
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.orders (id int PRIMARY KEY)")
    settings = guarded(
        guard={"probe_timeout": "400ms"},
        probes=[{"name": "orders", "sql": "SELECT count(*) FROM public.orders"}],
        thresholds={"probe_latency_warn": "300ms"},
    )
    heard: list[tuple[Sample, tuple[Session, ...]]] = []

    def broken(sample: Sample, waits: tuple[Session, ...]) -> None:
        raise RuntimeError("a listener with a bug")

    holder = psycopg2.connect(pg_database, application_name="long-migration-stand-in")
    monitor = Monitor.for_endpoint(
        resolve(settings), listeners=[broken, lambda s, w: heard.append((s, w))]
    ).start()
    try:
        assert _wait_for(lambda: monitor.result().probes != (), 5)
        assert monitor.strain() is None
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE")
        assert _wait_for(lambda: any(not t.ok for t in monitor.result().probes), 5)
        blocked_at = len(monitor.result().samples)
        time.sleep(1.0)
        sampled_meanwhile = len(monitor.result().samples) - blocked_at
        strain = monitor.strain()
        holder.rollback()
        assert _wait_for(lambda: monitor.result().probes[-1].ok, 5)
    finally:
        holder.close()
        result = monitor.stop()
    failed = [t for t in result.probes if not t.ok]
    assert failed[0].name == "orders" and failed[0].ms == 400.0
    assert failed[0].error == "timed out"
    # The 250 ms sampler kept going while the probe waited out its timeout.
    assert sampled_meanwhile >= 2
    assert strain is not None and "probe latency 400 ms" in strain and "'orders'" in strain
    assert max(s.probe_ms or 0 for s in result.samples) == 400.0
    # The broken listener was logged; the other one heard every sample after it.
    assert len(heard) == len(result.samples)
    assert result.error is None


def test_bad_probes_are_refused_before_anything_runs(
    conn: Conn, guarded: Callable[..., Settings]
) -> None:
    cases = {
        "SELEC 1": "does not parse",
        "DELETE FROM public.nowhere": "is not a query (it is DELETE)",
        "WITH gone AS (DELETE FROM t RETURNING 1) SELECT * FROM gone": "changes data",
        "SELECT 1; SELECT 2": "holds 2 statements",
        "SELECT * FROM public.nowhere": "failed when run once read-only",
        "SELECT pg_advisory_lock(1)": "pg_advisory_lock",
    }
    for text, expected in cases.items():
        settings = guarded(probes=[{"name": "app read", "sql": text}])
        with pytest.raises(ConfigError) as caught:
            Monitor.for_endpoint(resolve(settings))
        assert expected in caught.value.message and "'app read'" in caught.value.message
        assert caught.value.hint
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert cur.fetchone() == (0,)
    with pytest.raises(ConfigError, match="probe_timeout"):
        Monitor.for_endpoint(resolve(guarded(guard={"probe_timeout": "1MB"})))


def test_default_probes_that_cannot_run_yet_are_left_out_with_a_note(
    guarded: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = guarded()
    data = {
        "runbook": dict(settings.sections.get("runbook", {}))
        or {"migrations_dir": str(tmp_path / "migrations"), "default_target": "test"},
        "targets": {"test": {"dsn_env": "THORBIS_TEST_DSN"}},
        "benchmark": {"queries": [
            {"name": "works", "sql": "SELECT now()"},
            {"name": "not yet", "sql": "SELECT * FROM business_core.businesses"},
        ]},
    }  # fmt: skip
    monitor = Monitor.for_endpoint(resolve(settings_from_mapping(data, root=tmp_path, env={})))
    assert [p.name for p in monitor._probe_list] == ["works"]
    with monitor:
        time.sleep(0.3)
    notes = " ".join(monitor.result().notes)
    assert "'not yet' is not used as a probe" in notes and "does not exist" in notes


def test_signals_show_the_database_working_and_the_report_charts_them(
    conn: Conn, pg_database: str, guarded: Callable[..., Settings]
) -> None:
    settings = guarded(probes=[{"name": "one", "sql": "SELECT 1"}])
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.events (id serial PRIMARY KEY, payload text)")
    with Monitor.for_endpoint(resolve(settings)) as monitor:
        writer = psycopg2.connect(pg_database, application_name="writing-app")
        writer.autocommit = True
        deadline = time.monotonic() + 2.5
        with writer.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("INSERT INTO public.events (payload) SELECT repeat('x', 500) "
                            "FROM generate_series(1, 50)")  # fmt: skip
        writer.close()
        time.sleep(1.2)  # backends report their counters about once a second
    result: MonitorResult = monitor.result()
    assert max(s.commits_per_s or 0 for s in result.samples) > 10
    assert max(s.wal_bytes_per_s or 0 for s in result.samples) > 10_000
    assert all(s.replication_lag_bytes is None for s in result.samples)  # no standby here
    # The embedded server runs on this machine: its data directory's disk is measured.
    used = [s.disk_used_pct for s in result.samples]
    assert all(u is not None and 0 < u <= 100 for u in used), (used, result.notes)
    assert result.samples[-1].probe_ms is not None
    saved = json.loads(json.dumps(result.to_dict(max_points=5), default=str))
    assert len(saved["samples"]) <= 6 and "wal_bytes_per_s" in saved["samples"][0]
    assert saved["probes"] and saved["limits"]["probe_latency_fail"] == 2000
    chart = charts.monitor_signals(result)
    assert chart is not None and chart.png.startswith(b"\x89PNG")
    group = charts.ChartGroup((chart,), result.alerts_html())
    assert "data:image/png;base64," in group._repr_html_()


def test_the_apply_report_charts_the_health_series_and_keeps_them_in_the_summary(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "20250301000001_fill.sql").write_text(
        "CREATE TABLE public.filled AS SELECT g AS id, md5(g::text) AS memo\n"
        "  FROM generate_series(1, 300000) AS g;\nSELECT pg_sleep(0.6);\n"
    )
    config = tmp_path / "runbook.toml"
    config.write_text(f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "t"\n'
                      '[targets.t]\ndsn_env = "THORBIS_GUARD_DSN"\nbackup_before_apply = "none"\n')  # fmt: skip
    monkeypatch.setenv("THORBIS_GUARD_DSN", pg_database)
    rb = runbook.start("apply", config_path=str(config), report_dir=str(tmp_path / "out"))
    rb.apply()
    shown = rb.chart_monitor()
    assert isinstance(shown, charts.ChartGroup)
    assert [c.title for c in shown.charts] == [
        "sessions and lock waits during apply", "the application's health during apply",
    ]  # fmt: skip
    assert "No alert was raised" in shown._repr_html_()
    rb.finish()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    monitored = summary["figures"]["monitor"]
    assert monitored["samples"] and "wal_bytes_per_s" in monitored["samples"][0]
    assert monitored["limits"]["error_rate_fail"] == 5.0


def test_the_disk_is_read_where_the_target_says_and_not_measured_is_said_once(
    tmp_path: Path, guarded: Callable[..., Settings]
) -> None:
    here = tmp_path / "pgdata"
    here.mkdir()
    with Monitor.for_endpoint(resolve(guarded(data_directory=str(here)))) as monitor:
        time.sleep(0.6)
    assert all(s.disk_used_pct is not None for s in monitor.result().samples)
    gone = tmp_path / "elsewhere"
    with Monitor.for_endpoint(resolve(guarded(data_directory=str(gone)))) as monitor:
        time.sleep(0.6)
    result = monitor.result()
    assert len(result.samples) >= 2 and all(s.disk_used_pct is None for s in result.samples)
    said = [n for n in result.notes if n.startswith("free disk not measured")]
    assert said == [f"free disk not measured: data_directory {gone} is not a folder here"]
