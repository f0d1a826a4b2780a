"""Runs as people see them: list, show (with the step timeline), cancel, pause, resume, retry.

Controlling a run that a worker holds is a request the worker reads with its next lease
renewal (``control``), honoured at the next step boundary; a run that no worker holds (ready,
waiting, paused) changes at once. Cancelling a run cancels its pending waits and its child runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, literal_column, select, update

from quell.clock import Clock
from quell.engine.notify import notify_ready
from quell.engine.states import RunStatus, StepStatus
from quell.engine.store import run_status_is
from quell.engine.waits import close_canceled
from quell.errors import Conflict, InvalidInput, NotFound
from quell.playbooks.ir import Playbook
from quell.store.database import Database
from quell.store.schema import playbook_versions, run_steps, runs


@dataclass(frozen=True)
class StepView:
    """One journal record."""

    key: str
    step_id: str
    kind: str
    attempt: int
    status: str
    action: str | None
    inputs: Any
    output: Any
    error: Any
    simulated: bool
    started_at: datetime
    finished_at: datetime | None
    due_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "key": self.key,
            "step": self.step_id,
            "kind": self.kind,
            "attempt": self.attempt,
            "status": self.status,
            "action": self.action,
            "inputs": self.inputs,
            "output": self.output,
            "error": self.error,
            "simulated": self.simulated,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "due_at": self.due_at,
        }


@dataclass(frozen=True)
class RunView:
    """A run and, when asked for, its journal."""

    id: str
    playbook_id: str
    playbook_version_id: str
    status: str
    dry_run: bool
    trigger: str
    trigger_ref: str | None
    inputs: Any
    variables: Any
    error: Any
    parent_run_id: str | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    owner: str | None
    steps: tuple[StepView, ...] = ()

    def as_dict(self, *, with_steps: bool = True) -> dict[str, Any]:
        """Plain data."""
        data: dict[str, Any] = {
            "id": self.id,
            "playbook": self.playbook_id,
            "playbook_version": self.playbook_version_id,
            "status": self.status,
            "dry_run": self.dry_run,
            "trigger": self.trigger,
            "trigger_ref": self.trigger_ref,
            "inputs": self.inputs,
            "variables": self.variables,
            "error": self.error,
            "parent_run_id": self.parent_run_id,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "owner": self.owner,
        }
        if with_steps:
            data["steps"] = [step.as_dict() for step in self.steps]
        return data


def _run(row: Any, steps: tuple[StepView, ...] = ()) -> RunView:
    return RunView(
        row.id,
        row.playbook_id,
        row.playbook_version_id,
        row.status,
        bool(row.dry_run),
        row.trigger,
        row.trigger_ref,
        row.inputs,
        row.variables,
        row.error,
        row.parent_run_id,
        row.created_by,
        row.created_at,
        row.started_at,
        row.finished_at,
        row.owner,
        steps,
    )


def _step(row: Any) -> StepView:
    return StepView(
        row.key,
        row.step_id,
        row.kind,
        row.attempt,
        row.status,
        row.action,
        row.inputs,
        row.output,
        row.error,
        bool(row.simulated),
        row.started_at,
        row.finished_at,
        row.due_at,
    )


class RunService:
    """Read and control runs."""

    def __init__(
        self, db: Database, clock: Clock, *, on_change: Callable[[], None] | None = None
    ) -> None:
        self.db = db
        self.clock = clock
        self.on_change = on_change

    def get(self, run_id: str, *, with_steps: bool = True) -> RunView:
        """A run, with its journal oldest first."""
        with self.db.read() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
            if row is None:
                raise NotFound(f"no run {run_id!r}", field="run", value=run_id)
            steps: tuple[StepView, ...] = ()
            if with_steps:
                steps = tuple(
                    _step(step)
                    for step in conn.execute(
                        select(run_steps)
                        .where(run_steps.c.run_id == run_id)
                        .order_by(run_steps.c.seq)
                    )
                )
        return _run(row, steps)

    def list_all(
        self,
        *,
        status: str | None = None,
        playbook: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunView]:
        """Runs, newest first; ``offset`` skips that many (paging)."""
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc())
        if status is not None:
            try:
                wanted = RunStatus(status)
            except ValueError:
                raise InvalidInput(
                    f"status must be one of: {', '.join(RunStatus)}", field="status"
                ) from None
            query = query.where(run_status_is(wanted))
            if wanted is not RunStatus.SUCCEEDED and playbook is None:
                # The condition of the index that holds them in order, written as it is:
                # SQLite searches a partial index only for a query that says it. (With a
                # playbook, its own index is the narrower one.)
                query = query.where(runs.c.status != literal_column("'succeeded'"))
        if playbook is not None:
            query = query.where(runs.c.playbook_id == playbook)
        query = query.limit(min(max(limit, 1), 10_000)).offset(max(offset, 0))
        with self.db.read() as conn:
            return [_run(row) for row in conn.execute(query)]

    def cancel(self, run_id: str) -> RunView:
        """Cancel a run (and its children); a held run stops at its next step."""
        now = self.clock.now()
        with self.db.write() as conn:
            row = self._row(conn, run_id)
            status = RunStatus(row.status)
            if status.finished:
                raise Conflict(f"run {run_id} already {status.value}")
            self._cancel_tree(conn, run_id, now)
        self._changed()
        return self.get(run_id, with_steps=False)

    def _cancel_tree(self, conn: Connection, run_id: str, now: datetime) -> None:
        row = self._row(conn, run_id)
        status = RunStatus(row.status)
        if status is RunStatus.RUNNING:
            conn.execute(update(runs).where(runs.c.id == run_id).values(control="cancel"))
        elif not status.finished:
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(
                    status=RunStatus.CANCELED.value,
                    error={"code": "canceled", "message": "canceled"},
                    finished_at=now,
                    updated_at=now,
                    wake_at=None,
                )
            )
            close_canceled(conn, run_id, now)
        children = conn.execute(select(runs.c.id).where(runs.c.parent_run_id == run_id)).scalars()
        for child in list(children):
            self._cancel_tree(conn, child, now)

    def pause(self, run_id: str) -> RunView:
        """Pause a run: a held one stops at its next step; others stop being picked up."""
        now = self.clock.now()
        with self.db.write() as conn:
            row = self._row(conn, run_id)
            status = RunStatus(row.status)
            if status is RunStatus.RUNNING:
                conn.execute(update(runs).where(runs.c.id == run_id).values(control="pause"))
            elif status in (RunStatus.READY, RunStatus.WAITING):
                conn.execute(
                    update(runs)
                    .where(runs.c.id == run_id)
                    .values(status=RunStatus.PAUSED.value, updated_at=now)
                )
            else:
                raise Conflict(f"run {run_id} is {status.value}; only a live run can be paused")
        return self.get(run_id, with_steps=False)

    def resume(self, run_id: str) -> RunView:
        """Resume a paused run, or withdraw a pause a running one has not reached yet."""
        now = self.clock.now()
        with self.db.write() as conn:
            row = self._row(conn, run_id)
            if row.status == RunStatus.RUNNING.value and row.control == "pause":
                # Asked to pause and not stopped yet: it goes on. If it stops before it
                # hears, its release finds the pause withdrawn and makes it ready again.
                conn.execute(update(runs).where(runs.c.id == run_id).values(control=None))
                return self.get(run_id, with_steps=False)
            if row.status != RunStatus.PAUSED.value:
                raise Conflict(f"run {run_id} is {row.status}, not paused")
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(status=RunStatus.READY.value, control=None, updated_at=now, wake_at=None)
            )
            notify_ready(conn)
        self._changed()
        return self.get(run_id, with_steps=False)

    def retry(self, run_id: str) -> RunView:
        """Run a failed or canceled run again from its failed steps (finished ones stay done)."""
        now = self.clock.now()
        with self.db.write() as conn:
            row = self._row(conn, run_id)
            if row.status not in (RunStatus.FAILED.value, RunStatus.CANCELED.value):
                raise Conflict(f"run {run_id} is {row.status}; only a failed run is retried")
            self._retry(conn, row, now)
            notify_ready(conn)
        self._changed()
        return self.get(run_id, with_steps=False)

    def _retry(self, conn: Connection, row: Any, now: datetime) -> None:
        run_id = row.id
        self._rejoin_children(conn, run_id, now)
        # A playbook's timeout bounds each try: a retry has the whole of it again (its old
        # deadline has passed when the run timed out, and would end the retry at once). The
        # timeout is the pinned version's own: the time since the run began is not part of it.
        deadline = row.deadline
        if deadline is not None:
            ir = conn.execute(
                select(playbook_versions.c.ir).where(
                    playbook_versions.c.id == row.playbook_version_id
                )
            ).scalar()
            timeout = Playbook.from_json(ir).timeout if ir is not None else None
            if timeout:
                deadline = now + timedelta(seconds=timeout)
        conn.execute(
            update(run_steps)
            .where(
                run_steps.c.run_id == run_id,
                run_steps.c.status.in_(
                    [
                        StepStatus.FAILED.value,
                        StepStatus.TIMED_OUT.value,
                        StepStatus.CANCELED.value,
                    ]
                ),
            )
            .values(status=StepStatus.SUPERSEDED.value, due_at=None)
        )
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(
                status=RunStatus.READY.value,
                error=None,
                finished_at=None,
                control=None,
                updated_at=now,
                deadline=deadline,
            )
        )

    def _rejoin_children(self, conn: Connection, run_id: str, now: datetime) -> None:
        """A sub-playbook step that failed or was cancelled waits for its child run again,
        and a failed or cancelled child is retried in place (its finished steps, containments
        among them, stay done): a new child would repeat them, and a step superseded without
        one left the run waiting for nothing."""
        children = conn.execute(
            select(runs)
            .where(runs.c.parent_run_id == run_id, runs.c.parent_key.is_not(None))
            .with_for_update()  # a child's own release waits (PostgreSQL): no end slips by
        ).all()
        for child in children:
            if child.status == RunStatus.RUNNING.value and child.control == "cancel":
                # Cancelled with its parent and not stopped yet: it would end cancelled into
                # the step the retry waits on. It is retried once it has stopped.
                raise Conflict(
                    f"run {run_id}'s sub-playbook run {child.id} is still stopping after the "
                    "cancel; retry once it has"
                )
            step = conn.execute(
                select(run_steps.c.attempt, run_steps.c.status, run_steps.c.output)
                .where(run_steps.c.run_id == run_id, run_steps.c.key == child.parent_key)
                .order_by(run_steps.c.attempt.desc())
                .limit(1)
            ).first()
            ended = (StepStatus.FAILED.value, StepStatus.TIMED_OUT.value, StepStatus.CANCELED.value)
            if step is None or step.status not in ended:
                continue
            if not isinstance(step.output, dict) or step.output.get("run_id") != child.id:
                continue
            status = RunStatus(child.status)
            values: dict[str, Any]
            if status is RunStatus.SUCCEEDED:  # it ended after its parent: take what it gave
                values = {
                    "status": StepStatus.SUCCEEDED.value,
                    "output": {"run_id": child.id, "status": child.status,
                               "variables": child.variables},
                    "error": None,
                    "finished_at": now,
                }  # fmt: skip
            else:
                if status.finished:
                    self._retry(conn, child, now)
                values = {
                    "status": StepStatus.WAITING_CHILD.value,
                    "output": {"run_id": child.id},
                    "error": None,
                    "finished_at": None,
                }
            conn.execute(
                update(run_steps)
                .where(
                    run_steps.c.run_id == run_id,
                    run_steps.c.key == child.parent_key,
                    run_steps.c.attempt == step.attempt,
                )
                .values(**values)
            )

    @staticmethod
    def _row(conn: Connection, run_id: str) -> Any:
        # Locked (PostgreSQL): a worker releasing the run commits first or after us, never in
        # between, so a cancel or pause sees the status it acts on (SQLite writes one at a time).
        row = conn.execute(select(runs).where(runs.c.id == run_id).with_for_update()).first()
        if row is None:
            raise NotFound(f"no run {run_id!r}", field="run", value=run_id)
        return row

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


__all__ = ["RunService", "RunView", "StepView"]
