"""The one-round-trip batch: a migration's statements, each followed by a marker, in one text.

Apply sends a migration, its verify script, its history row and COMMIT to the server at once;
this is that text, with where each file sits in it, so an error maps back to a file and line:
by the position the server reports, or else by the last statement marker it reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .executor import marker_sql
from .statements import Statement, line_of


@dataclass
class Batch:
    """A one-round-trip transaction text, where each file sits in it, and its statement markers.

    A marker (executor.marker_sql) follows every statement; the last one the server reached
    before an error says which statements completed, so the next one is the statement that
    failed when the error carries no position, and the migration never runs a second time to
    find it. The last item, the history write and COMMIT, belongs to no file. Markers follow
    rather than precede, so a session's query as pg_stat_activity shows it starts with the
    migration's own first statement.
    """

    parts: list[str] = field(default_factory=list)
    segments: list[tuple[int, int, str, str, int]] = field(default_factory=list)
    items: list[tuple[str, int] | None] = field(default_factory=list)
    length: int = 0

    def add(
        self, text: str, *, source: str | None = None, source_text: str = "", at: int = 0
    ) -> None:
        if source is not None:
            self.segments.append((self.length, self.length + len(text), source, source_text, at))
        self.parts.append(text)
        self.length += len(text)

    def add_statements(
        self, source: str, source_text: str, statements: Sequence[Statement]
    ) -> None:
        """Add each statement with its marker, remembering where it sits in its file."""
        for statement in statements:
            at = source_text.find(statement.text, statement.offset)
            self.items.append((source, line_of(source_text, at) if at >= 0 else statement.line))
            self.add(statement.text, source=source, source_text=source_text, at=max(at, 0))
            self.add(f"{terminator(statement.text)}{marker_sql(len(self.items) - 1)}")

    def end(self, text: str) -> None:
        """Add the closing part (history row, COMMIT), which no file holds."""
        self.items.append(None)
        self.add(text)

    def text(self) -> str:
        return "".join(self.parts)

    def locate(self, position: int | None, reached: int | None) -> tuple[str, int] | None:
        """Map the server's 1-based error position, else the markers reached, to (file, line)."""
        if position is not None:
            offset = position - 1
            for start, end, source, source_text, at in self.segments:
                if start <= offset < end:
                    return source, line_of(source_text, at + offset - start)
        failing = 0 if reached is None else reached + 1
        return self.items[failing] if failing < len(self.items) else None


def terminator(text: str) -> str:
    """The semicolon after a statement: on a line of its own when a -- comment ends the text."""
    return "\n;\n" if "--" in text.rsplit("\n", 1)[-1] else ";\n"
