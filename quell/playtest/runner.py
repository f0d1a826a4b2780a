"""Running a playbook's cases through the real engine, on a throwaway database.

Each case is one run of the real engine (journal, replaying interpreter, waits, leases) on a
SQLite database in a temporary folder, with a :class:`~quell.clock.ManualClock` of its own.
Only the action boundary is substituted (:class:`~quell.playtest.mocks.MockActions`). The
driver lets the engine go until nothing is running, then does what the outside world would:

- a pending approval, task or event gets the case's decision through the
  :class:`~quell.engine.waits.WaitService`, as a person (or a callback) would give it;
- when nothing is left to decide, the clock jumps to the next durable timer, retry or
  expiry the case lets run out, so waiting an hour takes no time;
- a wait the case has no decision for stops the run there (``status: waiting`` expects that).

Retries back off for no time and in-process delays of a few seconds are dropped: the test
pins what the playbook does, not how long it waits.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from quell import aio
from quell.clock import ManualClock
from quell.connectors.registry import Registry
from quell.engine.engine import Engine
from quell.engine.execution import IN_PROCESS_WAIT, callback_token
from quell.engine.service import RunService, RunView, StepView
from quell.engine.states import RunStatus
from quell.engine.store import PlaybookStore, RunStore
from quell.engine.waits import Wait, WaitService
from quell.ids import new_id
from quell.playbooks.ir import Playbook, Retry, StepKind, WaitKind
from quell.playtest.cases import EACH, Case, Decision
from quell.playtest.compare import Failure, Observed, StepResult, evaluate
from quell.playtest.mocks import Call, MockActions, Mocks, step_id_of
from quell.store import migrate
from quell.store.database import Database
from quell.store.schema import runs

DEFAULT_NOW = datetime(2026, 1, 1, tzinfo=UTC)
# Who writes and starts the run; decisions are by "playbook-test" (separation of duties).
ACTOR = "playbook-test:author"
MAX_JUMPS = 10_000  # clock jumps in one case: a timer loop that never ends is a failure
_SECRET = b"quell:playbook-test"
_MARK = re.compile(r"(\|\d+|#\d+|#bound|\[\d*\])$")  # branch, iteration, item markers


@dataclass
class CaseResult:
    """How one case went."""

    name: str
    failures: list[Failure]
    observed: Observed
    run: RunView | None = None

    @property
    def passed(self) -> bool:
        """Whether the run did what the case expects."""
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        """Plain data (the run as ``quell playbook run --wait --json`` prints it)."""
        return {
            "name": self.name,
            "passed": self.passed,
            "status": self.observed.status,
            "path": self.observed.path,
            "variables": self.observed.variables,
            "failures": [failure.as_dict() for failure in self.failures],
            "calls": [call.as_dict() for call in self.observed.calls],
            "run": self.run.as_dict() if self.run is not None else None,
        }


def instant(playbook: Playbook) -> Playbook:
    """The playbook with no time spent in the worker: retries back off for no time, and
    delays and timers short enough to be slept in-process are dropped. Longer ones stay
    durable timers, which the driver fast-forwards."""
    steps = {}
    for step_id, step in playbook.steps.items():
        changes: dict[str, Any] = {}
        if step.retry.max_attempts > 1:
            changes["retry"] = Retry(step.retry.max_attempts, 0.0, 0.0, 1.0)
        if step.delay is not None and step.delay <= IN_PROCESS_WAIT:
            changes["delay"] = None
        wait = step.wait
        if (
            wait is not None
            and wait.kind is WaitKind.TIMER
            and wait.duration is not None
            and wait.duration <= IN_PROCESS_WAIT
        ):
            changes["wait"] = replace(wait, duration=0.0)
        steps[step_id] = replace(step, **changes) if changes else step
    return replace(playbook, steps=steps)


def path_of(steps: Sequence[StepView]) -> list[str]:
    """The step ids a run went through, in order, each execution of a step once.

    A step key names the path to a step (``fan|1/poll#2/bump``), so a step that keeps no
    record of its own (``parallel``) is seen in the keys of the steps inside it; retries, a
    delay and the decisions of a loop are part of their step's execution. ``end`` steps
    record nothing, and a for_each's action body is its for_each.
    """
    seen: set[str] = set()
    path: list[str] = []
    for step in steps:
        prefix = ""
        for part in step.key.removesuffix("~delay").split("/"):
            step_id = _MARK.sub("", part)
            execution = prefix + step_id
            prefix += part + "/"
            if part.startswith("!") or execution in seen:
                continue  # ``!exception``: the handler's frame, not a step
            seen.add(execution)
            if not step_id.endswith(EACH):
                path.append(step_id)
    return path


def last_records(steps: Sequence[StepView]) -> dict[str, StepResult]:
    """Each step id's last journal record."""
    found: dict[str, StepResult] = {}
    for step in steps:
        if step.key.endswith("~delay"):
            continue
        found[step.step_id] = StepResult(step.status, step.output, step.error)
    return found


@dataclass
class _Decisions:
    """A case's decisions, each list taken in turn (the last one repeats)."""

    given: dict[str, list[Decision]]
    used: dict[str, int] = field(default_factory=dict)

    def peek(self, step_id: str) -> Decision | None:
        answers = self.given.get(step_id.removesuffix(EACH))
        if not answers:
            return None
        return answers[min(self.used.get(step_id, 0), len(answers) - 1)]

    def take(self, step_id: str) -> None:
        self.used[step_id] = self.used.get(step_id, 0) + 1


class PlaybookTest:
    """Runs cases of one playbook (and the sub-playbooks it calls)."""

    def __init__(
        self,
        playbook: Playbook,
        registry: Registry,
        *,
        children: Sequence[Playbook] = (),
        timeout: float = 30.0,
    ) -> None:
        self.playbook = playbook
        self.registry = registry
        self.children = list(children)
        self.timeout = timeout
        self.step_ids = {
            step_id.removesuffix(EACH)
            for pb in (playbook, *self.children)
            for step_id, step in pb.steps.items()
            if step.kind is StepKind.ACTION
        }

    def run(self, cases: Sequence[Case]) -> list[CaseResult]:
        """Run the cases, one after another."""
        return aio.run(self.run_async(cases))

    async def run_async(self, cases: Sequence[Case]) -> list[CaseResult]:
        """Run the cases on a database that lives as long as this call."""
        with tempfile.TemporaryDirectory(prefix="quell-playbook-test-") as folder:
            db = Database(f"sqlite:///{Path(folder) / 'playbook-test.db'}")
            try:
                await asyncio.to_thread(migrate.upgrade, db)
                store = PlaybookStore(db, ManualClock(DEFAULT_NOW))
                for child in self.children:
                    await asyncio.to_thread(
                        store.register, instant(child), created_by=ACTOR, published=True
                    )
                version = await asyncio.to_thread(
                    store.register, instant(self.playbook), created_by=ACTOR, published=True
                )
                return [await self._case(db, store, version.id, case) for case in cases]
            finally:
                db.dispose()

    async def _case(
        self, db: Database, store: PlaybookStore, version_id: str, case: Case
    ) -> CaseResult:
        clock = ManualClock(case.now or DEFAULT_NOW)
        actions = MockActions(self.registry, Mocks.build(case.mocks, self.step_ids))
        run_id = new_id("run")
        engine = Engine(
            db,
            clock,
            secret_key=_SECRET,
            registry=self.registry,
            actions=actions,
            playbooks=store,
            owner=f"{ACTOR}:{run_id[-6:]}",
            poll=0.05,
            tick=3600.0,  # the driver wakes timers and expiries itself
            lease=timedelta(days=36_500),  # the clock jumps; the lease must not run out
            roots=[run_id],
        )
        waits = WaitService(db, clock, on_change=engine.wake)
        failures: list[Failure] = []
        stuck: list[Wait] = []
        async with engine:
            stop = asyncio.Event()
            serving = asyncio.create_task(engine.serve(stop))
            try:
                async with asyncio.timeout(self.timeout):
                    await engine.start(
                        version_id, dict(case.inputs), run_id=run_id, created_by=ACTOR,
                        trigger="test",
                    )  # fmt: skip
                    stuck = await self._drive(engine, clock, run_id, waits, case, failures)
            except TimeoutError:
                failures.append(
                    Failure(
                        "timeout",
                        f"the run did not end within {self.timeout:g}s of wall time "
                        "(see --timeout)",
                    )
                )
            finally:
                stop.set()
                await serving
        view = await asyncio.to_thread(RunService(db, clock).get, run_id)
        observed = Observed(
            status=view.status,
            path=path_of(view.steps),
            variables=dict(view.variables or {}),
            steps=last_records(view.steps),
            error=view.error,
            calls=actions.calls,
        )
        failures.extend(_unmocked(actions.calls))
        if stuck and case.expect.status != "waiting":
            failures.extend(_stuck(stuck))
        failures.extend(evaluate(case.expect, observed))
        return CaseResult(case.name, failures, observed, view)

    async def _drive(
        self,
        engine: Engine,
        clock: ManualClock,
        run_id: str,
        waits: WaitService,
        case: Case,
        failures: list[Failure],
    ) -> list[Wait]:
        """Answer waits and move the clock until the run ends; the waits it is stuck on."""
        decisions = _Decisions(dict(case.decisions))
        run_store = RunStore(engine.db, clock)
        jumps = 0
        while True:
            tree = await self._quiet(engine, run_id)
            if RunStatus(tree[run_id][0]).finished:
                return []
            pending = [
                wait
                for wait in await asyncio.to_thread(waits.list_all, limit=10_000)
                if wait.run_id in tree
            ]
            acted = False
            undecided: list[Wait] = []
            expiring: list[Wait] = []
            for wait in pending:
                step_id = step_id_of(wait.step_key)
                decision = decisions.peek(step_id)
                if decision is None or wait.kind == "reconcile":
                    undecided.append(wait)
                elif decision.decision == "expire":
                    expiring.append(wait)
                else:
                    decisions.take(step_id)
                    await asyncio.to_thread(self._decide, engine, waits, wait, decision)
                    acted = True
            if acted:
                continue
            if undecided:
                return undecided
            times = [wait.expires_at for wait in expiring if wait.expires_at is not None]
            times += [wake for status, wake in tree.values() if status == "waiting" and wake]
            if not times:
                return pending
            jumps += 1
            if jumps > MAX_JUMPS:
                failures.append(
                    Failure("timers", f"timers kept firing: gave up after {MAX_JUMPS} of them")
                )
                return []
            due = min(times)
            if due > clock.now():
                clock.advance(due - clock.now())
            for wait in expiring:
                if wait.expires_at is not None and wait.expires_at <= clock.now():
                    decisions.take(step_id_of(wait.step_key))
            await asyncio.to_thread(run_store.wake_due)
            await asyncio.to_thread(waits.expire_due)
            engine.wake()

    @staticmethod
    def _decide(engine: Engine, waits: WaitService, wait: Wait, decision: Decision) -> None:
        if wait.kind == "approval":
            decide = waits.reject if decision.decision == "reject" else waits.approve
            decide(wait.id, decision.by, "admin", decision.comment or "decided by the test case")
        elif wait.kind == "task":
            waits.complete(wait.id, decision.by, decision.comment, decision.data)
        else:
            token = callback_token(engine.callback_secret, wait.run_id, wait.step_key)
            waits.callback(token, decision.payload)

    @staticmethod
    async def _quiet(engine: Engine, run_id: str) -> dict[str, tuple[str, datetime | None]]:
        """The run and its child runs once none of them is ready or running."""
        query = select(runs.c.id, runs.c.status, runs.c.wake_at).where(runs.c.root_run_id == run_id)
        busy = (RunStatus.READY.value, RunStatus.RUNNING.value)
        while True:
            if not engine.active:

                def read() -> dict[str, tuple[str, datetime | None]]:
                    with engine.db.read() as conn:
                        return {row.id: (row.status, row.wake_at) for row in conn.execute(query)}

                tree = await asyncio.to_thread(read)
                if not engine.active and all(status not in busy for status, _ in tree.values()):
                    return tree
            await asyncio.sleep(0.002)


def _unmocked(calls: list[Call]) -> list[Failure]:
    failures = []
    reported: set[tuple[str, str]] = set()
    for call in calls:
        if call.answered_by is None and (call.step, call.action) not in reported:
            reported.add((call.step, call.action))
            failures.append(
                Failure(
                    "mock",
                    f"step {call.step!r} called action {call.action!r} with no mock; add "
                    f"mocks: {{{call.step}: …}} (or {{{call.action}: …}})",
                    actual=call.inputs,
                )
            )
    return failures


def _stuck(waits: list[Wait]) -> list[Failure]:
    failures = []
    for wait in waits:
        step = step_id_of(wait.step_key)
        others = ["reject"] if wait.kind == "approval" else []
        if wait.expires_at is not None:
            others.append("expire")
        answer = {
            "approval": "approve",
            "task": "{data: {…}}",
            "event": "{payload: …}",
        }.get(wait.kind, "…")
        also = f" (or {', or '.join(others)})" if others else ""
        failures.append(
            Failure(
                "wait",
                f"the run waits at step {step!r} ({wait.kind}) and the case has no decision "
                f"for it; add decisions: {{{step}: {answer}}}{also}, or expect status: waiting",
            )
        )
    return failures


__all__ = ["DEFAULT_NOW", "CaseResult", "PlaybookTest", "instant", "last_records", "path_of"]
