"""Fleet runs on this machine: one change across a fleet, wave by wave, in a bounded process pool.

`prepare` checks everything a fleet run needs before any member is touched (the change and its
pin, the members, every member's change policy and connection settings, the parameters) and
reads from the archive which members are done. `run_fleet` then runs the rest: a pool of
spawned processes, each running one member at a time through fleet_member.run_member (whose
runbooks are papermill kernels of their own), at most `parallel` members of a wave at once.
Past a wave's failure budget no new member starts, running ones finish, later waves never
start. The fleet's records are ledger lines (kind "fleet"), and a member's runs are ordinary
archived runs, so a fleet run killed at any moment loses nothing: run it again and the members
that succeeded are skipped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from . import archive, changes, fleets, ledger, pipeline, promotion, redaction, signing
from .config import Settings, guard_production
from .errors import ConfigError
from .fleet_member import FAILED, MemberResult, new_fleet_run_id, record, record_member, run_member
from .fleet_status import MemberState, fleet_entries, member_states, resume_command
from .fleets import Fleet, Member
from .pins import PinnedSet, pin_folder
from .runs import operator_name
from .waves import Wave, plan

log = logging.getLogger(__name__)
SUCCEEDED, BUDGET_EXCEEDED, INTERRUPTED = "succeeded", "budget exceeded", "interrupted"
# Parameters the fleet sets per member itself; a -p value would give every member the same one.
_FLEET_PARAMETERS = ("run_id", "target", "change_id", "report_dir", "config_path")
_busy = threading.Lock()  # held by a pool process while it runs a member
_current = ""  # the member a pool process is running, for its log lines


@dataclass(frozen=True)
class FleetPlan:
    """A fleet run checked and laid out: members in waves, and which are done already."""

    fleet: Fleet
    change_id: str
    fleet_run: str
    runbooks: tuple[str, ...]
    members: tuple[Member, ...]
    waves: tuple[Wave, ...]
    states: Mapping[str, MemberState]
    parameters: Mapping[str, Sequence[str]] = field(default_factory=dict)
    operator: str = ""

    def member(self, name: str) -> Member:
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, Member]:
        return {member.name: member for member in self.members}

    def to_run(self, wave: Wave) -> tuple[str, ...]:
        return tuple(name for name in wave.members if not self.states[name].done)

    @property
    def resume_command(self) -> str:
        return resume_command(self.fleet.name, self.change_id, self.runbooks)


@dataclass(frozen=True)
class FleetResult:
    """What a fleet run did: each member's result, and how it ended (and why)."""

    plan: FleetPlan
    results: tuple[MemberResult, ...]
    outcome: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == SUCCEEDED

    def rows(self) -> list[tuple[object, ...]]:
        """One row per member, in wave order: member, wave, outcome, seconds, runs, error."""
        done = {result.member: result for result in self.results}
        rows: list[tuple[object, ...]] = []
        for wave in self.plan.waves:
            for name in wave.members:
                result = done.get(name)
                if result is not None:
                    seconds = f"{result.seconds:.1f}" if result.seconds is not None else ""
                    runs = " ".join(run_id for _, run_id, _ in result.runs)
                    status = "rolled back" if result.rolled_back else result.status
                    rows.append((name, wave.name, status, seconds, runs, result.error))
                elif self.plan.states[name].done:
                    rows.append((name, wave.name, "done before", "", "", ""))
                else:
                    rows.append((name, wave.name, "not started", "", "", ""))
        return rows

    def counts(self) -> dict[str, int]:
        found = [str(row[2]) for row in self.rows()]
        return {state: found.count(state) for state in dict.fromkeys(found)}


