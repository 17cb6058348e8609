"""Schema snapshots: the normalized pg_dump --schema-only of a target, taken before apply.

schema_only rollback and the rehearsal compare the schema after undoing a run with one.
"""

from __future__ import annotations

import difflib
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from .. import pgtools
from ..config import Settings, Target
from ..endpoint import Endpoint


@dataclass(frozen=True)
class SchemaSnapshot:
    """The normalized schema (pg_dump --schema-only) of a target at one moment."""

    snapshot_id: str
    target: str
    created_at: str
    schema: str
    run_id: str | None = None


def snapshot_root(settings: Settings, target: Target) -> Path:
    return settings.state_dir / "snapshots" / target.name


def new_snapshot_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def dump_schema(endpoint: Endpoint) -> str:
    """Return the normalized schema of a database (the runbook's own schema left out)."""
    text = pgtools.run(
        endpoint.tools, "pg_dump", ["--schema-only", "--exclude-schema=runbook", "--no-password"],
        dsn=endpoint.dsn, what="schema snapshot",
    )  # fmt: skip
    return normalize_schema(text)


def normalize_schema(text: str) -> str:
    """Drop what differs between two dumps of the same schema: comments, SETs, blank lines.

    pg_dump 17.6+ also writes ``\\restrict KEY`` lines with a random key, so every psql
    meta-command line goes too.
    """
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("--", "\\")):
            continue
        if stripped.startswith("SET ") or stripped.startswith("SELECT pg_catalog.set_config("):
            continue
        kept.append(line.rstrip())
    return "\n".join(kept) + "\n"


def schema_diff(before: str, after: str, *, limit: int = 40) -> list[str]:
    """Return the differing lines ('-' only before, '+' only after), each with its statement."""
    old, new = before.splitlines(), after.splitlines()
    lines = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(
        None, old, new, autojunk=False
    ).get_opcodes():
        if tag in ("replace", "delete"):
            lines += [f"- {_in_statement(old, i)}" for i in range(i1, i2)]
        if tag in ("replace", "insert"):
            lines += [f"+ {_in_statement(new, j)}" for j in range(j1, j2)]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def take_snapshot(endpoint: Endpoint, *, run_id: str | None = None) -> SchemaSnapshot:
    """Dump and store the target's normalized schema (the schema_only rollback compares with it)."""
    now = datetime.now(UTC)
    snapshot = SchemaSnapshot(
        new_snapshot_id(now), endpoint.name, now.isoformat(), dump_schema(endpoint), run_id
    )
    folder = snapshot_root(endpoint.settings, endpoint.target)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{snapshot.snapshot_id}.json").write_text(
        json.dumps(asdict(snapshot)), encoding="utf-8"
    )
    return snapshot


def run_snapshot(settings: Settings, target: Target, run_id: str) -> SchemaSnapshot | None:
    """Return the newest snapshot taken for ``run_id`` before it applied, or None.

    Never another run's: the snapshot of an earlier run differs by every change made since,
    and comparing with it would report those as differences the rollback left.
    """
    folder = snapshot_root(settings, target)
    found = [
        SchemaSnapshot(**json.loads(p.read_text(encoding="utf-8")))
        for p in sorted(folder.glob("*.json")) if folder.is_dir()
    ]  # fmt: skip
    mine = [s for s in found if s.run_id == run_id]
    return max(mine, key=lambda s: s.created_at) if mine else None


def _in_statement(lines: list[str], index: int) -> str:
    """A line with the statement it belongs to, so 'loyalty_tier text' names its table."""
    line = lines[index]
    if not line[:1].isspace():
        return line.strip()
    for back in range(index - 1, -1, -1):
        if not lines[back][:1].isspace():
            return f"{line.strip().rstrip(',')} (in {lines[back].strip().rstrip('(').strip()})"
    return line.strip()
