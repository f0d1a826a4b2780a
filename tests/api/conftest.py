"""The API with an embedded engine (as ``quell serve`` runs it), for the engine's routes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import httpx
import pytest

from quell.api.app import create_app
from quell.runtime import Runtime
from tests.engine.peer import Peer
from tests.fixtures.servers import LiveServer, start_server


@pytest.fixture
def engine_runtime(runtime: Runtime) -> Runtime:
    """The test's runtime, whose actions also include the engine tests' ``test`` connector."""
    Peer.reset()
    settings = runtime.settings.model_copy(update={"plugins": ["tests.engine.peer"]})
    return dataclasses.replace(runtime, settings=settings)


@pytest.fixture
def engine_server(engine_runtime: Runtime) -> Iterator[LiveServer]:
    """The API over real HTTP with an embedded engine and trigger dispatcher."""
    server = start_server(create_app(engine_runtime, embedded_worker=True))
    yield server
    server.stop()


@pytest.fixture
def closing() -> Iterator[Callable[[httpx.Client], httpx.Client]]:
    """``closing(server.client(token))``: the client, closed when the test ends."""
    opened: list[httpx.Client] = []

    def keep(client: httpx.Client) -> httpx.Client:
        opened.append(client)
        return client

    yield keep
    for client in opened:
        client.close()
