"""``jira``: issues in Jira Cloud, through its REST API v3.

- ``create_issue``: ``POST /rest/api/3/issue`` (project key, issue type, summary and a
  description in Atlassian Document Format). The step's idempotency key goes into a label
  (``quell-<hash>``), so a retried attempt finds the issue its earlier attempt created (JQL
  ``labels = "quell-<hash>"``) instead of creating another, and the ``find_issue`` reconcile
  hook answers whether an attempt landed.
- ``update_issue``: ``PUT /rest/api/3/issue/{key}``.
- ``add_comment``: ``POST /rest/api/3/issue/{key}/comment``, with an entity property carrying
  the key hash; a retried attempt finds the comment (``GET …/comment?expand=properties``,
  paginated with ``startAt``/``maxResults``/``total``) instead of adding another.
- ``transition_issue``: ``GET``/``POST /rest/api/3/issue/{key}/transitions``, by transition
  name, id or target status; an issue already in the target status is left as it is.
- ``get_issue``, ``search_issues``: ``GET /rest/api/3/issue/{key}`` and
  ``GET /rest/api/3/search/jql`` (the enhanced search, paginated with ``nextPageToken`` and
  ``isLast``), bounded by ``max_pages``.

Authentication is basic with the account's email (config ``email``) and an API token (secret
``api_token``), or a bearer token (``auth: bearer``, the token in ``api_token``). Errors say
the method, path and Jira's own message, never a credential.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from quell.connectors import rest
from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    Connector,
    Landed,
    PermanentError,
    Reconciliation,
    RiskLevel,
    action,
)

MAX_BODY = 4 * 1024 * 1024
_API = "/rest/api/3"
_KEY = r"^[A-Z][A-Z0-9_]*-[0-9]+$"
_PROJECT = r"^[A-Z][A-Z0-9_]*$"
LABEL_PREFIX = "quell-"
PROPERTY_KEY = "quell.idempotency"


class JiraConfig(BaseModel):
    """Where the Jira site is and how to sign in."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"base_url": "http://127.0.0.1:9", "email": "soc@example.com"}]
        },
    )

    base_url: HttpUrl = Field(description="The site, e.g. https://acme.atlassian.net.")
    email: str | None = Field(None, max_length=254, description="Basic auth: the account.")
    auth: Literal["basic", "bearer"] = "basic"
    timeout: float = Field(30.0, gt=0, le=300, description="Seconds per request.")
    max_pages: int = Field(20, ge=1, le=1000, description="Pages a search reads at most.")
    page_size: int = Field(50, ge=1, le=100, description="Results asked for per page.")


def adf(text: str) -> dict[str, Any]:
    """Plain text as an Atlassian Document Format document: one paragraph per blank-line
    separated block, line breaks kept as ``hardBreak`` nodes."""
    paragraphs: list[dict[str, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        nodes: list[dict[str, Any]] = []
        for number, line in enumerate(block.split("\n")):
            if number:
                nodes.append({"type": "hardBreak"})
            if line:
                nodes.append({"type": "text", "text": line})
        if any(node["type"] == "text" for node in nodes):
            paragraphs.append({"type": "paragraph", "content": nodes})
    return {"type": "doc", "version": 1, "content": paragraphs}


def adf_text(document: Any) -> str:
    """The text of an ADF document (paragraphs joined by blank lines)."""
    if not isinstance(document, Mapping):
        return "" if document is None else str(document)
    if document.get("type") == "text":
        return str(document.get("text", ""))
    if document.get("type") == "hardBreak":
        return "\n"
    parts = [adf_text(child) for child in document.get("content") or []]
    joiner = "\n\n" if document.get("type") == "doc" else ""
    return joiner.join(parts)


def key_hash(idempotency_key: str) -> str:
    """A short, stable, label-safe digest of an idempotency key."""
    return rest.idempotency_tag(idempotency_key)


def jira_message(body: Any, text: str) -> str:
    """Jira's error message (``{"errorMessages": [...], "errors": {field: msg}}``), trimmed."""
    parts: list[str] = []
    if isinstance(body, Mapping):
        parts += [str(item) for item in body.get("errorMessages") or []]
        errors = body.get("errors")
        if isinstance(errors, Mapping):
            parts += [f"{name}: {message}" for name, message in errors.items()]
        if not parts and body.get("message"):
            parts.append(str(body["message"]))
    message = "; ".join(parts) if parts else text.strip()
    return message[:300]


# -- inputs and outputs -------------------------------------------------------------------------


class CreateIssueIn(ActionInput):
    """A new issue."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "project": "SEC",
                    "issue_type": "Task",
                    "summary": "Contain host web-01: C2 beacon to 203.0.113.7",
                    "description": "Alert 4711 (ET MALWARE).\n\nRun run_01 isolated the host.",
                    "labels": ["soc", "containment"],
                    "priority": "High",
                }
            ]
        },
    )

    project: str = Field(pattern=_PROJECT, max_length=20, description="The project key.")
    issue_type: str = Field("Task", min_length=1, max_length=60)
    summary: str = Field(min_length=1, max_length=255)
    description: str = Field("", max_length=30000, description="Plain text (sent as ADF).")
    labels: list[str] = Field(default_factory=list, max_length=20)
    priority: str | None = Field(None, max_length=60, description="A priority name.")
    fields: dict[str, Any] = Field(
        default_factory=dict, description="More fields as Jira names them (customfield_…)."
    )


class IssueOut(ActionOutput):
    """An issue Jira created or found."""

    key: str
    id: str
    url: str = ""
    created: bool = False
    simulated: bool = False
    payload: dict[str, Any] | None = Field(None, description="Dry run only: what would be sent.")


class UpdateIssueIn(ActionInput):
    """New values for an issue's fields."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"key": "SEC-42", "summary": "Contained: web-01", "labels_add": ["contained"]}
            ]
        },
    )

    key: str = Field(pattern=_KEY, max_length=40)
    summary: str | None = Field(None, min_length=1, max_length=255)
    description: str | None = Field(None, max_length=30000)
    priority: str | None = Field(None, max_length=60)
    labels_add: list[str] = Field(default_factory=list, max_length=20)
    labels_remove: list[str] = Field(default_factory=list, max_length=20)
    fields: dict[str, Any] = Field(default_factory=dict)


