"""Fixtures of the OpenC2 tests: a fake nft, and the API serving a runtime whose one nftables
instance (``edge-fw``, configured through the API) runs that fake nft."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from quell.api.app import create_app
from quell.governance.permissions import Role
from quell.runtime import Runtime
from tests.fixtures.servers import LiveServer, start_server
from tests.openc2.support import FakeNft


@pytest.fixture
def fake_nft(tmp_path: Path) -> FakeNft:
    """A fake nft whose table starts empty."""
    return FakeNft(tmp_path / "nft-state.json")


@pytest.fixture
def consumer(
    runtime: Runtime, role_tokens: dict[Role, str], fake_nft: FakeNft
) -> Iterator[LiveServer]:
    """The API over real HTTP, with an nftables instance ``edge-fw`` on the fake nft."""
    server = start_server(create_app(runtime))
    try:
        with server.client(role_tokens[Role.ADMIN]) as admin:
            created = admin.post(
                "/api/connectors",
                json={"name": "edge-fw", "connector": "nftables",
                      "config": {"command": fake_nft.command}},
            )  # fmt: skip
        assert created.status_code == 201, created.text
        yield server
    finally:
        server.stop()


@pytest.fixture
def clients(
    consumer: LiveServer, role_tokens: dict[Role, str]
) -> Iterator[dict[Role, httpx.Client]]:
    """An HTTP client of the consumer for each role, closed at the end."""
    made = {role: consumer.client(token) for role, token in role_tokens.items()}
    yield made
    for client in made.values():
        client.close()