def prepare(
    settings: Settings, name: str, *, change_id: str, runbooks: str = "",
    pairs: Sequence[str] = (), confirm_production: bool = False,
) -> FleetPlan:  # fmt: skip
    """Check a fleet run before anything starts, and lay it out.

    Raises ConfigError (a malformed change id, an unknown fleet, a bad runbook list or
    parameter, a member's DSN variable unset, a fleet without members), ChangeNotFound,
    ChangeRefused (a file differs from the pin, a member's policy refuses),
    ConfirmationRequired (a production member without --confirm-production) and
    ConnectionFailed (the catalog is unreachable): each before any member is touched.
    """
    changes.check_change_id(change_id)
    signing.load_signer(settings)  # a missing or wrong signing key refuses the whole fleet run
    fleet = fleets.load_fleet(settings, name)
    chosen = fleets.parse_runbooks(runbooks, where="--runbooks") if runbooks else fleet.runbooks
    root = ledger.reports_root(settings)
    change = changes.load_change(root, change_id)
    current = pin_folder(settings.migrations_dir)
    members = fleets.resolve_members(settings, fleet)
    if not members:
        raise ConfigError(
            f"fleet {name} has no members (its catalog query returned no rows)",
            "check the catalog, or see what it returns with: thorbis-runbook fleet list " + name,
        )
    waves = plan(fleet.waves, [m.name for m in members], fleet=name)
    given = _parameters(settings, chosen, pairs, confirm_production=confirm_production)
    typed = {
        runbook: pipeline.parse_parameters(
            pipeline.notebook_path(settings, runbook), given.get(runbook, ())
        )
        for runbook in chosen
    }
    operator = operator_name()
    for member in members:
        _preflight(settings, change, member, typed, operator=operator, current=current)
    states = member_states(
        ledger.entries(root), change_id=change_id, members=[m.name for m in members],
        runbooks=chosen,
    )  # fmt: skip
    return FleetPlan(
        fleet, change_id, new_fleet_run_id(), chosen, members, waves, states, given, operator
    )


def run_fleet(
    settings: Settings, fleet_plan: FleetPlan, *,
    progress: Callable[[MemberResult], None] | None = None,
) -> FleetResult:  # fmt: skip
    """Run the members that are not done, wave by wave; record the fleet run in the ledger.

    Returns how it ended: succeeded (every member done), failed (a member failed within its
    wave's budget), budget exceeded (later waves not started) or interrupted (Ctrl-C: running
    members finished, nothing new started).
    """
    _record_started(settings, fleet_plan)
    results: list[MemberResult] = []
    outcome, reason = SUCCEEDED, ""
    workers = max((min(w.spec.parallel, len(fleet_plan.to_run(w))) for w in fleet_plan.waves),
                  default=1)  # fmt: skip
    pool = _Pool(max(1, workers))
    try:
        last: Wave | None = None
        for wave in fleet_plan.waves:
            todo = fleet_plan.to_run(wave)
            if not todo:
                continue
            if last is not None and _paused(last, wave):
                outcome, reason = INTERRUPTED, f"interrupted in the pause before wave {wave.name}"
                break
            last = wave
            found, stop = _run_wave(settings, fleet_plan, wave, todo, pool, progress)
            results.extend(found)
            archive.write_pages(settings)
            if stop:
                outcome, reason = stop
                break
        if outcome == SUCCEEDED and any(not result.ok for result in results):
            failed = sum(not result.ok for result in results)
            outcome, reason = FAILED, f"{failed} member(s) failed within their wave's budget"
    finally:
        pool.shutdown()
    result = FleetResult(fleet_plan, tuple(results), outcome, reason)
    record(settings, fleet_plan.fleet, fleet_plan.change_id, fleet_plan.fleet_run, "finished",
           outcome=outcome, reason=reason, counts=result.counts())  # fmt: skip
    archive.write_pages(settings)
    return result


def _run_wave(
    settings: Settings, fleet_plan: FleetPlan, wave: Wave, todo: Sequence[str],
    pool: _Pool, progress: Callable[[MemberResult], None] | None,
) -> tuple[list[MemberResult], tuple[str, str] | None]:  # fmt: skip
    """One wave: start members while the budget allows, at most `parallel` at once.

    Returns the results and, when the fleet must stop, its outcome and reason.
    """
    record(settings, fleet_plan.fleet, fleet_plan.change_id, fleet_plan.fleet_run, "wave",
           wave=wave.name, members=list(todo), parallel=wave.spec.parallel,
           allowed_failures=wave.allowed_failures)  # fmt: skip
    # Each running member, and the pool generation it was started in (a pool whose process
    # died fails every member it was running at once: it is replaced once).
    queue, running = deque(todo), dict[Future[MemberResult], tuple[str, int]]()
    results: list[MemberResult] = []
    failures, interrupted = 0, False
    while queue or running:
        while queue and not interrupted and len(running) < wave.spec.parallel \
                and not wave.exceeded(failures):  # fmt: skip
            name = queue.popleft()
            running[pool.submit(settings, fleet_plan, name, wave.name)] = (name, pool.generation)
        if not running:
            break
        try:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: %d running member(s) finish, no new one starts",
                        len(running))  # fmt: skip
            continue
        for future in finished:
            name, generation = running.pop(future)
            result, broken = _result_of(settings, fleet_plan, future, name, wave)
            failures += not result.ok
            results.append(result)
            if progress is not None:
                progress(result)
            if broken and generation == pool.generation:
                pool.replace()
    if interrupted:
        return results, (INTERRUPTED, f"interrupted during wave {wave.name}")
    if wave.exceeded(failures):
        reason = (
            f"wave {wave.name} exceeded its failure budget: {failures} failed, "
            f"{wave.allowed_failures} allowed ({wave.spec.failure_budget} of {len(wave.members)})"
        )
        record(settings, fleet_plan.fleet, fleet_plan.change_id, fleet_plan.fleet_run,
               "budget exceeded", wave=wave.name, failed=failures,
               allowed=wave.allowed_failures, not_started=list(queue))  # fmt: skip
        return results, (BUDGET_EXCEEDED, reason)
    return results, None


