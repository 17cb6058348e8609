"""Lint findings in the formats a CI gate reads: text, JSON, GitHub annotations, GitLab Code Quality.

It works on check rows, the shape every check has, so `lint --trace` rows print the same
way. A row named ``RULE FILE:LINE ...`` is placed at that line of that file; others are
reported against the migrations folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .checks import Check, CheckReport
from .lint_rules import RULES

FORMATS = ("text", "json", "github", "gitlab")
_LOCATED = re.compile(r"^(?P<rule>[\w-]+) (?P<file>\S+):(?P<line>\d+)(?:\s|$)")
# GitLab's Code Quality severities: a fail blocks a deployment, a warning is worth a look.
_GITLAB_SEVERITY = {"fail": "critical", "warn": "minor"}


@dataclass(frozen=True)
class Annotation:
    """One warn or fail row, placed in a file where its name says where."""

    rule: str
    level: str  # "fail" or "warn"
    path: str
    line: int | None
    message: str


def annotate(report: CheckReport, path_of: Callable[[str], str]) -> list[Annotation]:
    """The report's warn and fail rows (allowed findings pass, so they are left out).

    ``path_of`` turns a migration's file name into the path a CI shows (relative to the
    repository); it is called with "" for a row that names no file.
    """
    return [_annotation(check, path_of) for check in report if check.status in ("fail", "warn")]


def render(report: CheckReport, fmt: str, *, path_of: Callable[[str], str]) -> str:
    """The report as JSON, GitHub workflow commands or GitLab Code Quality JSON."""
    if fmt == "json":
        return report.to_json()
    found = annotate(report, path_of)
    if fmt == "github":
        lines = [_github(a) for a in found]
        counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
        return "\n".join([*lines, f"{report.title}: {report.status} ({counts or 'no checks'})"])
    if fmt == "gitlab":
        return json.dumps(list(_gitlab(found)), indent=2)
    raise ValueError(f"unknown lint format {fmt!r}; one of {', '.join(FORMATS)}")


def fixes(report: CheckReport) -> list[tuple[str, str]]:
    """(rule, fix) for every rule that warned or failed, for the text output's footer."""
    rules = sorted({c.name.split()[0] for c in report if c.status in ("warn", "fail")})
    return [(rule, RULES[rule]) for rule in rules if rule in RULES]


def _annotation(check: Check, path_of: Callable[[str], str]) -> Annotation:
    match = _LOCATED.match(check.name)
    level = "fail" if check.status == "fail" else "warn"
    if match is None:
        return Annotation(check.name.split()[0], level, path_of(""), None, check.detail)
    line = int(match["line"])
    return Annotation(match["rule"], level, path_of(match["file"]), line, check.detail)


def _github(a: Annotation) -> str:
    """``::error file=F,line=L,title=RULE::message``, escaped as GitHub's toolkit escapes."""
    command = "error" if a.level == "fail" else "warning"
    properties = [f"file={_property(a.path)}"] if a.path else []
    if a.line is not None:
        properties.append(f"line={a.line}")
    properties.append(f"title={_property(a.rule)}")
    return f"::{command} {','.join(properties)}::{_data(a.message)}"


def _gitlab(found: list[Annotation]) -> Iterator[dict[str, object]]:
    """Code Quality issues; a finding keeps its fingerprint when lines above it move."""
    seen: dict[str, int] = {}
    for a in found:
        key = f"{a.rule}\0{a.path}\0{a.message}"
        seen[key] = seen.get(key, 0) + 1
        fingerprint = hashlib.sha256(f"{key}\0{seen[key]}".encode()).hexdigest()
        yield {
            "type": "issue",
            "check_name": a.rule,
            "description": f"{a.rule}: {a.message}",
            "categories": ["Bug Risk"],
            "severity": _GITLAB_SEVERITY[a.level],
            "fingerprint": fingerprint,
            "location": {"path": a.path, "lines": {"begin": a.line or 1}},
        }


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")
