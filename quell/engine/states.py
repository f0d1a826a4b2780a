"""The finite sets of states a run and a step attempt can be in."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run is."""

    READY = "ready"  # to be claimed by a worker
    RUNNING = "running"  # a worker holds its lease
    WAITING = "waiting"  # on a person, a callback, a timer or a child run: only rows
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        """Whether the run has ended."""
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED)


class StepStatus(StrEnum):
    """Where one attempt of a step is."""

    STARTED = "started"  # a write's attempt, committed before the call
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    SUPERSEDED = "superseded"  # a failed attempt a retry of the run replaces
    WAITING_APPROVAL = "waiting_approval"
    WAITING_TASK = "waiting_task"
    WAITING_EVENT = "waiting_event"
    WAITING_TIMER = "waiting_timer"
    WAITING_CHILD = "waiting_child"
    WAITING_RECONCILE = "waiting_reconcile"  # nobody can tell whether a write landed

    @property
    def terminal(self) -> bool:
        """Whether the attempt has ended."""
        return self in _TERMINAL

    @property
    def waiting(self) -> bool:
        """Whether the attempt waits for something outside the run."""
        return self.value.startswith("waiting_")


_TERMINAL = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.TIMED_OUT,
        StepStatus.CANCELED,
    }
)


class WaitStatus(StrEnum):
    """Where a wait (approval, task, callback) is."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    DONE = "done"  # a task completed, a callback received
    EXPIRED = "expired"
    CANCELED = "canceled"


__all__ = ["RunStatus", "StepStatus", "WaitStatus"]