def _result_of(
    settings: Settings, fleet_plan: FleetPlan, future: Future[MemberResult], name: str, wave: Wave
) -> tuple[MemberResult, bool]:
    """A finished member's result; a pool process that died makes it a failure, recorded here
    (the process could not), and says the pool must be replaced."""
    try:
        return future.result(), False
    except BrokenProcessPool:
        error = (
            "the process running this member died (killed, or out of memory); its runs may "
            "be incomplete"
        )
        broken = True
    except Exception as exc:  # a result that could not come back: the member's failure
        error, broken = f"{type(exc).__name__}: {exc}", False
    result = MemberResult(name, wave.name, FAILED, error=redaction.scrub(error))
    record_member(settings, fleet_plan.fleet, fleet_plan.change_id, fleet_plan.fleet_run, result)
    return result, broken


def _paused(last: Wave, wave: Wave) -> bool:
    """Wait the pause the wave that ran last asks for; True when Ctrl-C ended it."""
    pause_ms = last.spec.pause_ms
    if pause_ms <= 0:
        return False
    log.info("pausing %.0f s before wave %s (Ctrl-C stops here; run again to resume)",
             pause_ms / 1000, wave.name)  # fmt: skip
    try:
        time.sleep(pause_ms / 1000)
    except KeyboardInterrupt:
        return True
    return False


def _record_started(settings: Settings, fleet_plan: FleetPlan) -> None:
    """The fleet run's first record: who, which change and runbooks, every member and wave."""
    wave_of = {name: wave.name for wave in fleet_plan.waves for name in wave.members}
    record(
        settings, fleet_plan.fleet, fleet_plan.change_id, fleet_plan.fleet_run, "started",
        operator=fleet_plan.operator, runbooks=list(fleet_plan.runbooks),
        source=fleet_plan.fleet.source,
        waves=[wave.spec.to_dict() for wave in fleet_plan.waves],
        members=[
            {"member": m.name, "wave": wave_of[m.name], "connection": m.connection,
             "state": fleet_plan.states[m.name].state}
            for m in fleet_plan.members
        ],
    )  # fmt: skip


def _parameters(
    settings: Settings, runbooks: Sequence[str], pairs: Sequence[str], *, confirm_production: bool
) -> dict[str, list[str]]:
    """-p pairs per runbook, checked once for every member; the ids each member gets itself
    are refused."""
    for pair in pairs:
        name = pair.partition("=")[0].rpartition(".")[2]
        if name in _FLEET_PARAMETERS:
            raise ConfigError(
                f"parameter {name} cannot be given to a fleet run",
                "each member's runs get their own run id, target and report folder; the change "
                "is given with --change",
            )
    confirm = ["confirm_production=true"] if confirm_production else []
    return pipeline.distribute_parameters(settings, runbooks, [*pairs, *confirm])


def _preflight(
    settings: Settings, change: changes.Change, member: Member,
    typed: Mapping[str, Mapping[str, Any]], *, operator: str, current: PinnedSet,
) -> None:  # fmt: skip
    """What would refuse this member's runs, found before any member starts (``typed``: each
    runbook's parameters)."""
    target = member.target
    if target.dsn_env and not os.environ.get(target.dsn_env, "").strip():
        raise ConfigError(
            f"fleet member {member.name} reads its DSN from the environment variable "
            f"{target.dsn_env}, which is not set",
            f"export {target.dsn_env} (keep the password in ~/.pgpass or PGPASSWORD), or take "
            "the member out of the fleet",
        )
    for runbook, values in typed.items():
        dry_run = values.get("dry_run") is True
        if runbook == "apply" and not dry_run:
            guard_production(
                target, "the fleet run would apply to it",
                confirmed=values.get("confirm_production") is True,
                hint="review with fleet run --dry-run, then run again with --confirm-production",
            )  # fmt: skip
        promotion.require_allowed(
            change, target, operator=operator, runbook=runbook, settings=settings,
            dry_run=dry_run, current=current,
        )  # fmt: skip


