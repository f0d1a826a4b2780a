"""Containments over real HTTP, on both backends: a write made by hand is recorded with who
made it, listed, and reverted by someone allowed to control runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import httpx
import pytest

from quell.api.app import create_app
from quell.governance.permissions import Role
from quell.runtime import Runtime
from tests.engine.peer import Peer
from tests.fixtures.servers import LiveServer, start_server


@pytest.fixture
def server(runtime: Runtime) -> Iterator[LiveServer]:
    Peer.reset()
    settings = runtime.settings.model_copy(update={"plugins": ["tests.engine.peer"]})
    live = start_server(create_app(dataclasses.replace(runtime, settings=settings)))
    yield live
    live.stop()


def test_a_containment_made_by_hand_is_listed_and_reverted(
    server: LiveServer,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    admin = closing(server.client(role_tokens[Role.ADMIN]))
    analyst = closing(server.client(role_tokens[Role.ANALYST]))
    auditor = closing(server.client(role_tokens[Role.AUDITOR]))
    made = admin.post("/api/actions/test.contain/run", json={"input": {"target": "ws-3"}}).json()
    assert made["ok"] is True, made
    (item,) = auditor.get("/api/containments").json()
    assert item["action"] == "test.contain"
    assert item["created_by"] == "api:test-admin"
    assert item["status"] == "active"
    assert item["revert"] == {"action": "test.release", "input": {"target": "ws-3"}}
    assert auditor.get(f"/api/containments/{item['id']}").json()["id"] == item["id"]

    assert auditor.post(f"/api/containments/{item['id']}/revert").status_code == 403
    Peer.release_failures = 1
    failed = analyst.post(f"/api/containments/{item['id']}/revert").json()
    assert failed["status"] == "failed"
    assert failed["last_error"]["message"] == "the peer is busy"
    assert [c["id"] for c in auditor.get("/api/containments").json()] == [item["id"]]
    done = analyst.post(f"/api/containments/{item['id']}/revert").json()
    assert done["status"] == "reverted"
    assert done["reverted_by"] == "api:test-analyst"
    assert Peer.released == ["ws-3"]
    assert auditor.get("/api/containments").json() == []
    again = analyst.post(f"/api/containments/{item['id']}/revert")
    assert again.status_code == 409
    assert analyst.get("/api/containments/cnt_00000000000000000000000000").status_code == 404
