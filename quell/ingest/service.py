"""The intake every source submits to: the pipeline, off the event loop, with a bounded backlog.

``submit`` stages a batch (parsing, observables, rows) and then commits it, and returns once it
is durable. Staging runs in a worker process when the service has a
:class:`~quell.ingest.staging.StagingPool` (``quell serve`` starts one), so that one request's
parsing overlaps another's transaction on the second CPU core; otherwise in a thread. Commits
run one at a time on SQLite (it has one writer) and two at a time on PostgreSQL. The number of
records accepted but not yet committed is bounded: beyond it, ``submit`` refuses at once with
:class:`~quell.errors.Overloaded` (the HTTP intake answers 503 with Retry-After) instead of
queueing without limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool

from quell.errors import Overloaded
from quell.ingest.intake import IntakeResult
from quell.ingest.pipeline import IngestPipeline
from quell.ingest.staging import StagingPool, StagingSpec
from quell.store.database import Backend

DEFAULT_MAX_PENDING = 100_000  # two full bodies (records.MAX_RECORDS) can wait


class IngestService:
    """An :class:`quell.ingest.intake.IntakeSink` over the pipeline."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        pool: StagingPool | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.max_pending = max_pending
        self.pool = pool
        self.pending = 0
        self.refused = 0
        self._slots = asyncio.Semaphore(1 if pipeline.db.backend is Backend.SQLITE else 2)

    async def submit(self, source: str, records: Sequence[bytes]) -> IntakeResult:
        """Ingest ``records`` for ``source``; returns once they are durable."""
        if not records:
            return IntakeResult()
        if self.pending + len(records) > self.max_pending:
            self.refused += len(records)
            raise Overloaded(
                f"ingest backlog is full ({self.pending} records waiting); retry shortly",
                retry_after=1,
            )
        self.pending += len(records)
        try:
            found = await run_in_threadpool(self.pipeline.sources.get, source)
            received_at = self.pipeline.clock.now()
            if self.pool is None:
                rules = await run_in_threadpool(self.pipeline.rules)
                staged = await run_in_threadpool(
                    self.pipeline.stager(found).stage, records, received_at, rules
                )
            else:
                rules = await run_in_threadpool(self.pipeline.rules)
                spec = StagingSpec.of(found, self.pipeline.db.backend)
                staged = await asyncio.wrap_future(
                    self.pool.submit(spec, list(records), received_at, rules)
                )
            async with self._slots:
                return await run_in_threadpool(self.pipeline.commit, found, staged, received_at)
        finally:
            self.pending -= len(records)
