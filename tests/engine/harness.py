"""Driving a real engine in a test: start runs, wait for them to settle, look at the journal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from quell.connectors.core import Core
from quell.connectors.http import Http
from quell.connectors.registry import Registry
from quell.engine.engine import Engine
from quell.engine.service import RunService, RunView
from quell.engine.waits import WaitService
from quell.engine.worker import attach_dispatcher
from quell.playbooks.compiler import parse_playbook
from quell.runtime import Runtime
from tests.engine.peer import Test

SETTLED = ("succeeded", "failed", "canceled", "waiting", "paused")
ENDED = ("succeeded", "failed", "canceled")


def registry() -> Registry:
    found = Registry()
    for connector in (Core, Http, Test):
        found.add(connector)
    return found


def bare_engine(runtime: Runtime, **options: Any) -> Engine:
    """An engine on the test connectors that journals when entered but serves only if told
    (nothing claims a run behind the test's back)."""
    return Engine(
        runtime.db,
        runtime.clock,
        secret_key=b"test-key",
        registry=registry(),
        playbooks=runtime.playbooks,
        **options,
    )


def register(runtime: Runtime, engine: Engine, text: str) -> str:
    """Compile ``text`` against the engine's actions and store it; the version id."""
    playbook = parse_playbook(text, "test.yaml", actions=engine.actions.registry)
    return runtime.playbooks.register(playbook, published=True).id


class Harness:
    """An engine on the test's runtime, serving in the test's event loop."""

    def __init__(self, runtime: Runtime, *, lease: float = 30.0, owner: str | None = None) -> None:
        self.runtime = runtime
        self.registry = registry()
        self.engine = Engine(
            runtime.db,
            runtime.clock,
            secret_key=b"test-key",
            registry=self.registry,
            playbooks=runtime.playbooks,
            poll=0.02,
            tick=0.05,
            lease=timedelta(seconds=lease),
            owner=owner,
        )
        attach_dispatcher(self.engine)
        self.runs = RunService(runtime.db, runtime.clock, on_change=self.engine.wake)
        self.waits = WaitService(runtime.db, runtime.clock, on_change=self.engine.wake)
        self._stop = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        await self.engine.__aenter__()
        self._serving = asyncio.create_task(self.engine.serve(self._stop))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if getattr(self, "crashed", False):
            return
        self._stop.set()
        if self._serving is not None:
            await self._serving
        await self.engine.shutdown(grace=1.0)

    async def crash(self) -> None:
        """Stop as a killed process would: nothing released, nothing handed back."""
        self._stop.set()
        if self._serving is not None:
            await self._serving
        tasks = self.engine.tasks  # the test plays the kernel: every task just stops
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.engine.journal.close)
        await self.engine.actions.aclose()  # only so the test leaks no socket
        self._serving = None
        self.crashed = True

    def add(self, text: str, *, activate: bool = False) -> str:
        playbook = parse_playbook(text, "test.yaml", actions=self.registry)
        return self.runtime.playbooks.register(playbook, activate=activate, published=True).id

    async def start(self, text: str, inputs: dict[str, Any] | None = None, **options: Any) -> str:
        return await self.engine.start(self.add(text), inputs or {}, **options)

    async def settle(self, run_id: str, until: tuple[str, ...] = SETTLED) -> RunView:
        """The run once its status is one of ``until`` (15 s at most)."""
        for _ in range(750):
            view = await asyncio.to_thread(self.runs.get, run_id)
            if view.status in until:
                return view
            await asyncio.sleep(0.02)
        raise AssertionError(f"run {run_id} is still {view.status}")

    async def run(self, text: str, inputs: dict[str, Any] | None = None, **options: Any) -> RunView:
        return await self.settle(await self.start(text, inputs, **options))


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait until ``check()`` holds (15 s at most)."""
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def statuses(view: RunView) -> dict[str, str]:
    """Each step key's latest status."""
    found: dict[str, tuple[int, str]] = {}
    for step in view.steps:
        if step.key not in found or step.attempt >= found[step.key][0]:
            found[step.key] = (step.attempt, step.status)
    return {key: status for key, (_, status) in found.items()}
