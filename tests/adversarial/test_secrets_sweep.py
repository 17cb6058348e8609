"""The secrets sweep: every verb with a password in every form, then grep everything for it.

Two roles log in with a password: conftest's PASSWORD_ROLE, and one whose password holds "@",
":" and "/". Each form of giving the password (a URL, key=value, PGPASSWORD, .pgpass, malformed
URLs, the wrong password, a closed port) runs every verb in-process, and `run` executes the
runbooks with -p values. Then every captured stdout and stderr, every file of the archive and
the state folder, and every row of the runbook tables is searched for the password, raw and
percent-encoded.
"""

from __future__ import annotations

import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest
from psycopg2 import sql

from tests.conftest import PASSWORD, PASSWORD_ROLE, _require_password_for, write_migrations
from thorbis_runbook import cli, embedded, redaction

REPO = Path(__file__).resolve().parents[2]
SYMBOL_ROLE = "runbook_pw_symbols"
SYMBOL_PASSWORD = "Sl@sh:c0lon/Pw-77zz"
MIGRATIONS = {
    "20250101000000_create_items.sql": "CREATE TABLE items (id int PRIMARY KEY);",
    "20250101000000_create_items.verify.sql": "SELECT 1 FROM items LIMIT 1;",
    "20250101000000_create_items.down.sql": "DROP TABLE items;",
    "20250102000000_index_items.sql": "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_ix ON items (id);",
    "20250102000000_index_items.down.sql": "DROP INDEX CONCURRENTLY IF EXISTS items_ix;",
}
VERBS = (
    ("status",), ("lint", "--target", "test"), ("precheck",), ("apply",), ("troubleshoot",),
    ("validate", "--no-baseline"), ("benchmark",), ("backup",), ("backups",), ("rehearse",),
    ("rollback", "--strategy", "schema_only"), ("status", "--json"),
    ("backfill", "pause", "--reason", "sweep"), ("backfill", "status"), ("backfill", "resume"),
)  # fmt: skip


@dataclass
class Sweep:
    """The sweep's project, databases and what it captured."""

    server: embedded.EmbeddedStatus
    root: Path
    config: Path
    databases: dict[str, str]  # role -> database it owns
    outputs: list[str] = field(default_factory=list)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _admin(
    server: embedded.EmbeddedStatus, statement: sql.Composable, database: str = "postgres"
) -> None:
    conn = psycopg2.connect(server.uri(database))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def sweep(
    pg_server: embedded.EmbeddedStatus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sweep]:
    _require_password_for(pg_server, SYMBOL_ROLE, SYMBOL_PASSWORD)
    _admin(pg_server, sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(SYMBOL_ROLE)))
    databases = {}
    for role in (PASSWORD_ROLE, SYMBOL_ROLE):
        name = f"sweep_{role}"
        _admin(pg_server, sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
            sql.Identifier(name), sql.Identifier(role)))  # fmt: skip
        _admin(
            pg_server, sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)), name
        )
        databases[role] = name
    root = tmp_path_factory.mktemp("sweep")
    migrations = write_migrations(root / "migrations", MIGRATIONS)
    config = root / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{migrations}"\nstate_dir = "{root / "state"}"\n'
        'default_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_SWEEP_DSN"\nlock_wait = "2s"\n'
        f'backup_before_apply = "schema"\npg_bin_dir = "{pg_server.bin_dir()}"\n'
        f'[notebooks]\ndir = "{REPO / "notebooks"}"\n[reports]\ndir = "{root / "reports"}"\n'
        "[benchmark]\nruns = 2\nwarmup = 0\nmin_difference_ms = 60000.0\n"  # timings are not what this sweep tests
        '[[benchmark.queries]]\nname = "items"\nsql = "SELECT count(*) FROM pg_class"\n'
    )
    yield Sweep(pg_server, root, config, databases)
    for name in databases.values():
        _admin(
            pg_server,
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
        )
    _admin(pg_server, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(SYMBOL_ROLE)))


@dataclass(frozen=True)
class Form:
    """One way of giving the password: the password given, the DSN, where else it is."""

    password: str
    dsn: str
    works: bool = True  # whether the login succeeds
    pgpassword: bool = False  # the password in PGPASSWORD
    pgpass: str = ""  # a ~/.pgpass line


def _forms(sweep: Sweep) -> dict[str, Form]:
    """Every form, by name. URL templates take {role}, {password} and {db} (the role's database)."""
    socket, port = sweep.server.socket_dir, _closed_port()
    one = {"role": PASSWORD_ROLE, "password": PASSWORD, "db": sweep.databases[PASSWORD_ROLE]}
    two = {"role": SYMBOL_ROLE, "password": SYMBOL_PASSWORD, "db": sweep.databases[SYMBOL_ROLE]}
    url = "postgresql://{role}:{password}@/{db}?host=" + str(socket)
    bare = "postgresql://{role}@/{db}?host=" + str(socket)
    key_value = f"host={socket} dbname={{db}} user={{role}} password='{{password}}'"
    escaped = SYMBOL_PASSWORD.replace(":", "\\:")
    wrong = {**one, "password": PASSWORD + "-Wr0ng"}
    return {
        "url": Form(PASSWORD, url.format(**one)),
        "key=value": Form(PASSWORD, key_value.format(**one).replace("'", "")),
        "PGPASSWORD": Form(PASSWORD, bare.format(**one), pgpassword=True),
        ".pgpass": Form(PASSWORD, bare.format(**one), pgpass=f"*:*:{one['db']}:{PASSWORD_ROLE}:{PASSWORD}"),
        "symbols, encoded url": Form(SYMBOL_PASSWORD, url.format(**{**two, "password": quote(SYMBOL_PASSWORD, safe="")})),
        "symbols, key=value": Form(SYMBOL_PASSWORD, key_value.format(**two)),
        "symbols, .pgpass": Form(SYMBOL_PASSWORD, bare.format(**two), pgpass=f"*:*:*:{SYMBOL_ROLE}:{escaped}"),
        "symbols, unencoded url": Form(SYMBOL_PASSWORD, url.format(**two), works=False),
        # as a person meant it the password is PASSWORD@Tail-99; libpq reads a host "Tail-99@..."
        "unencoded @": Form(PASSWORD, "postgresql://{role}:{password}@Tail-99@127.0.0.1:{port}/{db}".format(**one, port=port), works=False),
        "missing ]": Form(PASSWORD, "postgresql://{role}:{password}@[::1/{db}".format(**one), works=False),
        "missing ] with port": Form(PASSWORD, "postgresql://{role}:{password}@[::1:{port}/{db}".format(**one, port=port), works=False),
        "wrong password": Form(wrong["password"], url.format(**wrong), works=False),
        "closed port": Form(PASSWORD, "postgresql://{role}:{password}@127.0.0.1:{port}/{db}".format(**one, port=port), works=False),
    }  # fmt: skip


