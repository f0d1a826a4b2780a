"""Working a case over real HTTP, on both backends: who may change what, and what comes back."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson

from quell.governance.permissions import Role
from quell.runtime import Runtime
from tests.fixtures.servers import LiveServer

MAPPING = {"fields": {"title": "title", "time": "ts", "src.ip": "src", "rule_name": "title"}}


def _incidents(runtime: Runtime, *alerts: tuple[str, str]) -> dict[str, str]:
    """An ``edr`` source and one alert per (title, source address): incident id by title."""
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    for title, src in alerts:
        alert = {"title": title, "ts": "2026-11-28T08:00:00Z", "src": src}
        runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    return {incident.title: incident.id for incident in runtime.incidents.list_all()}


def test_an_analyst_works_the_case_and_an_auditor_only_reads(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    incident_id = _incidents(runtime, ("beacon", "203.0.113.9"))["beacon"]
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    auditor = closing(live_server.client(role_tokens[Role.AUDITOR]))
    path = f"/api/incidents/{incident_id}"

    assert auditor.patch(path, json={"status": "triage"}).status_code == 403
    changed = analyst.patch(path, json={"status": "triage", "assignee": "test-analyst"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["changes"] == {
        "status": ["new", "triage"],
        "assignee": [None, "test-analyst"],
    }
    refused = analyst.patch(path, json={"status": "closed"})
    assert refused.status_code == 422
    assert "closing needs a resolution" in refused.json()["detail"]
    unknown = analyst.patch(path, json={"colour": "red"})
    assert unknown.status_code == 422

    assert auditor.post(f"{path}/notes", json={"body": "x"}).status_code == 403
    # A misnamed field is named, not dropped (it used to say only that "body" was missing).
    misnamed = analyst.post(f"{path}/notes", json={"text": "user called"})
    assert misnamed.status_code == 422
    assert "body.text" in misnamed.text, misnamed.text
    assert analyst.post(f"{path}/notes", json={"body": "user called"}).status_code == 201
    task = analyst.post(f"{path}/tasks", json={"title": "Reimage", "assignee": "ops"}).json()
    assert auditor.post(f"/api/incident-tasks/{task['id']}/complete", json={}).status_code == 403
    done = analyst.post(f"/api/incident-tasks/{task['id']}/complete", json={"result": "ok"})
    assert done.json()["status"] == "done"

    shown = auditor.get(path).json()
    assert (shown["status"], shown["assignee"]) == ("triage", "test-analyst")
    assert [n["body"] for n in shown["notes"]] == ["user called"]
    assert [(t["title"], t["status"]) for t in shown["tasks"]] == [("Reimage", "done")]
    kinds = [e["kind"] for e in shown["timeline"]]
    assert kinds[-4:] == ["updated", "note_added", "task_added", "task_done"]
    assert analyst.get("/api/incidents/inc_00000000000000000000000000").status_code == 404


def test_merge_and_split_over_http(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    ids = _incidents(runtime, ("beacon", "203.0.113.9"), ("scan", "198.51.100.4"))
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    approver = closing(live_server.client(role_tokens[Role.APPROVER]))
    body = {"into": ids["beacon"], "comment": "one actor"}
    assert approver.post(f"/api/incidents/{ids['scan']}/merge", json=body).status_code == 403
    merged = analyst.post(f"/api/incidents/{ids['scan']}/merge", json=body)
    assert merged.status_code == 200, merged.text
    assert merged.json()["alert_count"] == 2
    scan_alert = next(a.id for a in runtime.alerts.list_all() if a.title == "scan")
    split = analyst.post(f"/api/incidents/{ids['beacon']}/split", json={"alert_ids": [scan_alert]})
    assert split.status_code == 201, split.text
    assert (split.json()["title"], split.json()["alert_count"]) == ("scan", 1)
    again = analyst.post(f"/api/incidents/{ids['scan']}/merge", json=body)
    assert again.status_code == 409


def test_incidents_are_searched_with_q(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    _incidents(runtime, ("Ransom note dropped", "203.0.113.9"))
    auditor = closing(live_server.client(role_tokens[Role.AUDITOR]))
    (found,) = auditor.get("/api/incidents", params={"q": "ransom"}).json()
    assert found["title"] == "Ransom note dropped"
    assert found["rank"] > 0
    assert auditor.get("/api/incidents", params={"q": "nothing-like-it"}).json() == []
    assert auditor.get("/api/incidents", params={"q": "..."}).status_code == 422


def test_a_task_due_without_a_time_zone_is_due_in_utc_not_a_500(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    incident_id = _incidents(runtime, ("beacon", "203.0.113.9"))["beacon"]
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    path = f"/api/incidents/{incident_id}/tasks"
    naive = analyst.post(path, json={"title": "Reimage", "due_at": "2026-12-01T10:00:00"})
    assert naive.status_code == 201, naive.text
    zoned = analyst.post(path, json={"title": "Rotate", "due_at": "2026-12-01T10:00:00+05:00"})
    assert zoned.status_code == 201, zoned.text
    due = {t["title"]: t["due_at"] for t in analyst.get(path).json()}
    assert due == {"Reimage": "2026-12-01T10:00:00Z", "Rotate": "2026-12-01T05:00:00Z"}


def test_a_merged_incident_takes_no_notes_or_tasks_and_unknown_ones_are_404(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    """Like changes and evidence, notes and tasks go to the incident it was merged into: on
    the merged one nobody would see them (its case is closed as a duplicate)."""
    ids = _incidents(runtime, ("beacon", "203.0.113.9"), ("scan", "198.51.100.4"))
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    merged = analyst.post(f"/api/incidents/{ids['scan']}/merge", json={"into": ids["beacon"]})
    assert merged.status_code == 200, merged.text
    note = analyst.post(f"/api/incidents/{ids['scan']}/notes", json={"body": "same actor"})
    assert note.status_code == 409, note.text
    assert ids["beacon"] in note.json()["detail"]
    task = analyst.post(f"/api/incidents/{ids['scan']}/tasks", json={"title": "Block it"})
    assert task.status_code == 409, task.text
    assert runtime.cases.notes(ids["scan"]) == []
    assert runtime.cases.tasks(ids["scan"]) == []
    unknown = "/api/incidents/inc_00000000000000000000000000"
    for path in (f"{unknown}/notes", f"{unknown}/tasks", f"{unknown}/evidence"):
        assert analyst.get(path).status_code == 404, path


def test_search_results_page_with_offset_and_huge_offsets_are_refused(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    _incidents(runtime, *(("ransom note", f"203.0.113.{n}") for n in range(3)))
    auditor = closing(live_server.client(role_tokens[Role.AUDITOR]))

    def page(offset: int) -> list[str]:
        params = {"q": "ransom", "limit": 1, "offset": offset}
        response = auditor.get("/api/incidents", params=params)
        assert response.status_code == 200, response.text
        return [found["id"] for found in response.json()]

    pages = [page(0), page(1), page(2), page(3)]
    assert [len(p) for p in pages] == [1, 1, 1, 0]
    assert len({p[0] for p in pages[:3]}) == 3  # each page a different incident
    assert sorted(p[0] for p in pages[:3]) == sorted(i.id for i in runtime.incidents.list_all())
    # An offset past any database's integer was a 500; it is a 422 naming the parameter.
    for params in ({"offset": 2**63}, {"q": "ransom", "offset": 2**63}):
        refused = auditor.get("/api/incidents", params=params)
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "query.offset"
    for path in ("/api/approvals", "/api/alerts", "/api/runs", "/api/playbooks"):
        refused = auditor.get(path, params={"offset": 2**63})
        assert refused.status_code == 422, (path, refused.text)
    for path in ("/api/alerts", "/api/ingest/errors"):
        for limit in (2**63, 0):
            refused = auditor.get(path, params={"limit": limit})
            assert refused.status_code == 422, (path, limit, refused.text)
            assert refused.json()["field"] == "query.limit"
