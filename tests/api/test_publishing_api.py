"""Playbook publishing over real HTTP, on both backends, with review required (the default):
draft -> in review -> published by someone other than the author; a rejection sends a version
back; only published versions run for real; runs pin their version; a rollback makes an
earlier version active again; versions diff; every step is on the record and audited."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from quell.api.app import create_app
from quell.runtime import Runtime
from quell.sdk import SecretValue
from tests.api.engine_client import ENDED, settle
from tests.engine.peer import Peer
from tests.fixtures.servers import LiveServer, start_server

PASSWORD = "correct horse battery staple"
V1 = """\
id: triage
name: Triage a host
version: {version}
inputs: {{host: {{type: string, required: true}}}}
steps:
  - {{id: look, action: test.read, with: {{value: "{{{{ host }}}}"}}}}
"""
V2_EXTRA = '  - {id: again, action: test.read, with: {value: "second look"}}\n'


@pytest.fixture
def server(runtime: Runtime) -> Iterator[LiveServer]:
    Peer.reset()
    settings = runtime.settings.model_copy(
        update={"plugins": ["tests.engine.peer"], "playbook_review": "required"}
    )
    app_runtime = dataclasses.replace(runtime, settings=settings)
    for name, role in [("root", "admin"), ("dana", "author"), ("pat", "approver")]:
        app_runtime.users.add(name, role, password=SecretValue(PASSWORD), by="setup")
    live = start_server(create_app(app_runtime, embedded_worker=True))
    yield live
    live.stop()


def _session(server: LiveServer, name: str) -> Any:
    with server.client() as anonymous:
        token = anonymous.post("/api/login", json={"name": name, "password": PASSWORD})
        assert token.status_code == 200, token.text
    return server.client(token.json()["token"])


def _add(client: Any, text: str, **params: Any) -> Any:
    return client.post(
        "/api/playbooks", content=text, headers={"content-type": "application/yaml"},
        params=params,
    )  # fmt: skip


def test_a_version_goes_live_only_through_someone_elses_review(server: LiveServer) -> None:
    root, dana, pat = (_session(server, n) for n in ("root", "dana", "pat"))
    with root, dana, pat:
        assert _add(root, V1.format(version=1), activate="true").status_code == 409
        added = _add(root, V1.format(version=1))
        assert added.status_code == 201, added.text
        assert (added.json()["state"], added.json()["active"]) == ("draft", False)

        draft_run = root.post("/api/playbooks/triage/runs", json={"inputs": {"host": "ws-1"}})
        assert draft_run.status_code == 409
        assert "runs only as a dry run" in draft_run.json()["detail"]
        dry = root.post(
            "/api/playbooks/triage/runs", json={"inputs": {"host": "ws-1"}, "dry_run": True}
        )
        assert dry.status_code == 202, dry.text
        early = pat.post("/api/playbooks/triage/publish", json={"version": 1, "comment": "ok"})
        assert early.status_code == 409  # a draft is submitted first
        assert "submit it for review first" in early.json()["detail"]

        assert root.post("/api/playbooks/triage/submit", json={}).json()["state"] == "in_review"
        own = root.post("/api/playbooks/triage/publish", json={"comment": "I checked it"})
        assert own.status_code == 403  # the author, admin or not
        assert "cannot approve its publication" in own.json()["detail"]
        assert dana.post("/api/playbooks/triage/publish", json={"comment": "x"}).status_code == 403
        silent = pat.post("/api/playbooks/triage/publish", json={})
        assert silent.status_code == 422
        published = pat.post("/api/playbooks/triage/publish", json={"comment": "read it, fine"})
        assert published.status_code == 200, published.text
        assert (published.json()["state"], published.json()["active"]) == ("published", True)
        assert published.json()["published_by"] == "pat"

        # A published version never changes: other content under its number is refused.
        changed = _add(dana, V1.format(version=1) + V2_EXTRA)
        assert changed.status_code == 409
        assert "never changes" in changed.json()["detail"]

        v2 = _add(dana, V1.format(version=2) + V2_EXTRA)
        assert v2.json()["state"] == "draft"
        assert dana.post("/api/playbooks/triage/submit", json={"version": 2}).status_code == 200
        no_reason = pat.post("/api/playbooks/triage/reject", json={"version": 2})
        assert no_reason.status_code == 422
        rejected = pat.post(
            "/api/playbooks/triage/reject", json={"version": 2, "comment": "name the second look"}
        )
        assert rejected.json()["state"] == "draft"
        dana.post("/api/playbooks/triage/submit", json={"version": 2, "comment": "named"})
        live = pat.post("/api/playbooks/triage/publish", json={"version": 2, "comment": "good"})
        assert (live.json()["version"], live.json()["active"]) == (2, True)

        run_id = root.post("/api/playbooks/triage/runs", json={"inputs": {"host": "ws-2"}}).json()[
            "id"
        ]
        run = settle(root, run_id, until=ENDED)
        assert run["status"] == "succeeded", run["error"]
        assert run["playbook_version"] == v2.json()["id"]

        assert dana.post("/api/playbooks/triage/rollback", json={"version": 1}).status_code == 403
        back = pat.post(
            "/api/playbooks/triage/rollback", json={"version": 1, "comment": "v2 is noisy"}
        )
        assert (back.json()["version"], back.json()["active"]) == (1, True)
        shown = root.get("/api/playbooks/triage").json()
        assert (shown["version"], shown["state"]) == (1, "published")
        assert root.get(f"/api/runs/{run_id}").json()["playbook_version"] == v2.json()["id"]

        diff = root.get("/api/playbooks/triage/diff", params={"from": 1, "to": 2}).json()
        assert "-version: 1\n+version: 2\n" in diff["diff"]
        assert '+  - {id: again, action: test.read, with: {value: "second look"}}' in diff["diff"]
        record = [
            (r["version"], r["action"], r["by"], r["comment"])
            for r in root.get("/api/playbooks/triage/reviews").json()
        ]
        trail = root.get("/api/audit", params={"action": "playbook."}).json()
    assert record == [
        (1, "added", "root", None),
        (1, "submitted", "root", None),
        (1, "published", "pat", "read it, fine"),
        (2, "added", "dana", None),
        (2, "submitted", "dana", None),
        (2, "rejected", "pat", "name the second look"),
        (2, "submitted", "dana", "named"),
        (2, "published", "pat", "good"),
        (1, "rolled_back", "pat", "v2 is noisy"),
    ]
    assert [(e["actor"], e["action"]) for e in reversed(trail)][-2:] == [
        ("pat", "playbook.published"),
        ("pat", "playbook.rolled_back"),
    ]
    published_event = next(e for e in trail if e["action"] == "playbook.published")
    assert published_event["detail"]["before"] == {"state": "in_review", "active": False}
    assert published_event["detail"]["after"] == {"state": "published", "active": True}


def test_the_same_text_is_the_same_version_whatever_path_it_comes_under(
    server: LiveServer,
) -> None:
    """A version is its content: adding the text again from another folder, or through the
    API without a file name, was refused as "other content" under the same version number."""
    with _session(server, "dana") as dana:
        first = _add(dana, V1.format(version=1), file="pb/triage.yaml")
        assert first.status_code == 201, first.text
        for params in ({"file": "triage.yaml"}, {"file": "/srv/pb/triage.yaml"}, {}):
            same = _add(dana, V1.format(version=1), **params)
            assert same.status_code in (200, 201), same.text
            assert same.json()["id"] == first.json()["id"]
        changed = _add(dana, V1.format(version=1) + V2_EXTRA, file="pb/triage.yaml")
        assert changed.status_code == 409  # other content is still other content
        assert "never changes" in changed.json()["detail"]