FORMS = (
    "url", "key=value", "PGPASSWORD", ".pgpass", "symbols, encoded url", "symbols, key=value",
    "symbols, .pgpass", "symbols, unencoded url", "unencoded @", "missing ]",
    "missing ] with port", "wrong password", "closed port",
)  # fmt: skip


def _use_form(sweep: Sweep, name: str, monkeypatch: pytest.MonkeyPatch) -> Form:
    """Set the environment of one form: the DSN variable, PGPASSWORD, HOME with its .pgpass."""
    form = _forms(sweep)[name]
    home = sweep.root / "home" / name.replace(" ", "_").replace(",", "")
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.setenv("THORBIS_OPERATOR", "sweeper")
    monkeypatch.setenv("THORBIS_SWEEP_DSN", form.dsn)
    if form.pgpassword:
        monkeypatch.setenv("PGPASSWORD", form.password)
    if form.pgpass:
        pgpass = home / ".pgpass"
        pgpass.write_text(form.pgpass + "\n")
        pgpass.chmod(stat.S_IRUSR | stat.S_IWUSR)
    redaction.forget()  # each form must be found by this process's own gathering
    return form


def _cli(sweep: Sweep, capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["--config", str(sweep.config), *args])
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, (args, err)
    return code, out + err


def _forms_of(password: str) -> tuple[str, ...]:
    """The password raw and percent-encoded, and the piece of a malformed one libpq misreads."""
    return (password, quote(password, safe=""), quote(password), "Tail-99")


def _assert_nowhere(sweep: Sweep, password: str, outputs: list[str]) -> None:
    """The password (raw or percent-encoded) in no output, archived file, state file or table row."""
    secrets = _forms_of(password)
    for number, text in enumerate(outputs):
        for secret in secrets:
            assert secret not in text, f"output {number} holds the password: {text[:2000]}"
    for folder in (sweep.root / "reports", sweep.root / "state"):
        for path in (p for p in folder.rglob("*") if p.is_file()) if folder.exists() else ():
            content = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in content, f"{path} holds the password"
    for database in sweep.databases.values():
        for row in _runbook_rows(sweep.server, database):
            for secret in secrets:
                assert secret not in row, f"a runbook table row holds the password: {row}"


def _runbook_rows(server: embedded.EmbeddedStatus, database: str) -> list[str]:
    conn = psycopg2.connect(server.uri(database))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'runbook'"
            )
            rows = []
            for (table,) in cur.fetchall():
                cur.execute(
                    sql.SQL("SELECT row_to_json(t)::text FROM runbook.{} t").format(
                        sql.Identifier(table)
                    )
                )
                rows += [text for (text,) in cur.fetchall()]
            return rows
    finally:
        conn.close()


@pytest.mark.parametrize("form", FORMS)
def test_every_verb_keeps_the_password_out_of_every_output(
    sweep: Sweep, form: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    given = _use_form(sweep, form, monkeypatch)
    password, works = given.password, given.works
    outputs, codes = [], {}
    for verb in VERBS:
        code, output = _cli(sweep, capfd, *verb)
        codes[" ".join(verb)] = code
        outputs.append(output)
        if not works and verb != ("backups",):  # backups reads the state folder only
            assert code == 2 and output.startswith("error: "), (verb, output)
    if works:
        assert codes["status"] in (0, 1) and codes["apply"] == 0, (codes, outputs)
    _assert_nowhere(sweep, password, outputs)


@pytest.mark.parametrize("form", ["url", "symbols, key=value", "wrong password", "unencoded @"])
def test_the_runbooks_archive_no_password(
    sweep: Sweep, form: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    given = _use_form(sweep, form, monkeypatch)
    password, works = given.password, given.works
    outputs = []
    refused = [
        f"operator=postgresql://x:{password}@db/x",
        f"lock_timeout={password}",
        f"run_id={password}",
    ]
    for value in refused:
        code, output = _cli(sweep, capfd, "run", "apply", "-p", value)
        assert code == 2 and "looks like a credential" in output, output
        outputs.append(output)
    code, output = _cli(
        sweep, capfd, "run", "precheck", "apply", "validate", "-p", "operator=sweep-operator",
        "-p", "apply.lock_timeout=3s", "-p", "apply.statement_timeout=1min",
    )  # fmt: skip
    outputs.append(output)
    assert code == (0 if works else 1), output
    for verb in (("reports", "list"), ("reports", "verify")):
        code, output = _cli(sweep, capfd, *verb)
        assert code == 0, output
        outputs.append(output)
    _assert_nowhere(sweep, password, outputs)