class UpdateOut(ActionOutput):
    """What was changed."""

    key: str
    updated: bool
    simulated: bool = False
    payload: dict[str, Any] | None = None


class CommentIn(ActionInput):
    """A comment on an issue."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"key": "SEC-42", "body": "Host web-01 isolated by run run_01."}]
        },
    )

    key: str = Field(pattern=_KEY, max_length=40)
    body: str = Field(min_length=1, max_length=30000)


class CommentOut(ActionOutput):
    """The comment added or found."""

    key: str
    comment_id: str
    created: bool = False
    simulated: bool = False


class TransitionIn(ActionInput):
    """Move an issue through its workflow."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"key": "SEC-42", "transition": "Done"}]},
    )

    key: str = Field(pattern=_KEY, max_length=40)
    transition: str = Field(
        min_length=1, max_length=100, description="A transition's name or id, or its status."
    )
    comment: str | None = Field(None, max_length=30000)


class TransitionOut(ActionOutput):
    """Where the issue went."""

    key: str
    transition_id: str
    status: str
    changed: bool
    simulated: bool = False


class GetIssueIn(ActionInput):
    """An issue by key."""

    key: str = Field(pattern=_KEY, max_length=40)


class IssueInfo(ActionOutput):
    """An issue's main fields."""

    key: str
    id: str
    summary: str = ""
    status: str = ""
    labels: list[str] = Field(default_factory=list)
    description: str = ""


class SearchIn(ActionInput):
    """A JQL search."""

    jql: str = Field(min_length=1, max_length=4000)
    fields: list[str] = Field(
        default_factory=lambda: ["summary", "status", "labels"], max_length=50
    )
    limit: int = Field(200, ge=1, le=10000, description="Issues returned at most.")


class SearchOut(ActionOutput):
    """Issues found."""

    issues: list[IssueInfo]
    count: int
    truncated: bool = Field(False, description="More matched than limit or max_pages allowed.")


def _info(issue: Mapping[str, Any]) -> IssueInfo:
    fields = issue.get("fields") or {}
    status = fields.get("status") or {}
    return IssueInfo(
        key=str(issue.get("key", "")),
        id=str(issue.get("id", "")),
        summary=str(fields.get("summary") or ""),
        status=str(status.get("name", "")) if isinstance(status, Mapping) else "",
        labels=[str(label) for label in fields.get("labels") or []],
        description=adf_text(fields.get("description")),
    )


