"""Long-running sources: syslog listeners, IMAP pollers and SIEM pullers, run by ``quell serve``.

Each enabled source of those kinds becomes one task in the server process, feeding the same
intake as the HTTP route. A source whose configuration is broken is logged and left stopped;
it never stops the server or the other sources. The server looks again every
:data:`RECONCILE_EVERY` seconds (and at once after a change through its own API): a source
added or enabled since starts, one removed or disabled stops, and one whose settings or secret
changed starts again with them, failed or not; one that could not start is tried again
after :data:`RETRY_START_AFTER` seconds. A source's
``settings.connection`` holds its kind's configuration (ports, mailbox, cluster); its secret
(a mailbox password, an API key) is opened from the sealed column only when the source starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from quell.errors import InvalidInput, QuellError
from quell.ingest.intake import IntakeSink
from quell.ingest.sources import Source, SourceKind
from quell.sdk.secret import SecretValue

if TYPE_CHECKING:
    from quell.runtime import Runtime

log = structlog.get_logger(__name__)

RUN_KINDS = (SourceKind.SYSLOG, SourceKind.IMAP, SourceKind.ELASTIC)
RECONCILE_EVERY = 5.0  # seconds between looks at the configured sources
# A source that could not start (a port another source held) is tried again after this long,
# though its configuration did not change. One that failed while running (a refused login) is
# not: retrying a wrong password only locks the account.
RETRY_START_AFTER = 60.0


def _invalid(kind: SourceKind, exc: ValidationError) -> InvalidInput:
    error = exc.errors()[0]
    where = ".".join(["settings.connection", *(str(part) for part in error["loc"])])
    return InvalidInput(f"{where}: {error['msg']} (for a {kind.value} source)", field=where)


def connection_config(
    kind: SourceKind, data: Mapping[str, Any], secret: SecretValue | None = None
) -> Any:
    """The kind's configuration model from ``settings.connection`` (and the secret, if any).

    InvalidInput names the field at fault. Kinds without a connection (http, file) give None.
    """
    try:
        if kind is SourceKind.SYSLOG:
            from quell.ingest.syslog import SyslogListenerConfig

            return SyslogListenerConfig.model_validate(data)
        if kind is SourceKind.ELASTIC:
            from quell.ingest.elastic import ElasticConfig

            values = dict(data)
            if secret is not None:
                values["api_key" if values.get("auth") == "api_key" else "password"] = secret
            return ElasticConfig.model_validate(values)
        if kind is SourceKind.IMAP:
            from quell.ingest.imap import ImapConfig

            values = dict(data)
            if secret is not None:
                values["password"] = secret
            elif "password" not in values:
                values["password"] = SecretValue("(set with quell source set-secret)")
            return ImapConfig.model_validate(values)
    except ValidationError as exc:
        raise _invalid(kind, exc) from None
    return None


def _configuration(source: Source) -> tuple[Any, ...]:
    """What a running source depends on: a change to any of it means a restart. The secret is
    not shown, but setting it moves ``updated_at``."""
    return (
        source.id, source.kind, source.format, orjson.dumps(source.parser_options,
        option=orjson.OPT_SORT_KEYS), orjson.dumps(source.settings.model_dump(mode="json"),
        option=orjson.OPT_SORT_KEYS), source.has_secret, source.updated_at,
    )  # fmt: skip


@dataclass
class _Running:
    source: str
    kind: SourceKind
    task: asyncio.Task[None]
    stop: Callable[[], Awaitable[None]]
    detail: Any = None


@dataclass
class SourceRunner:
    """Starts and stops the long-running sources of one process."""

    runtime: Runtime
    sink: IntakeSink
    running: dict[str, _Running] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    # The configuration each source was started with, running or failed (see _configuration).
    started_with: dict[str, Any] = field(default_factory=dict)
    start_failed_at: dict[str, float] = field(default_factory=dict)  # monotonic
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        """Start every enabled source that runs in the background."""
        await self.reconcile()

    async def reconcile(self) -> None:
        """Bring what runs in line with what is configured: start what is new or enabled,
        stop what was removed or disabled, restart what changed."""
        async with self._lock:
            configured = await run_in_threadpool(self.runtime.sources.list_all)
            wanted = {s.name: s for s in configured if s.enabled and s.kind in RUN_KINDS}
            for name in [n for n in {*self.running, *self.failed} if n not in wanted]:
                await self._stop_one(name)
                log.info("source_stopped", source=name, reason="removed or disabled")
            for name, source in wanted.items():
                known = name in self.running or name in self.failed
                failed_at = self.start_failed_at.get(name)
                retry = failed_at is not None and time.monotonic() - failed_at >= RETRY_START_AFTER
                if known and not retry and self.started_with.get(name) == _configuration(source):
                    continue
                if known:
                    await self._stop_one(name)
                    log.info("source_restarting", source=name, reason="configuration changed")
                await self.start_source(source)

    async def _stop_one(self, name: str) -> None:
        self.failed.pop(name, None)
        self.start_failed_at.pop(name, None)
        self.started_with.pop(name, None)
        running = self.running.get(name)
        if running is None:
            return
        await running.stop()
        _, pending = await asyncio.wait([running.task], timeout=60)
        for task in pending:
            task.cancel()
        # Forgotten only once stopped: a shutdown that cancels this midway still finds it.
        self.running.pop(name, None)

    async def watch(self, wake: asyncio.Event) -> None:
        """Reconcile every :data:`RECONCILE_EVERY` seconds, or when ``wake`` is set, until
        cancelled; a failed look is logged and tried again at the next."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), RECONCILE_EVERY)
            wake.clear()
            try:
                await self.reconcile()
            except Exception as exc:  # noqa: BLE001 - the database may be away for a moment
                log.warning("sources_reconcile_failed", error=type(exc).__name__)

    async def start_source(self, source: Source) -> None:
        """Start one source; a failure is logged and remembered, never raised."""
        self.started_with[source.name] = _configuration(source)
        try:
            secret = await run_in_threadpool(self.runtime.sources.secret, source.name)
            config = connection_config(source.kind, source.settings.connection, secret)
            self.running[source.name] = await self._launch(source, config)
            self.failed.pop(source.name, None)
            self.start_failed_at.pop(source.name, None)
            log.info("source_started", source=source.name, kind=source.kind.value)
        except QuellError as exc:
            self.failed[source.name] = exc.message
            self.start_failed_at[source.name] = time.monotonic()
            log.error("source_not_started", source=source.name, reason=exc.message)

    async def _launch(self, source: Source, config: Any) -> _Running:
        if source.kind is SourceKind.SYSLOG:
            from quell.ingest.syslog import SyslogListener

            listener = SyslogListener(source.name, config, self.sink, clock=self.runtime.clock)
            await listener.start()
            done = asyncio.Event()

            async def serve() -> None:
                await done.wait()

            async def stop_listener() -> None:
                await listener.stop()
                done.set()

            task = asyncio.create_task(serve(), name=f"syslog:{source.name}")
            return _Running(source.name, source.kind, task, stop_listener, listener)
        if source.kind is SourceKind.ELASTIC:
            from quell.ingest.elastic import ElasticPuller

            puller = ElasticPuller(
                source.name, config, self.sink, self.runtime.checkpoints, clock=self.runtime.clock
            )
            return self._loop(source, puller.run, puller.aclose, puller)
        from quell.ingest.imap import ImapPoller

        poller = ImapPoller(
            source.name, config, self.sink, self.runtime.checkpoints, clock=self.runtime.clock
        )
        return self._loop(source, poller.run, None, poller)

    def _loop(
        self,
        source: Source,
        run: Callable[[asyncio.Event], Awaitable[None]],
        close: Callable[[], Awaitable[None]] | None,
        detail: Any,
    ) -> _Running:
        stop_event = asyncio.Event()

        async def guarded() -> None:
            try:
                await run(stop_event)
            except QuellError as exc:  # fatal for this source (bad credentials): say so, stop it
                self.failed[source.name] = exc.message
                log.error("source_stopped", source=source.name, reason=exc.message)
            finally:
                if close is not None:
                    await close()

        async def stop() -> None:
            stop_event.set()

        task = asyncio.create_task(guarded(), name=f"{source.kind.value}:{source.name}")
        return _Running(source.name, source.kind, task, stop, detail)

    def status(self, name: str) -> dict[str, Any]:
        """Whether this process runs source ``name``: running, retrying (its polls or pulls
        fail and are tried again: how many in a row, and why), failed (with why) or stopped."""
        if name in self.failed:
            return {"state": "failed", "reason": self.failed[name]}
        running = self.running.get(name)
        if running is None:
            return {"state": "stopped"}
        if running.task.done():
            error = None if running.task.cancelled() else running.task.exception()
            if error is not None:  # logged by asyncio; the message may hold anything: not shown
                return {"state": "failed", "reason": f"stopped by {type(error).__name__}"}
            return {"state": "stopped"}
        retrying = getattr(running.detail, "retrying", None)
        if retrying is not None:
            failures, reason = retrying
            return {"state": "retrying", "failures": failures, "reason": reason}
        return {"state": "running"}

    async def stop(self) -> None:
        """Stop every running source, letting each flush what it holds."""
        self.failed.clear()
        self.started_with.clear()
        self.start_failed_at.clear()
        for running in list(self.running.values()):
            await running.stop()
        tasks = [running.task for running in self.running.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=60)
            for task in pending:
                task.cancel()
        self.running.clear()
