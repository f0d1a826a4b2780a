"""Jira against a local server that speaks the documented Jira Cloud REST API v3.

The server checks basic (email + API token) or bearer auth on every request, keeps issues,
comments (with entity properties) and a three-status workflow, answers the enhanced JQL search
(``GET /rest/api/3/search/jql``, ``nextPageToken``/``isLast``) and the comment list
(``startAt``/``maxResults``/``total``) a page at a time, answers errors in Jira's shape
(``{"errorMessages": [...], "errors": {...}}``), and can be told to answer any request with a
given status (401, 403, 404, 429 with ``Retry-After``, 500).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from quell.connectors.instances import InstanceService
from quell.connectors.jira import (
    CommentIn,
    CreateIssueIn,
    Jira,
    JiraConfig,
    SearchIn,
    TransitionIn,
    UpdateIssueIn,
    adf,
    adf_text,
)
from quell.connectors.registry import Registry
from quell.engine.actions import ActionRunner, EnvSecrets
from quell.runtime import Runtime
from quell.sdk import (
    ActionContext,
    AuthError,
    Landed,
    PermanentError,
    RateLimited,
    SecretValue,
    TargetNotFound,
    TransientError,
)
from quell.sdk.http import OutboundPolicy, guard
from tests.fixtures.webapp import serving

EMAIL = "soc@example.com"
TOKEN = "ATATT3xFfGF0-jira-token-value"
STATUSES = ("To Do", "In Progress", "Done")
TRANSITIONS = (("11", "Start progress", "In Progress"), ("21", "Resolve", "Done"),
               ("31", "Reopen", "To Do"))  # fmt: skip
REGISTRY = Registry()
REGISTRY.add(Jira)
ISSUE = {
    "project": "SEC",
    "summary": "Contain host web-01",
    "description": "Alert 4711.\nBeacon to 203.0.113.7.\n\nRun run_1 isolated it.",
    "labels": ["soc"],
    "priority": "High",
}


def _error(status: int, *messages: str, errors: dict[str, str] | None = None) -> web.Response:
    body = {"errorMessages": list(messages), "errors": errors or {}}
    return web.json_response(body, status=status)


class FakeJira:
    """The Jira Cloud endpoints the connector uses, with state."""

    def __init__(self) -> None:
        self.issues: dict[str, dict[str, Any]] = {}
        self.comments: dict[str, list[dict[str, Any]]] = {}
        self.seen: list[tuple[str, str]] = []
        self.faults: dict[str, tuple[int, dict[str, str], Any]] = {}
        self.projects = {"SEC"}
        self.next_id = 10000

    def add_issue(self, project: str, summary: str, labels: list[str] | None = None) -> str:
        self.next_id += 1
        key = f"{project}-{len(self.issues) + 1}"
        self.issues[key] = {
            "id": str(self.next_id),
            "key": key,
            "fields": {
                "summary": summary,
                "labels": labels or [],
                "status": {"name": "To Do"},
                "project": {"key": project},
            },
        }
        self.comments[key] = []
        return key

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        auth = request.headers.get("Authorization", "")
        basic = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
        if auth not in (basic, f"Bearer {TOKEN}"):
            return web.Response(status=401, text="Client must be authenticated to access this.")
        fault = self.faults.get(f"{request.method} {request.path}") or self.faults.get("*")
        if fault is not None:
            status, headers, body = fault
            return web.json_response(body, status=status, headers=headers)
        response: web.StreamResponse = await handler(request)
        return response

    def issue(self, request: web.Request) -> dict[str, Any]:
        key = request.match_info["key"]
        if key not in self.issues:
            raise web.HTTPNotFound(
                text='{"errorMessages":["Issue does not exist or you do not have permission '
                'to see it."],"errors":{}}',
                content_type="application/json",
            )
        return self.issues[key]

    async def myself(self, request: web.Request) -> web.Response:
        return web.json_response({"accountId": "5b10a2844c20165700ede21g",
                                  "emailAddress": EMAIL, "displayName": "SOC Bot"})  # fmt: skip

    async def create(self, request: web.Request) -> web.Response:
        fields = (await request.json()).get("fields") or {}
        project = (fields.get("project") or {}).get("key")
        if project not in self.projects:
            return _error(400, errors={"project": "Specify a valid project ID or key"})
        if not (fields.get("issuetype") or {}).get("name"):
            return _error(400, errors={"issuetype": "Specify an issue type"})
        if not str(fields.get("summary") or "").strip():
            return _error(400, errors={"summary": "You must specify a summary of the issue."})
        description = fields.get("description")
        if description is not None and (
            description.get("type") != "doc" or description.get("version") != 1
        ):
            return _error(400, errors={"description": "Operation value must be an ADF document"})
        for label in fields.get("labels") or []:
            if " " in label:
                return _error(400, errors={"labels": "The label cannot contain spaces."})
        key = self.add_issue(project, fields["summary"], list(fields.get("labels") or []))
        stored = self.issues[key]["fields"]
        stored.update({name: value for name, value in fields.items() if name != "labels"})
        return web.json_response(
            {"id": self.issues[key]["id"], "key": key,
             "self": f"{request.url.origin()}/rest/api/3/issue/{self.issues[key]['id']}"},
            status=201,
        )  # fmt: skip

    async def get(self, request: web.Request) -> web.Response:
        issue = self.issue(request)
        wanted = request.query.get("fields")
        fields = issue["fields"]
        if wanted:
            fields = {name: fields[name] for name in wanted.split(",") if name in fields}
        return web.json_response({"id": issue["id"], "key": issue["key"], "fields": fields})

    async def edit(self, request: web.Request) -> web.Response:
        issue = self.issue(request)
        body = await request.json()
        for name, value in (body.get("fields") or {}).items():
            if name not in {"summary", "description", "priority", "labels"} and not (
                name.startswith("customfield_")
            ):
                return _error(400, errors={name: f"Field '{name}' cannot be set."})
            issue["fields"][name] = value
        for operation in (body.get("update") or {}).get("labels", []):
            labels = issue["fields"]["labels"]
            if "add" in operation and operation["add"] not in labels:
                labels.append(operation["add"])
            if "remove" in operation and operation["remove"] in labels:
                labels.remove(operation["remove"])
        return web.Response(status=204)

    async def list_comments(self, request: web.Request) -> web.Response:
        issue = self.issue(request)
        comments = self.comments[issue["key"]]
        start = int(request.query.get("startAt", "0"))
        size = min(int(request.query.get("maxResults", "50")), 100)
        expand = "properties" in request.query.get("expand", "")
        page = [
            {key: value for key, value in comment.items() if expand or key != "properties"}
            for comment in comments[start : start + size]
        ]
        return web.json_response({"startAt": start, "maxResults": size,
                                  "total": len(comments), "comments": page})  # fmt: skip

    async def add_comment(self, request: web.Request) -> web.Response:
        issue = self.issue(request)
        body = await request.json()
        if (body.get("body") or {}).get("type") != "doc":
            return _error(400, errors={"comment": "Comment body must be an ADF document."})
        self.next_id += 1
        comment = {"id": str(self.next_id), "body": body["body"],
                   "properties": body.get("properties", [])}  # fmt: skip
        self.comments[issue["key"]].append(comment)
        return web.json_response(
            {key: value for key, value in comment.items() if key != "properties"}, status=201
        )

    def _transitions(self, issue: dict[str, Any]) -> list[dict[str, Any]]:
        current = issue["fields"]["status"]["name"]
        return [
            {"id": tid, "name": name, "to": {"name": status, "id": str(STATUSES.index(status))}}
            for tid, name, status in TRANSITIONS
            if status != current
        ]

    async def transitions(self, request: web.Request) -> web.Response:
        issue = self.issue(request)
        return web.json_response({"expand": "transitions",
                                  "transitions": self._transitions(issue)})  # fmt: skip

    async def transition(self, request: web.Request) -> web.Response:
        issue = self.issue(request)
        body = await request.json()
        tid = (body.get("transition") or {}).get("id")
        chosen = next((item for item in self._transitions(issue) if item["id"] == tid), None)
        if chosen is None:
            return _error(400, f"Transition id '{tid}' is not valid for this issue.")
        issue["fields"]["status"] = {"name": chosen["to"]["name"]}
        for update in (body.get("update") or {}).get("comment", []):
            self.next_id += 1
            self.comments[issue["key"]].append({"id": str(self.next_id),
                                                "body": update["add"]["body"]})  # fmt: skip
        return web.Response(status=204)

    async def search(self, request: web.Request) -> web.Response:
        jql = request.query.get("jql", "")
        match = re.fullmatch(r'\s*(labels|project)\s*=\s*"?([\w-]+)"?\s*(ORDER BY key)?\s*', jql)
        if match is None:
            return _error(400, f"Error in the JQL Query: cannot parse {jql!r}.")
        field, value = match[1], match[2]
        hits = [
            issue
            for issue in self.issues.values()
            if (field == "labels" and value in issue["fields"]["labels"])
            or (field == "project" and issue["fields"]["project"]["key"] == value)
        ]
        start = int(request.query.get("nextPageToken") or "0")
        size = min(int(request.query.get("maxResults", "50")), 5000)
        wanted = (request.query.get("fields") or "").split(",")
        page = [
            {"id": issue["id"], "key": issue["key"],
             "fields": {name: issue["fields"][name] for name in wanted
                        if name in issue["fields"]}}
            for issue in hits[start : start + size]
        ]  # fmt: skip
        answer: dict[str, Any] = {"issues": page, "isLast": start + size >= len(hits)}
        if not answer["isLast"]:
            answer["nextPageToken"] = str(start + size)
        return web.json_response(answer)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        api = "/rest/api/3"
        app.router.add_get(f"{api}/myself", self.myself)
        app.router.add_post(f"{api}/issue", self.create)
        app.router.add_get(f"{api}/issue/{{key}}", self.get)
        app.router.add_put(f"{api}/issue/{{key}}", self.edit)
        app.router.add_get(f"{api}/issue/{{key}}/comment", self.list_comments)
        app.router.add_post(f"{api}/issue/{{key}}/comment", self.add_comment)
        app.router.add_get(f"{api}/issue/{{key}}/transitions", self.transitions)
        app.router.add_post(f"{api}/issue/{{key}}/transitions", self.transition)
        app.router.add_get(f"{api}/search/jql", self.search)
        return app

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.seen if method != "GET"]


@asynccontextmanager
async def serve() -> AsyncIterator[tuple[FakeJira, str]]:
    fake = FakeJira()
    async with serving(fake.app()) as base:
        yield fake, base


@asynccontextmanager
async def client(base: str, token: str = TOKEN, **config: Any) -> AsyncIterator[tuple[Jira, Any]]:
    session = guard(OutboundPolicy.parse(["127.0.0.1"]))
    jira = Jira(JiraConfig.model_validate({"base_url": base, "email": EMAIL, **config}))

    def ctx(key: str = "run_1:step_1", dry_run: bool = False) -> ActionContext:
        return ActionContext(run_id="run_1", step_id="step_1", attempt=1, idempotency_key=key,
                             dry_run=dry_run, secrets={"api_token": SecretValue(token)},
                             http=session)  # fmt: skip

    try:
        yield jira, ctx
    finally:
        await session.close()


@pytest.fixture
def instances(runtime: Runtime) -> InstanceService:
    registry = Registry()
    registry.add(Jira)
    return InstanceService(runtime.db, runtime.clock, runtime.secret_box, registry)


def test_adf_round_trip() -> None:
    document = adf("one\ntwo\n\nthree")
    assert document["type"] == "doc"
    assert document["version"] == 1
    assert [node["type"] for node in document["content"][0]["content"]] == [
        "text", "hardBreak", "text",
    ]  # fmt: skip
    assert adf_text(document) == "one\ntwo\n\nthree"


def test_every_action_through_the_runner(instances: InstanceService) -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            instances.create("jira-soc", "jira", {"base_url": base, "email": EMAIL},
                             {"api_token": SecretValue(TOKEN)})  # fmt: skip
            runner = ActionRunner(instances.registry, secrets=EnvSecrets({}), instances=instances,
                                  outbound=OutboundPolicy.parse(["127.0.0.1"]))  # fmt: skip
            try:
                assert "signed in as SOC Bot" in await runner.health(Jira, "jira-soc")
                created = await runner.run_once("jira.create_issue", ISSUE, instance="jira-soc")
                key = created["key"]
                assert created["created"] is True
                assert created["url"] == f"{base}/browse/{key}"
                stored = fake.issues[key]["fields"]
                assert stored["summary"] == ISSUE["summary"]
                assert stored["issuetype"] == {"name": "Task"}
                assert stored["priority"] == {"name": "High"}
                assert adf_text(stored["description"]) == ISSUE["description"]
                assert "soc" in stored["labels"]
                assert any(label.startswith("quell-") for label in stored["labels"])

                await runner.run_once("jira.update_issue", {
                    "key": key, "summary": "Contained web-01", "labels_add": ["contained"],
                    "labels_remove": ["soc"], "fields": {"customfield_10001": "T1071"},
                }, instance="jira-soc")  # fmt: skip
                assert stored["summary"] == "Contained web-01"
                assert "contained" in stored["labels"]
                assert "soc" not in stored["labels"]
                assert stored["customfield_10001"] == "T1071"

                comment = await runner.run_once(
                    "jira.add_comment", {"key": key, "body": "Isolated."}, instance="jira-soc"
                )
                assert comment["created"] is True
                assert adf_text(fake.comments[key][0]["body"]) == "Isolated."

                moved = await runner.run_once(
                    "jira.transition_issue", {"key": key, "transition": "Resolve"},
                    instance="jira-soc",
                )  # fmt: skip
                assert moved == {**moved, "status": "Done", "transition_id": "21", "changed": True}
                assert stored["status"] == {"name": "Done"}

                read = await runner.run_once("jira.get_issue", {"key": key}, instance="jira-soc")
                assert read["status"] == "Done"
                assert read["description"] == ISSUE["description"]
                found = await runner.run_once(
                    "jira.search_issues", {"jql": "project = SEC ORDER BY key"},
                    instance="jira-soc",
                )  # fmt: skip
                assert [issue["key"] for issue in found["issues"]] == [key]
            finally:
                await runner.aclose()

    asyncio.run(scenario())


def test_create_is_idempotent_and_reconciles() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (jira, ctx):
            params = CreateIssueIn.model_validate(ISSUE)
            before = await jira.find_issue(ctx(), params)
            assert before.state is Landed.NOT_LANDED
            first = await jira.create_issue(ctx(), params)
            assert first.created
            after = await jira.find_issue(ctx(), params)
            assert after.state is Landed.LANDED
            assert after.output is not None
            assert after.output["key"] == first.key
            retried = await jira.create_issue(ctx(), params)
            assert retried.key == first.key
            assert not retried.created
            assert len(fake.issues) == 1
            other = await jira.create_issue(ctx("run_1:step_2"), params)
            assert other.key != first.key
            assert len(fake.issues) == 2
            assert [m for m, p in fake.seen if p == "/rest/api/3/issue"] == ["POST", "POST"]

    asyncio.run(scenario())


def test_labels_given_in_fields_keep_the_key_label() -> None:
    # Jira's create body takes any field under "fields", labels too: a playbook that sets
    # them there must not drop the label a retried attempt (and reconcile) finds it by.
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (jira, ctx):
            params = CreateIssueIn.model_validate({**ISSUE, "fields": {"labels": ["phishing"]}})
            first = await jira.create_issue(ctx(), params)
            labels = fake.issues[first.key]["fields"]["labels"]
            assert "phishing" in labels
            assert "soc" in labels
            assert any(label.startswith("quell-") for label in labels)
            landed = await jira.find_issue(ctx(), params)
            assert landed.state is Landed.LANDED
            retried = await jira.create_issue(ctx(), params)
            assert (retried.key, retried.created) == (first.key, False)
            assert len(fake.issues) == 1

    asyncio.run(scenario())


def test_comments_are_idempotent_across_pages() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base, page_size=2) as (jira, ctx):
            key = fake.add_issue("SEC", "noisy")
            for number in range(5):
                fake.comments[key].append({"id": str(number), "body": adf(f"c{number}")})
            params = CommentIn(key=key, body="Isolated.")
            assert (await jira.find_comment(ctx(), params)).state is Landed.NOT_LANDED
            first = await jira.add_comment(ctx(), params)
            assert first.created
            fake.seen.clear()
            again = await jira.add_comment(ctx(), params)
            assert again.comment_id == first.comment_id
            assert not again.created
            assert len(fake.comments[key]) == 6
            assert fake.seen.count(("GET", f"/rest/api/3/issue/{key}/comment")) == 3
            landed = await jira.find_comment(ctx(), params)
            assert landed.state is Landed.LANDED

    asyncio.run(scenario())


def test_search_follows_next_page_tokens_within_bounds() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            keys = [fake.add_issue("SEC", f"issue {n}") for n in range(7)]
            async with client(base, page_size=3) as (jira, ctx):
                found = await jira.search_issues(ctx(), SearchIn(jql="project = SEC"))
                assert [issue.key for issue in found.issues] == keys
                assert not found.truncated
                assert fake.seen.count(("GET", "/rest/api/3/search/jql")) == 3
                limited = await jira.search_issues(ctx(), SearchIn(jql="project = SEC", limit=4))
                assert limited.count == 4
                assert limited.truncated
            async with client(base, page_size=2, max_pages=2) as (jira, ctx):
                bounded = await jira.search_issues(ctx(), SearchIn(jql="project = SEC"))
                assert bounded.count == 4
                assert bounded.truncated

    asyncio.run(scenario())


def test_transitions_by_name_status_or_id_and_already_there() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (jira, ctx):
            key = fake.add_issue("SEC", "work")
            out = await jira.transition_issue(
                ctx(), TransitionIn(key=key, transition="In Progress")
            )
            assert (out.transition_id, out.status, out.changed) == ("11", "In Progress", True)
            same = await jira.transition_issue(
                ctx(), TransitionIn(key=key, transition="In progress")
            )
            assert not same.changed
            assert (
                await jira.transition_issue(ctx(), TransitionIn(key=key, transition="21"))
            ).changed
            assert fake.issues[key]["fields"]["status"]["name"] == "Done"
            with pytest.raises(PermanentError, match="no transition 'Close'; available: "):
                await jira.transition_issue(ctx(), TransitionIn(key=key, transition="Close"))

    asyncio.run(scenario())


def test_a_dry_run_only_reads() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (jira, ctx):
            key = fake.add_issue("SEC", "work")
            created = await jira.create_issue(
                ctx(dry_run=True), CreateIssueIn.model_validate(ISSUE)
            )
            assert created.simulated
            assert created.payload is not None
            assert created.payload["fields"]["description"]["type"] == "doc"
            updated = await jira.update_issue(
                ctx(dry_run=True), UpdateIssueIn(key=key, summary="new")
            )
            assert updated.simulated
            assert updated.payload == {"fields": {"summary": "new"}}
            assert (
                await jira.add_comment(ctx(dry_run=True), CommentIn(key=key, body="x"))
            ).simulated
            moved = await jira.transition_issue(
                ctx(dry_run=True), TransitionIn(key=key, transition="Resolve")
            )
            assert (moved.simulated, moved.status) == (True, "Done")
            assert fake.writes() == []
            assert fake.issues[key]["fields"]["status"]["name"] == "To Do"
            assert len(fake.issues) == 1

    asyncio.run(scenario())


def test_errors_map_to_the_sdk_tree_without_secrets() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            async with client(base, token="wrong-token-value") as (jira, ctx):
                with pytest.raises(AuthError) as refused:
                    await jira.health(ctx())
                assert "refused the credentials" in refused.value.message
                assert "wrong-token-value" not in str(refused.value)
            async with client(base, auth="bearer") as (jira, ctx):
                assert "SOC Bot" in await jira.health(ctx())
            async with client(base) as (jira, ctx):
                with pytest.raises(TargetNotFound, match="issue SEC-99 not found"):
                    await jira.update_issue(ctx(), UpdateIssueIn(key="SEC-99", summary="x"))
                with pytest.raises(PermanentError, match="summary: You must specify"):
                    await jira.create_issue(ctx(), CreateIssueIn(project="SEC", summary=" "))
                with pytest.raises(PermanentError, match="project: Specify a valid project"):
                    await jira.create_issue(ctx(), CreateIssueIn(project="NOPE", summary="x"))
                with pytest.raises(PermanentError, match="Error in the JQL Query"):
                    await jira.search_issues(ctx(), SearchIn(jql="summary ~ x"))
                fake.faults["*"] = (429, {"Retry-After": "12"}, {"errorMessages": ["slow"]})
                with pytest.raises(RateLimited) as limited:
                    await jira.health(ctx())
                assert limited.value.retry_after == 12
                fake.faults["*"] = (503, {}, {"errorMessages": ["maintenance"], "errors": {}})
                with pytest.raises(TransientError, match="HTTP 503"):
                    await jira.health(ctx())
                fake.faults["*"] = (403, {}, {"errorMessages": [f"no {TOKEN}"], "errors": {}})
                with pytest.raises(AuthError) as forbidden:
                    await jira.health(ctx())
                assert TOKEN not in str(forbidden.value)

    asyncio.run(scenario())