class Jira(Connector):
    """Jira Cloud issues: create, update, comment, transition, search."""

    name = "jira"
    title = "Jira Cloud"
    Config = JiraConfig
    secrets = ("api_token",)

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        if not isinstance(config, JiraConfig):
            raise PermanentError("jira: the instance needs a config with base_url")
        self.settings = config
        self.base = str(config.base_url).rstrip("/")
        self._site = rest.Site("jira", self.base, config.timeout, MAX_BODY)

    # -- HTTP ----------------------------------------------------------------------------------

    def _headers(self, ctx: ActionContext) -> tuple[dict[str, str], str]:
        token = ctx.secret("api_token").reveal()
        if self.settings.auth == "bearer":
            authorization = f"Bearer {token}"
        else:
            if not self.settings.email:
                raise PermanentError("jira: basic auth needs the config's email")
            pair = f"{self.settings.email}:{token}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode()
        headers = {"Authorization": authorization, "Accept": "application/json"}
        return headers, token

    async def _call(
        self,
        ctx: ActionContext,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        """Send one request; the parsed JSON answer (None when empty), or an ActionError."""
        headers, token = self._headers(ctx)
        where = f"jira: {method} {path}"
        reply = await self._site.request(
            ctx,
            method,
            path,
            headers=headers,
            params=params,
            json=body,
        )
        rest.raise_for_call(
            reply,
            vendor="jira",
            where=where,
            what=what,
            message=rest.scrub(jira_message(reply.body, reply.text), (token,)),
            unauthorized="Jira refused the credentials (check email and api_token)",
        )
        return reply.body

    def _url(self, key: str) -> str:
        return f"{self.base}/browse/{key}"

    async def _search(
        self, ctx: ActionContext, jql: str, fields: list[str], limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Issues matching ``jql``, following ``nextPageToken`` for at most ``max_pages``."""
        found: list[dict[str, Any]] = []
        token: str | None = None
        for _page in range(self.settings.max_pages):
            params = {
                "jql": jql,
                "fields": ",".join(fields),
                "maxResults": str(min(self.settings.page_size, limit - len(found))),
            }
            if token:
                params["nextPageToken"] = token
            answer = await self._call(
                ctx, "GET", f"{_API}/search/jql", what="search", params=params
            )
            answer = answer if isinstance(answer, Mapping) else {}
            found += [issue for issue in answer.get("issues") or [] if isinstance(issue, dict)]
            token = answer.get("nextPageToken")
            last = bool(answer.get("isLast", not token))
            if last or not token:
                return found[:limit], False
            if len(found) >= limit:
                return found[:limit], True
        return found[:limit], True

    # -- actions -------------------------------------------------------------------------------

    def create_payload(self, params: CreateIssueIn, label: str) -> dict[str, Any]:
        """The ``POST /rest/api/3/issue`` body for ``params``, carrying the key label."""
        fields: dict[str, Any] = {
            "project": {"key": params.project},
            "issuetype": {"name": params.issue_type},
            "summary": params.summary,
            "labels": sorted({*params.labels, label}),
        }
        if params.description:
            fields["description"] = adf(params.description)
        if params.priority:
            fields["priority"] = {"name": params.priority}
        fields.update(params.fields)
        # Labels given under ``fields`` join the others: the key label must stay, or a
        # retried attempt (and reconcile) could not find the issue and would open another.
        extra = params.fields.get("labels")
        extra = [str(item) for item in extra] if isinstance(extra, list) else []
        fields["labels"] = sorted({*params.labels, *extra, label})
        return {"fields": fields}

    @action(
        "create_issue",
        risk=RiskLevel.LOW,
        title="Create a Jira issue",
        supports_dry_run=True,
        reconcile="find_issue",
    )
    async def create_issue(self, ctx: ActionContext, params: CreateIssueIn) -> IssueOut:
        """Create an issue, or return the one an earlier attempt of this step created."""
        label = LABEL_PREFIX + key_hash(ctx.step_idempotency_key)
        payload = self.create_payload(params, label)
        if ctx.dry_run:
            return IssueOut(key="", id="", simulated=True, payload=payload)
        existing = await self._find(ctx, label)
        if existing is not None:
            ctx.log.info("jira_issue_exists", key=existing.key)
            return existing
        answer = await self._call(ctx, "POST", f"{_API}/issue", what="project", body=payload)
        answer = answer if isinstance(answer, Mapping) else {}
        key = str(answer.get("key", ""))
        return IssueOut(key=key, id=str(answer.get("id", "")), url=self._url(key), created=True)

    async def _find(self, ctx: ActionContext, label: str) -> IssueOut | None:
        issues, _ = await self._search(ctx, f'labels = "{label}"', ["summary"], 1)
        if not issues:
            return None
        key = str(issues[0].get("key", ""))
        return IssueOut(key=key, id=str(issues[0].get("id", "")), url=self._url(key))

    async def find_issue(self, ctx: ActionContext, params: CreateIssueIn) -> Reconciliation:
        """Reconcile ``create_issue``: is there an issue with this step's key label?"""
        label = LABEL_PREFIX + key_hash(ctx.step_idempotency_key)
        found = await self._find(ctx, label)
        if found is None:
            return Reconciliation(Landed.NOT_LANDED, detail=f"no issue has label {label}")
        return Reconciliation(
            Landed.LANDED, found.model_dump(mode="json"), detail=f"issue {found.key}"
        )

    def update_payload(self, params: UpdateIssueIn) -> dict[str, Any]:
        """The ``PUT /rest/api/3/issue/{key}`` body for ``params``."""
        fields: dict[str, Any] = dict(params.fields)
        if params.summary is not None:
            fields["summary"] = params.summary
        if params.description is not None:
            fields["description"] = adf(params.description)
        if params.priority is not None:
            fields["priority"] = {"name": params.priority}
        payload: dict[str, Any] = {"fields": fields}
        labels = [{"add": label} for label in params.labels_add]
        labels += [{"remove": label} for label in params.labels_remove]
        if labels:
            payload["update"] = {"labels": labels}
        return payload

    @action(
        "update_issue",
        risk=RiskLevel.LOW,
        title="Update a Jira issue's fields",
        supports_dry_run=True,
        idempotent=True,
    )
    async def update_issue(self, ctx: ActionContext, params: UpdateIssueIn) -> UpdateOut:
        """Set fields of an issue (and add or remove labels)."""
        payload = self.update_payload(params)
        if not payload["fields"] and "update" not in payload:
            return UpdateOut(key=params.key, updated=False)
        if ctx.dry_run:
            return UpdateOut(key=params.key, updated=False, simulated=True, payload=payload)
        await self._call(
            ctx,
            "PUT",
            f"{_API}/issue/{params.key}",
            what=f"issue {params.key}",
            params={"notifyUsers": "true"},
            body=payload,
        )
        return UpdateOut(key=params.key, updated=True)

    @action(
        "add_comment",
        risk=RiskLevel.LOW,
        title="Comment on a Jira issue",
        supports_dry_run=True,
        reconcile="find_comment",
    )
    async def add_comment(self, ctx: ActionContext, params: CommentIn) -> CommentOut:
        """Add a comment, or return the one an earlier attempt of this step added."""
        if ctx.dry_run:
            return CommentOut(key=params.key, comment_id="", simulated=True)
        mark = key_hash(ctx.step_idempotency_key)
        existing = await self._comment_with(ctx, params.key, mark)
        if existing is not None:
            return CommentOut(key=params.key, comment_id=existing)
        answer = await self._call(
            ctx,
            "POST",
            f"{_API}/issue/{params.key}/comment",
            what=f"issue {params.key}",
            body={
                "body": adf(params.body),
                "properties": [{"key": PROPERTY_KEY, "value": {"key": mark}}],
            },
        )
        answer = answer if isinstance(answer, Mapping) else {}
        return CommentOut(key=params.key, comment_id=str(answer.get("id", "")), created=True)

    async def _comment_with(self, ctx: ActionContext, key: str, mark: str) -> str | None:
        """The id of the issue's comment carrying ``mark``, paging with startAt/total."""
        start = 0
        for _page in range(self.settings.max_pages):
            answer = await self._call(
                ctx,
                "GET",
                f"{_API}/issue/{key}/comment",
                what=f"issue {key}",
                params={
                    "startAt": str(start),
                    "maxResults": str(self.settings.page_size),
                    "expand": "properties",
                },
            )
            answer = answer if isinstance(answer, Mapping) else {}
            comments = [item for item in answer.get("comments") or [] if isinstance(item, dict)]
            for comment in comments:
                for prop in comment.get("properties") or []:
                    value = prop.get("value") if isinstance(prop, Mapping) else None
                    if (
                        prop.get("key") == PROPERTY_KEY
                        and isinstance(value, Mapping)
                        and value.get("key") == mark
                    ):
                        return str(comment.get("id", ""))
            start += len(comments)
            if not comments or start >= int(answer.get("total", 0)):
                return None
        return None

    async def find_comment(self, ctx: ActionContext, params: CommentIn) -> Reconciliation:
        """Reconcile ``add_comment``: does the issue have a comment with this step's key?"""
        found = await self._comment_with(ctx, params.key, key_hash(ctx.step_idempotency_key))
        if found is None:
            return Reconciliation(Landed.NOT_LANDED, detail=f"no such comment on {params.key}")
        output = CommentOut(key=params.key, comment_id=found).model_dump(mode="json")
        return Reconciliation(Landed.LANDED, output, detail=f"comment {found}")

    @action(
        "transition_issue",
        risk=RiskLevel.LOW,
        title="Move a Jira issue through its workflow",
        supports_dry_run=True,
        idempotent=True,
    )
    async def transition_issue(self, ctx: ActionContext, params: TransitionIn) -> TransitionOut:
        """Apply the transition named (by name, id or target status); an issue already in
        the target status is left alone. A dry run reads the transitions and says which."""
        path = f"{_API}/issue/{params.key}"
        what = f"issue {params.key}"
        issue = await self._call(ctx, "GET", path, what=what, params={"fields": "status"})
        current = _info(issue if isinstance(issue, Mapping) else {}).status
        answer = await self._call(ctx, "GET", f"{path}/transitions", what=what)
        answer = answer if isinstance(answer, Mapping) else {}
        options = [item for item in answer.get("transitions") or [] if isinstance(item, dict)]
        wanted = params.transition.casefold()
        chosen = next(
            (
                item
                for item in options
                if str(item.get("id")) == params.transition
                or str(item.get("name", "")).casefold() == wanted
            ),
            None,
        ) or next(
            (
                item
                for item in options
                if str((item.get("to") or {}).get("name", "")).casefold() == wanted
            ),
            None,
        )
        if chosen is None:
            if current.casefold() == wanted:
                return TransitionOut(
                    key=params.key, transition_id="", status=current, changed=False
                )
            names = ", ".join(str(item.get("name")) for item in options) or "none"
            raise PermanentError(
                f"jira: issue {params.key} ({current}) has no transition "
                f"{params.transition!r}; available: {names}"
            )
        target = str((chosen.get("to") or {}).get("name", ""))
        tid = str(chosen.get("id"))
        if target and target.casefold() == current.casefold():
            return TransitionOut(key=params.key, transition_id=tid, status=current, changed=False)
        if ctx.dry_run:
            return TransitionOut(
                key=params.key, transition_id=tid, status=target, changed=True, simulated=True
            )
        body: dict[str, Any] = {"transition": {"id": tid}}
        if params.comment:
            body["update"] = {"comment": [{"add": {"body": adf(params.comment)}}]}
        await self._call(ctx, "POST", f"{path}/transitions", what=what, body=body)
        return TransitionOut(key=params.key, transition_id=tid, status=target, changed=True)

    @action("get_issue", risk=RiskLevel.READ, title="Read a Jira issue", idempotent=True)
    async def get_issue(self, ctx: ActionContext, params: GetIssueIn) -> IssueInfo:
        """An issue's summary, status, labels and description."""
        answer = await self._call(
            ctx,
            "GET",
            f"{_API}/issue/{params.key}",
            what=f"issue {params.key}",
            params={"fields": "summary,status,labels,description"},
        )
        return _info(answer if isinstance(answer, Mapping) else {})

    @action("search_issues", risk=RiskLevel.READ, title="Search Jira with JQL", idempotent=True)
    async def search_issues(self, ctx: ActionContext, params: SearchIn) -> SearchOut:
        """Issues matching ``jql``, page after page up to ``limit`` (and ``max_pages``)."""
        issues, truncated = await self._search(ctx, params.jql, params.fields, params.limit)
        infos = [_info(issue) for issue in issues]
        return SearchOut(issues=infos, count=len(infos), truncated=truncated)

    async def health(self, ctx: ActionContext) -> str:
        """Who the credentials sign in as (``GET /rest/api/3/myself``)."""
        answer = await self._call(ctx, "GET", f"{_API}/myself", what="account")
        answer = answer if isinstance(answer, Mapping) else {}
        who = answer.get("displayName") or answer.get("emailAddress") or "?"
        return f"jira at {self.base}: signed in as {who}"


__all__ = [
    "CommentIn",
    "CommentOut",
    "CreateIssueIn",
    "GetIssueIn",
    "IssueInfo",
    "IssueOut",
    "Jira",
    "JiraConfig",
    "SearchIn",
    "SearchOut",
    "TransitionIn",
    "TransitionOut",
    "UpdateIssueIn",
    "UpdateOut",
    "adf",
    "adf_text",
    "jira_message",
    "key_hash",
]
