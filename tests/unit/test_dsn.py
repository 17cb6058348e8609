"""DSN redaction and password splitting: never raising, and reading every string as libpq does."""

from __future__ import annotations

import psycopg2.extensions
import pytest

from thorbis_runbook.dsn import (
    database_of,
    password_candidates,
    redact_dsn,
    scrub_passwords,
    split_password,
    with_database,
)

# (DSN, the password a person meant) for every form libpq accepts, and some it does not.
CORPUS = [
    ("postgresql://app:Hunter2-pw@db.example:5432/thorbis", "Hunter2-pw"),
    ("postgres://app:Hunter2-pw@db/thorbis?sslmode=require", "Hunter2-pw"),
    ("postgresql://app@db/thorbis?sslmode=require&password=Hunter2-pw", "Hunter2-pw"),
    ("postgresql://app:Hunter2%40pw@db/thorbis", "Hunter2@pw"),
    ("postgresql://app:Hunt%3Aer%2F2@db/thorbis", "Hunt:er/2"),
    # an unencoded "@": libpq splits at the first one, a person at the last
    ("postgresql://app:Hunter2@Tail-99@db.example/thorbis", "Hunter2@Tail-99"),
    # ":" and "/" unencoded: libpq takes no credentials at all and reads a port and a database
    ("postgresql://app:Sl@sh:c0lon/Pw-77zz@/thorbis?host=/tmp/s", "Sl@sh:c0lon/Pw-77zz"),
    ("postgresql://app:Hunter2-pw?x@db/thorbis", "Hunter2-pw?x"),
    # an IPv6 host without its "]": libpq refuses it, urlsplit raised
    ("postgresql://app:Hunter2-pw@[::1/thorbis", "Hunter2-pw"),
    ("postgresql://app:Hunter2-pw@[::1:5432/thorbis", "Hunter2-pw"),
    ("postgresql://app:Hunter2-pw@[fe80::1]:5432,[::1/thorbis", "Hunter2-pw"),
    ("postgresql://app:Hun[ter2-pw@db/thorbis", "Hun[ter2-pw"),
    ("host=db user=app password=Hunter2-pw dbname=thorbis", "Hunter2-pw"),
    ("host=db password = Hunter2-pw", "Hunter2-pw"),
    ("host=db password='Hunter 2\\'s pw' dbname=x", "Hunter 2's pw"),
    ("host=db password=Hun\\ ter2 dbname=x", "Hun ter2"),
    ("host=db password='Hunter2-unterminated", "Hunter2-unterminated"),
    ("host=db sslpassword=Hunter2-key user", "Hunter2-key"),
    ("host=db user password=Hunter2-pw", "Hunter2-pw"),
    ("host=db options='-c  search_path=x' password=Hunter2-pw dbname=x", "Hunter2-pw"),
]


def _libpq(dsn: str) -> dict[str, str] | None:
    try:
        return dict(psycopg2.extensions.parse_dsn(dsn))
    except psycopg2.Error:
        return None


@pytest.mark.parametrize(("dsn", "meant"), CORPUS)
def test_redaction_never_raises_and_hides_the_password_however_it_is_read(
    dsn: str, meant: str
) -> None:
    parsed = _libpq(dsn)
    for shown in (redact_dsn(dsn), redact_dsn(dsn, parsed)):
        assert meant not in shown, shown
        assert "***" in shown, shown
        if parsed and parsed.get("password"):
            assert parsed["password"] not in shown, shown
    assert meant in password_candidates(dsn, parsed)


@pytest.mark.parametrize(("dsn", "meant"), CORPUS)
def test_split_password_means_to_libpq_what_the_whole_string_meant(dsn: str, meant: str) -> None:
    bare, password = split_password(dsn)
    whole = _libpq(dsn)
    if whole is None:
        return  # libpq will say what is wrong with it; nothing to agree with
    assert password == whole.get("password")
    without = {key: value for key, value in whole.items() if key != "password"}
    assert _libpq(bare) == without


def test_a_host_made_of_half_a_password_is_hidden_in_libpq_messages() -> None:
    dsn = "postgresql://app:Hunter2@Tail-99@db.example/thorbis"
    message = 'could not translate host name "Tail-99@db.example" to address: Name unknown'
    scrubbed = scrub_passwords(message, password_candidates(dsn, _libpq(dsn)))
    assert "Tail-99" not in scrubbed and "db.example" in scrubbed


def test_a_port_made_of_a_password_piece_is_hidden() -> None:
    dsn = "postgresql://app:Sl@sh:c0lon/Pw-77zz@/thorbis?host=/tmp/s"
    message = 'invalid integer value "c0lon" for connection option "port"'
    assert "c0lon" not in scrub_passwords(message, password_candidates(dsn, _libpq(dsn)))


def test_database_rewriting_survives_what_urlsplit_refuses() -> None:
    dsn = "postgresql://app:Hun[ter2@db/thorbis?sslmode=require"
    moved = with_database(dsn, "scratch")
    assert _libpq(moved) == {**(_libpq(dsn) or {}), "dbname": "scratch"}
    assert database_of(dsn) == "thorbis"
    named = "postgresql://app@db/?dbname=named&sslmode=require"
    assert database_of(named, {}) == "named"
    assert _libpq(with_database(named, "scratch")) == {**(_libpq(named) or {}), "dbname": "scratch"}
