"""Liveness and readiness: the only routes that need no token."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from quell.api.auth import RuntimeDep
from quell.errors import MigrationRequired
from quell.store import migrate

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    """Answers as long as the process serves requests; touches nothing else."""
    return {"status": "ok"}


@router.get("/readyz", summary="The database is reachable and its schema current")
async def readyz(runtime: RuntimeDep) -> dict[str, str]:
    """503 problem+json when the database cannot be reached or needs a migration."""

    def check() -> migrate.SchemaState:
        runtime.db.ping()
        return migrate.state(runtime.db)

    schema = await run_in_threadpool(check)
    if schema.status is not migrate.SchemaStatus.CURRENT:
        raise MigrationRequired(
            f"the database schema is {schema.status.value}; this Quell needs {schema.head}",
            current=schema.current,
            head=schema.head,
        )
    return {"status": "ready", "database": runtime.db.backend.value, "schema": schema.head}