def fleet_state(
    settings: Settings, name: str, *, change_id: str, runbooks: str = ""
) -> tuple[Fleet, tuple[Member, ...], tuple[Wave, ...], tuple[str, ...], dict[str, MemberState]]:
    """Where the fleet's members stand on the change now (members resolved again).

    The runbooks that count are ``runbooks``, else those of the latest fleet run of this
    change, else the fleet's. Raises what prepare raises for the fleet, change and members.
    """
    changes.check_change_id(change_id)
    signing.load_signer(settings)  # a missing or wrong signing key refuses the whole fleet run
    fleet = fleets.load_fleet(settings, name)
    root = ledger.reports_root(settings)
    changes.load_change(root, change_id)
    entries = ledger.entries(root)
    if runbooks:
        chosen = fleets.parse_runbooks(runbooks, where="--runbooks")
    else:
        started = [e for e in fleet_entries(entries, fleet=name, change_id=change_id)
                   if e.get("event") == "started"]  # fmt: skip
        chosen = tuple(started[-1].get("runbooks") or fleet.runbooks) if started else fleet.runbooks
    members = fleets.resolve_members(settings, fleet)
    waves = plan(fleet.waves, [m.name for m in members], fleet=name)
    states = member_states(
        entries, change_id=change_id, members=[m.name for m in members], runbooks=chosen
    )
    return fleet, members, waves, chosen, states


# -- pool processes ---------------------------------------------------------------------------
class _Pool:
    """A pool of spawned processes (a clean interpreter each, nothing inherited but the
    environment), replaced whole when one of its processes dies."""

    def __init__(self, workers: int) -> None:
        self.workers, self.generation = workers, 0
        self.executor = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_pool_process_started, initargs=(os.getpid(),),
        )  # fmt: skip

    def submit(
        self, settings: Settings, fleet_plan: FleetPlan, name: str, wave: str
    ) -> Future[MemberResult]:
        """Start one member; only what its run needs travels to the process, not the plan."""
        return self.executor.submit(
            _member_task, settings, fleet_plan.fleet, fleet_plan.member(name),
            fleet_plan.runbooks, fleet_plan.change_id, fleet_plan.fleet_run, wave,
            fleet_plan.parameters,
        )  # fmt: skip

    def replace(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor, self.generation = self._new(), self.generation + 1

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _member_task(
    settings: Settings, fleet: Fleet, member: Member, runbooks: tuple[str, ...], change_id: str,
    fleet_run: str, wave: str, parameters: Mapping[str, Sequence[str]],
) -> MemberResult:  # fmt: skip
    """One member, in a pool process; holds the busy lock so an orphaned process finishes it."""
    global _current
    with _busy:
        _current = member.name
        try:
            return run_member(
                settings, fleet, member, runbooks, change_id, fleet_run, wave=wave,
                parameters=parameters,
            )  # fmt: skip
        finally:
            _current = ""


def _pool_process_started(parent: int) -> None:
    """Set up a pool process: Ctrl-C is the parent's to handle (a member's migration is never
    cut off by it), log lines are scrubbed and name the member, and the process ends once
    its parent is gone (killed) and the member it was running has finished and been recorded."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ours = logging.getLogger("thorbis_runbook")
    # Our warnings; the libraries' errors only (nbconvert's notes would repeat per member).
    for logger, level in ((ours, logging.WARNING), (logging.getLogger(), logging.ERROR)):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_MemberFormatter("%(levelname)s: %(message)s"))
        handler.setLevel(level)
        redaction.guard(logger, handler)
        logger.addHandler(handler)
    ours.propagate = False
    threading.Thread(target=_end_with_parent, args=(parent,), daemon=True).start()


def _end_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    with _busy:  # the member in hand finishes and is recorded first
        os._exit(0)


class _MemberFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"[{_current}] {text}" if _current else text


__all__ = ["FleetPlan", "FleetResult", "fleet_state", "prepare", "run_fleet"]
