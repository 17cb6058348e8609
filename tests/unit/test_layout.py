"""The package's shape: imports point one way, down the layers of DESIGN.md, never in a circle.

Every import counts, wherever it stands (module level, inside a function, under
TYPE_CHECKING): a circle held together by a function-local import is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "thorbis_runbook"

# Bottom to top. A module may import modules of its own layer or below, never above; a new
# module has to be placed here, which is the moment to decide where it belongs.
LAYERS: tuple[tuple[str, ...], ...] = (
    # foundation: configuration, connections, the embedded server, the shared models
    ("errors", "config", "dsn", "display", "queries", "embedded", "db", "redaction", "pgtools",
     "endpoint", "pooler", "checks", "thresholds", "probes", "sessions", "summary", "notify",
     "alerts", "ledger",
     "ledger_verify", "signing", "parameters", "kernels"),
    # migration files and what the database says about them
    ("statements", "sql_text", "migrations", "pins", "plan", "history", "resume"),
    # the engine: executors, runs under the lock, applying a plan; the plain verbs on it
    ("executor", "batch", "backfill", "failures", "circuit", "runs", "anchor", "apply", "status",
     "baseline", "scaffold", "column_facts", "expand_contract_files", "expand_contract", "seed",
     "project"),
    # around a change: the ways back, the guard, checks before and after
    ("recovery", "recovery.result", "recovery.target_run", "recovery.snapshot",
     "recovery.backup", "recovery.down_scripts", "recovery.restore", "recovery.pitr",
     "recovery.rollback", "signals", "monitor", "breaker", "lint_context", "lint_plpgsql",
     "lint_maintenance", "lint_rules", "lint", "precheck", "troubleshoot",
     "expectations", "integrity", "rls", "statement_stats", "benchmark", "amcheck", "validate",
     "charts", "traced_locks"),
    # verbs that compose the layers below
    ("migrate", "rehearse", "lock_trace"),
    # a change and a fleet: what was pinned, approved and promoted, read back from the ledger;
    # a fleet's members, waves and standing
    ("changes", "promotion", "waves", "fleets", "fleet_status"),
    # the notebooks' facade and the archive; a fleet's members run through the pipeline
    ("runbook", "sql_archive", "report", "change_record", "change_chart", "page_html",
     "change_evidence", "change_page", "fleet_page", "index_page", "pages", "archive",
     "pipeline", "fleet_member", "fleet_run", "fleet_airflow", "fleet_dag"),
    # the shell
    ("cli", "lint_output", "arguments", "output", "progress_bars", "change_verb", "fleet_verb",
     "reports_verb", "backfill_verb", "__init__"),
)  # fmt: skip
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        is_package = parts[-1] == "__init__" and len(parts) > 1
        name = ".".join(parts[:-1]) if is_package else ".".join(parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules ``name`` imports, resolved from relative and absolute imports."""
    package = [] if name == "__init__" else name.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level:
                base = package[: len(package) - node.level + 1]
                targets |= _resolve(base, node.module or "", names, modules)
            elif (node.module or "").startswith("thorbis_runbook"):
                module = (node.module or "").removeprefix("thorbis_runbook").lstrip(".")
                targets |= _resolve([], module, names, modules)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("thorbis_runbook."):
                    targets.add(alias.name.removeprefix("thorbis_runbook."))
    targets.discard(name)
    return targets


def _resolve(base: list[str], module: str, names: list[str], modules: set[str]) -> set[str]:
    prefix = ".".join([*base, *([module] if module else [])])
    found = set()
    for imported in names:
        candidate = f"{prefix}.{imported}" if prefix else imported
        if candidate in modules:
            found.add(candidate)  # from . import apply: the module itself
        elif prefix:
            found.add(prefix)  # from .apply import StepResult: the module holding it
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    names = set(modules)
    return {name: _imports(name, path, names) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer_and_imports_point_down() -> None:
    graph = _graph()
    unplaced = sorted(set(graph) - set(RANK))
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if RANK[target] > RANK[module]
    ]
    assert upward == []


def test_no_package_import_hides_inside_a_function() -> None:
    hidden = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (
                    inner.level or (inner.module or "").startswith("thorbis_runbook")
                ):
                    hidden.append(f"{name}:{inner.lineno}")
    assert hidden == []
