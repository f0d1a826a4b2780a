"""Liveness and readiness against real databases, reachable or not."""

from __future__ import annotations

from pathlib import Path

from quell.api.app import create_app
from quell.clock import ManualClock
from quell.runtime import Runtime
from quell.sdk.secret import SecretValue
from quell.settings import load_settings
from quell.store import migrate
from quell.store.database import Database
from tests.fixtures.servers import start_server


def test_readyz_is_503_when_the_database_does_not_answer(tmp_path: Path) -> None:
    dead = Database("postgresql://quell:pw-canary@127.0.0.1:9/secret-db-name?password=query-canary")
    runtime = Runtime(
        settings=load_settings(data_dir=tmp_path),
        db=dead,
        secret_key=SecretValue("k" * 40),
        clock=ManualClock(),
    )
    live = start_server(create_app(runtime))
    try:
        with live.client() as client:
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
    finally:
        live.stop()
    assert ready.status_code == 503
    assert ready.json()["code"] == "storage_unavailable"
    for leak in ("pw-canary", "query-canary", "secret-db-name", "127.0.0.1"):
        assert leak not in ready.text


def test_readyz_is_503_when_the_schema_is_behind(blank_database_url: str, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", database_url=blank_database_url)
    with Runtime.open(settings, clock=ManualClock()) as runtime:
        live = start_server(create_app(runtime))
        try:
            with live.client() as client:
                assert client.get("/readyz").status_code == 200
                assert client.head("/healthz").status_code == 200
                migrate.downgrade(runtime.db, "base")
                stale = client.get("/readyz")
        finally:
            live.stop()
    assert stale.status_code == 503
    assert stale.json()["code"] == "migration_required"
    assert stale.json()["head"] == migrate.head_revision()
