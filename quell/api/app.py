"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from quell import __version__
from quell.api.guard import EdgeGuardMiddleware
from quell.api.middleware import RequestContextMiddleware
from quell.api.problems import install_problem_handler
from quell.api.routes import (
    alerts,
    approvals,
    audit,
    callbacks,
    cases,
    connectors,
    containments,
    evidence,
    fallback,
    guardrails,
    health,
    ingest,
    intel,
    oidc,
    openc2,
    playbooks,
    runs,
    sla,
    sources,
    system,
    tokens,
    users,
)
from quell.ingest.runner import SourceRunner
from quell.ingest.service import IngestService
from quell.ingest.staging import StagingPool
from quell.runtime import Runtime

if TYPE_CHECKING:
    from quell.engine.embedded import EmbeddedEngine

DESCRIPTION = """\
Quell's REST API. Every route except `/healthz` and `/readyz` needs
`Authorization: Bearer <token>` (make one with `quell token create`), but for
`POST /api/callbacks/{token}`, whose one-time token is its credential. Errors are
RFC 9457 problem+json with a stable `code`.
"""


def create_app(
    runtime: Runtime,
    *,
    run_sources: bool = False,
    ingest_workers: int = 0,
    embedded_worker: bool = False,
) -> FastAPI:
    """An app serving ``runtime``. The caller owns the runtime and closes it.

    With ``run_sources`` the app also runs the long-running sources (syslog listeners, IMAP
    pollers, SIEM pulls) for as long as it serves, with ``ingest_workers`` it parses incoming
    alerts in that many worker processes, and with ``embedded_worker`` it runs playbooks in an
    engine of its own with the trigger dispatcher (embedded mode), as ``quell serve`` does.
    Without one, runs started here wait for a ``quell worker`` to claim them.
    """
    ingest_service = IngestService(runtime.pipeline)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = SourceRunner(runtime, ingest_service)
        app.state.sources = runner
        app.state.sources_changed = None
        watcher: asyncio.Task[None] | None = None
        pool: StagingPool | None = None
        embedded: EmbeddedEngine | None = None
        try:
            pool = StagingPool(ingest_workers) if ingest_workers else None
            ingest_service.pool = pool
            if embedded_worker:
                from quell.engine.embedded import EmbeddedEngine

                embedded = EmbeddedEngine(runtime)
                await embedded.start()
                app.state.embedded = embedded
            if run_sources:
                await runner.start()
                changed = app.state.sources_changed = asyncio.Event()
                watcher = asyncio.create_task(runner.watch(changed), name="sources-watch")
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await runner.stop()
            if embedded is not None:
                # Stop taking work first, then hand the runs in flight back (ready).
                await embedded.stop()
            app.state.embedded = None
            app.state.launcher = None
            ingest_service.pool = None
            if pool is not None:
                pool.close()

    app = FastAPI(
        lifespan=lifespan,
        title="Quell",
        version=__version__,
        description=DESCRIPTION,
        openapi_url=None,  # served by an authenticated route at /api/openapi.json
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.ingest = ingest_service
    install_problem_handler(app)
    app.include_router(health.router)
    app.include_router(system.router)
    app.include_router(tokens.router)
    app.include_router(users.router)
    app.include_router(oidc.router)
    app.include_router(ingest.router)
    app.include_router(alerts.router)
    app.include_router(sources.router)
    app.include_router(playbooks.router)
    app.include_router(runs.router)
    app.include_router(approvals.router)
    app.include_router(audit.router)
    app.include_router(callbacks.router)
    app.include_router(connectors.router)
    app.include_router(containments.router)
    app.include_router(guardrails.router)
    app.include_router(intel.router)
    app.include_router(cases.router)
    app.include_router(sla.router)
    app.include_router(evidence.router)
    app.include_router(openc2.router)
    app.include_router(fallback.router)  # last: it matches every path
    app.add_middleware(  # inner: runs after the request id is set
        EdgeGuardMiddleware, evidence_limit=runtime.settings.evidence_max_bytes
    )
    app.add_middleware(RequestContextMiddleware, clock=runtime.clock)
    return app
