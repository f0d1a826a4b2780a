"""The intake every source submits to: the pipeline, off the event loop, with a bounded backlog.

``submit`` runs the pipeline in a worker thread and returns once the batch is durable. The
number of records accepted but not yet committed is bounded: beyond it, ``submit`` refuses at
once with :class:`~quell.errors.Overloaded` (the HTTP intake answers 503 with Retry-After)
instead of queueing without limit. Transactions run one at a time on SQLite (it has one
writer) and two at a time on PostgreSQL (one parses while the other commits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool

from quell.errors import Overloaded
from quell.ingest.intake import IntakeResult
from quell.ingest.pipeline import IngestPipeline
from quell.store.database import Backend

DEFAULT_MAX_PENDING = 50_000


class IngestService:
    """An :class:`quell.ingest.intake.IntakeSink` over the pipeline."""

    def __init__(self, pipeline: IngestPipeline, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.pipeline = pipeline
        self.max_pending = max_pending
        self.pending = 0
        self.refused = 0
        self._slots = asyncio.Semaphore(1 if pipeline.db.backend is Backend.SQLITE else 2)

    async def submit(self, source: str, records: Sequence[bytes]) -> IntakeResult:
        """Ingest ``records`` for ``source``; returns once they are durable."""
        if not records:
            return IntakeResult()
        if self.pending and self.pending + len(records) > self.max_pending:
            self.refused += len(records)
            raise Overloaded(
                f"ingest backlog is full ({self.pending} records waiting); retry shortly",
                retry_after=1,
            )
        self.pending += len(records)
        try:
            async with self._slots:
                return await run_in_threadpool(self.pipeline.ingest, source, records)
        finally:
            self.pending -= len(records)
