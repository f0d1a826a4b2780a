"""Liveness and readiness: the only routes that need no token."""

from __future__ import annotations

import structlog
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from quell.api.auth import RuntimeDep
from quell.errors import MigrationRequired, StorageUnavailable
from quell.store import migrate

router = APIRouter(tags=["health"])
log = structlog.get_logger(__name__)


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    """Answers as long as the process serves requests; touches nothing else."""
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", summary="The database is reachable and its schema current")
async def readyz(runtime: RuntimeDep) -> dict[str, str]:
    """503 problem+json when the database cannot be reached or needs a migration."""

    def check() -> migrate.SchemaState:
        runtime.db.ping()
        return migrate.state(runtime.db)

    try:
        schema = await run_in_threadpool(check)
    except StorageUnavailable as exc:
        # The caller is anonymous: the reason (host, port, driver text) stays in the log.
        log.warning("not_ready", reason=exc.message)
        raise StorageUnavailable("the database does not answer") from None
    if schema.status is not migrate.SchemaStatus.CURRENT:
        raise MigrationRequired(
            f"the database schema is {schema.status.value}; this Quell needs {schema.head}",
            current=schema.current,
            head=schema.head,
        )
    return {"status": "ready", "database": runtime.db.backend.value, "schema": schema.head}
