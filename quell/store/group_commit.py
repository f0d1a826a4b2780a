"""Group commit: the small writes of many callers share one transaction and one commit.

A single writer thread per process owns a connection. Callers hand it work and get a future;
the writer drains everything queued (up to ``max_batch``), runs it in one write transaction,
commits, and only then resolves the futures. A write is therefore acknowledged only once it is
durable, yet a thousand concurrent callers cost one commit (one fsync with ``synchronous=FULL``)
instead of a thousand. Consecutive writes of the same statement become one ``executemany``.

If a write in a batch fails (a constraint, a bad value, an exception from a work callable), the
batch is rolled back and each write is retried alone, so one bad write fails only its own
caller. Work must therefore touch nothing but the connection it is given: it may run twice
(once in the failed batch, once alone), never half. If the database itself fails (unreachable,
locked past the busy timeout), retrying write by write would only multiply the wait: the whole
batch fails at once with :class:`~quell.errors.StorageUnavailable`.

Sync callers wait on the returned :class:`concurrent.futures.Future`. Async callers await
:meth:`GroupCommitter.run` or :meth:`GroupCommitter.execute_async`, which hold no thread: they
get plain asyncio futures, and the writer settles all of a batch's futures of one event loop
in a single ``call_soon_threadsafe``, so a batch of N writes wakes the loop once, not N times.
A write, once submitted, is carried out even if its awaiting task is cancelled.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import structlog
from sqlalchemy import Connection, Executable

from quell.errors import StorageUnavailable
from quell.store.database import Database

T = TypeVar("T")
ItemT = TypeVar("ItemT")
Work = Callable[[Connection], T]

log = structlog.get_logger(__name__)


Waiter = Future[Any] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


@dataclass(slots=True)
class _Work:
    waiter: Waiter
    work: Callable[[Connection], Any]


@dataclass(slots=True)
class _Statement:
    waiter: Waiter
    statement: Executable
    params: Mapping[str, Any]


_Item = _Work | _Statement


@dataclass(slots=True)
class GroupCommitStats:
    """Counters, for benchmarks and diagnostics."""

    writes: int = 0
    batches: int = 0
    largest_batch: int = 0
    isolated_retries: int = 0
    failed_writes: int = 0


class BatchWriter(Generic[ItemT]):
    """A writer thread that takes what callers queue, in batches of at most ``max_batch``,
    and hands each batch to :meth:`_commit` (one transaction). When it stops, for whatever
    reason, whoever still waits on a queued item gets ``stopped`` as the error."""

    stopped: type[Exception] = RuntimeError
    what = "the writer"

    def __init__(self, db: Database, *, max_batch: int, name: str) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.db = db
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[ItemT | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        # Why a write is refused, or None while writes are taken (one check per write).
        self._refusal: str | None = f"{self.what} was not started"
        self._lock = threading.Lock()

    def start(self) -> Self:
        """Start the writer thread."""
        with self._lock:
            if not self._closed:
                self._refusal = None
        self._thread.start()
        return self

    def close(self, timeout: float | None = 30.0) -> None:
        """Commit everything already queued, then stop the writer thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._refusal = f"{self.what} is closed"
            # Under the lock: nothing can be queued behind the stop marker.
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _put(self, item: ItemT) -> None:
        with self._lock:
            if self._refusal is not None:
                raise self.stopped(self._refusal)
            self._queue.put(item)

    def _loop(self) -> None:
        try:
            self._drain_batches()
        except BaseException as exc:
            log.critical("writer_died", writer=self.what, error=type(exc).__name__, exc_info=exc)
        finally:
            # However the writer ends, nobody may wait forever on a write it will not do.
            with self._lock:
                if not self._closed:
                    self._refusal = f"{self.what}'s thread has stopped"
                self._closed = True
            self._finish()
            leftovers: list[Outcome] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                waiter = self._waiter(item) if item is not None else None
                if waiter is not None:
                    leftovers.append((waiter, None, self.stopped(f"{self.what} stopped")))
            settle(leftovers)

    def _drain_batches(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:  # close() was called and everything before it is done
                break
            batch: list[ItemT] = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            live = self._live(batch)
            if live:
                self._commit(live)

    def _finish(self) -> None:
        """Called on the writer thread as it ends (a subclass lets go of what it holds)."""

    def _live(self, batch: list[ItemT]) -> list[ItemT]:
        """The items still wanted (a subclass drops those whose caller gave up)."""
        return batch

    @staticmethod
    def _waiter(item: ItemT) -> Waiter | None:
        return getattr(item, "waiter", None)

    def _commit(self, batch: list[ItemT]) -> None:
        raise NotImplementedError


class GroupCommitter(BatchWriter[_Item]):
    """One writer thread that batches many callers' writes into shared commits."""

    what = "the group committer"

    def __init__(self, db: Database, *, max_batch: int = 1024, name: str = "quell-writer") -> None:
        super().__init__(db, max_batch=max_batch, name=name)
        self.stats = GroupCommitStats()

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- submitting --------------------------------------------------------------------------

    def submit(self, work: Work[T]) -> Future[T]:
        """Queue ``work(connection)``; the future resolves to its result once committed."""
        future: Future[T] = Future()
        self._put(_Work(future, work))
        return future

    def execute(self, statement: Executable, params: Mapping[str, Any]) -> Future[None]:
        """Queue one statement; runs of the same statement object are sent as executemany."""
        future: Future[None] = Future()
        self._put(_Statement(future, statement, params))
        return future

    async def run(self, work: Work[T]) -> T:
        """``await`` the committed result of ``work``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(_Work((loop, future), work))
        return await future

    async def execute_async(self, statement: Executable, params: Mapping[str, Any]) -> None:
        """``await`` one committed statement."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._put(_Statement((loop, future), statement, params))
        await future

    # -- the writer thread -------------------------------------------------------------------

    def _live(self, batch: list[_Item]) -> list[_Item]:
        # A sync caller that cancelled its future before the batch ran gets no write.
        return [
            item
            for item in batch
            if not isinstance(item.waiter, Future) or item.waiter.set_running_or_notify_cancel()
        ]

    def _commit(self, batch: list[_Item]) -> None:
        try:
            with self.db.write() as conn:
                results = _run_batch(conn, batch)
        except StorageUnavailable as exc:
            # The database failed, not a write: one answer for all, no retries.
            self.stats.failed_writes += len(batch)
            settle([(item.waiter, None, exc) for item in batch])
            return
        except Exception as exc:  # noqa: BLE001 - whatever one write raises goes to its caller
            if len(batch) == 1:
                self.stats.failed_writes += 1
                settle([(batch[0].waiter, None, exc)])
                return
            # Something in the batch failed: nothing of it was committed. Retry each write
            # alone so that only the culprit's caller sees the error.
            self.stats.isolated_retries += 1
            log.debug("group_commit_isolating", batch=len(batch), error=type(exc).__name__)
            for item in batch:
                self._commit([item])
            return
        except BaseException as exc:
            settle([(item.waiter, None, exc) for item in batch])
            raise
        self.stats.writes += len(batch)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        settle([(item.waiter, result, None) for item, result in zip(batch, results, strict=True)])


Outcome = tuple[Waiter, Any, BaseException | None]


def settle(outcomes: list[Outcome]) -> None:
    """Resolve waiters: sync futures here, async ones with one callback per event loop."""
    by_loop: dict[
        asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    ] = {}
    for waiter, result, error in outcomes:
        if isinstance(waiter, Future):
            if error is None:
                waiter.set_result(result)
            else:
                waiter.set_exception(error)
        else:
            loop, future = waiter
            by_loop.setdefault(loop, []).append((future, result, error))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_in_loop, settled)
        except RuntimeError:  # the loop was closed: nobody is waiting any more
            log.debug("group_commit_loop_closed", waiters=len(settled))


def _settle_in_loop(settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in settled:
        if future.done():  # the awaiting task was cancelled; the write still happened
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _run_batch(conn: Connection, batch: Sequence[_Item]) -> list[Any]:
    """Run a batch in order; consecutive items of one statement go as one executemany."""
    results: list[Any] = []
    index = 0
    while index < len(batch):
        item = batch[index]
        if isinstance(item, _Work):
            results.append(item.work(conn))
            index += 1
            continue
        params = [dict(item.params)]
        keys = params[0].keys()
        end = index + 1
        while end < len(batch):
            following = batch[end]
            # An executemany is compiled from its first parameter set: only writes of the same
            # statement *and* the same keys may share one, or later keys would be dropped.
            if (
                not isinstance(following, _Statement)
                or following.statement is not item.statement
                or following.params.keys() != keys
            ):
                break
            params.append(dict(following.params))
            end += 1
        conn.execute(item.statement, params if len(params) > 1 else params[0])
        results.extend([None] * (end - index))
        index = end
    return results
