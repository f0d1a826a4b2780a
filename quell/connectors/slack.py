"""``slack``: messages through the Slack Web API, as a bot (``xoxb-`` token).

- ``post_message``: ``POST /api/chat.postMessage`` (JSON). The channel may be an id
  (``C0123ABCD``) or a name (``#soc`` or ``soc``), which is resolved through
  ``conversations.list`` (cursor pagination with ``response_metadata.next_cursor``, at most
  ``max_pages`` pages). The message carries Slack message metadata (``event_type``
  ``quell_step``, the step's key hash), so the ``find_message`` reconcile hook can find it in
  ``conversations.history`` (a reply in a thread in ``conversations.replies``, as the history
  lists no replies), and a retried attempt (``attempt > 1``) looks there first instead of
  posting twice.
- ``resolve_channel``: a channel's id from its name.
- ``health``: ``auth.test``.

Slack answers most failures with HTTP 200 and ``{"ok": false, "error": "..."}``:
``invalid_auth``, ``not_authed``, ``account_inactive``, ``token_revoked``, ``token_expired``
and ``missing_scope`` are :class:`AuthError`; ``channel_not_found`` is
:class:`TargetNotFound`; ``ratelimited`` (HTTP 429 with ``Retry-After``) is
:class:`RateLimited`; Slack's own internal errors and HTTP 5xx are :class:`TransientError`.
The token goes in the ``Authorization`` header only and is never logged or put in an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from quell.connectors import rest
from quell.sdk import (
    REDACTED,
    ActionContext,
    ActionInput,
    ActionOutput,
    AuthError,
    Connector,
    Landed,
    PermanentError,
    RateLimited,
    Reconciliation,
    RiskLevel,
    TargetNotFound,
    TransientError,
    action,
)

MAX_BODY = 8 * 1024 * 1024
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
EVENT_TYPE = "quell_step"
_AUTH = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "not_allowed_token_type",
        "no_permission",
    }
)
_NOT_FOUND = frozenset({"channel_not_found", "thread_not_found", "user_not_found"})
_TRANSIENT = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "team_added_to_org"}
)


class SlackConfig(BaseModel):
    """Where the Slack API is, and how far listings may go."""

    model_config = ConfigDict(extra="forbid")

    base_url: HttpUrl = Field(HttpUrl("https://slack.com"), description="The Web API's host.")
    timeout: float = Field(15.0, gt=0, le=300, description="Seconds per request.")
    max_pages: int = Field(20, ge=1, le=1000, description="conversations.list pages at most.")
    page_size: int = Field(200, ge=1, le=1000, description="Channels asked for per page.")
    history_depth: int = Field(
        200, ge=1, le=1000, description="Recent messages searched for an earlier attempt."
    )


def key_hash(idempotency_key: str) -> str:
    """A short, stable digest of an idempotency key."""
    return rest.idempotency_tag(idempotency_key)


class MessageIn(ActionInput):
    """A message for a channel."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "channel": "#soc-alerts",
                    "text": "Blocked 203.0.113.7 (alert 4711) for 24 h.",
                }
            ]
        },
    )

    channel: str = Field(min_length=1, max_length=80, description="An id, or a #name.")
    text: str = Field(min_length=1, max_length=40000, description="The text (or fallback).")
    blocks: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    thread_ts: str | None = Field(None, pattern=r"^\d+\.\d+$", description="Reply in a thread.")
    unfurl_links: bool = False


class MessageOut(ActionOutput):
    """Where the message went."""

    channel: str
    ts: str = ""
    created: bool = False
    simulated: bool = False
    payload: dict[str, Any] | None = Field(None, description="Dry run only: what would be sent.")


class ChannelIn(ActionInput):
    """A channel name."""

    channel: str = Field(min_length=1, max_length=80)


class ChannelOut(ActionOutput):
    """A channel's id."""

    id: str
    name: str = ""


class Slack(Connector):
    """Slack messages through the Web API (chat.postMessage), as a bot."""

    name = "slack"
    title = "Slack"
    Config = SlackConfig
    secrets = ("bot_token",)

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = config if isinstance(config, SlackConfig) else SlackConfig()
        self.base = str(self.settings.base_url).rstrip("/")
        self._site = rest.Site("slack", self.base, self.settings.timeout, MAX_BODY)
        self._channels: dict[str, str] = {}  # name -> id, as resolved

    # -- HTTP ----------------------------------------------------------------------------------

    async def _call(
        self,
        ctx: ActionContext,
        api_method: str,
        *,
        what: str = "",
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> dict[str, Any]:
        """Call a Web API method (GET with ``params``, or POST with a JSON ``body``); the
        ``ok`` answer, or an ActionError for Slack's error."""
        token = ctx.secret("bot_token").reveal()
        headers = {"Authorization": f"Bearer {token}"}
        method = "GET"
        if body is not None:
            method = "POST"
            headers["Content-Type"] = "application/json; charset=utf-8"
        where = f"slack: {api_method}"
        reply = await self._site.request(
            ctx,
            method,
            f"/api/{api_method}",
            headers=headers,
            params=params,
            json=body,
            where=where,
        )
        status, answer = reply.status, reply.mapping()
        error = str(answer.get("error") or "")
        if token:
            error = error.replace(token, REDACTED)[:100]
        if status == 429 or error == "ratelimited":
            wait = rest.retry_after(reply.headers.get("Retry-After"))
            raise RateLimited(f"{where}: rate limited", retry_after=wait)
        if status >= 500:
            raise TransientError(f"{where}: HTTP {status}")
        if status != 200:
            detail = error or reply.text.strip()[:100]
            if token:
                detail = detail.replace(token, REDACTED)
            raise PermanentError(f"{where}: HTTP {status} ({detail})", details={"status": status})
        if answer.get("ok") is True:
            return answer
        if error in _AUTH:
            hint = "the bot lacks a scope" if error == "missing_scope" else "check the bot_token"
            raise AuthError(f"{where}: Slack refused the token ({error}): {hint}")
        if error in _NOT_FOUND:
            raise TargetNotFound(f"slack: {what or 'target'} not found ({error})")
        if error in _TRANSIENT:
            raise TransientError(f"{where}: {error}")
        raise PermanentError(f"{where}: {error or 'no ok in the answer'}", code="refused")

    # -- channels ------------------------------------------------------------------------------

    async def _resolve(self, ctx: ActionContext, channel: str) -> str:
        """The id of ``channel`` (an id as it is; a name through conversations.list)."""
        if _CHANNEL_ID.match(channel):
            return channel
        name = channel.removeprefix("#").lower()
        if name in self._channels:
            return self._channels[name]
        cursor = ""
        for _page in range(self.settings.max_pages):
            params = {
                "limit": str(self.settings.page_size),
                "exclude_archived": "true",
                "types": "public_channel,private_channel",
            }
            if cursor:
                params["cursor"] = cursor
            answer = await self._call(ctx, "conversations.list", what="channels", params=params)
            for item in answer.get("channels") or []:
                if isinstance(item, Mapping) and item.get("name") and item.get("id"):
                    self._channels[str(item["name"]).lower()] = str(item["id"])
            if name in self._channels:
                return self._channels[name]
            metadata = answer.get("response_metadata") or {}
            cursor = str(metadata.get("next_cursor") or "") if isinstance(metadata, dict) else ""
            if not cursor:
                break
        raise TargetNotFound(
            f"slack: channel #{name} not found (or the bot is not in it; "
            f"searched {len(self._channels)} channels)"
        )

    @action("resolve_channel", risk=RiskLevel.READ, title="Find a Slack channel's id")
    async def resolve_channel(self, ctx: ActionContext, params: ChannelIn) -> ChannelOut:
        """The id of a channel named ``#name`` (or the id given)."""
        found = await self._resolve(ctx, params.channel)
        return ChannelOut(id=found, name=params.channel.removeprefix("#"))

    # -- messages ------------------------------------------------------------------------------

    @staticmethod
    def payload(params: MessageIn, channel: str, mark: str) -> dict[str, Any]:
        """The ``chat.postMessage`` body, with the step's metadata."""
        body: dict[str, Any] = {
            "channel": channel,
            "text": params.text,
            "unfurl_links": params.unfurl_links,
            "metadata": {"event_type": EVENT_TYPE, "event_payload": {"key": mark}},
        }
        if params.blocks:
            body["blocks"] = params.blocks
        if params.thread_ts:
            body["thread_ts"] = params.thread_ts
        return body

    async def _posted(
        self, ctx: ActionContext, channel: str, mark: str, thread_ts: str | None = None
    ) -> str | None:
        """The ts of a recent message in ``channel`` (or in its thread ``thread_ts``: the
        channel's history lists no replies in threads) carrying ``mark``."""
        params = {
            "channel": channel,
            "limit": str(self.settings.history_depth),
            "include_all_metadata": "true",
        }
        api_method = "conversations.history"
        if thread_ts is not None:
            api_method, params["ts"] = "conversations.replies", thread_ts
        answer = await self._call(ctx, api_method, what=f"channel {channel}", params=params)
        for message in answer.get("messages") or []:
            if not isinstance(message, Mapping):
                continue
            metadata = message.get("metadata") or {}
            payload = metadata.get("event_payload") if isinstance(metadata, Mapping) else None
            if (
                isinstance(metadata, Mapping)
                and metadata.get("event_type") == EVENT_TYPE
                and isinstance(payload, Mapping)
                and payload.get("key") == mark
            ):
                return str(message.get("ts", ""))
        return None

    @action(
        "post_message",
        risk=RiskLevel.LOW,
        title="Post a message to a Slack channel",
        supports_dry_run=True,
        reconcile="find_message",
    )
    async def post_message(self, ctx: ActionContext, params: MessageIn) -> MessageOut:
        """Post ``text`` (and blocks) to the channel; a retried attempt first looks for the
        message its earlier attempt posted. A dry run resolves the channel and posts nothing."""
        mark = key_hash(ctx.step_idempotency_key)
        if ctx.dry_run:
            channel = await self._resolve(ctx, params.channel)
            return MessageOut(
                channel=channel,
                simulated=True,
                payload=self.payload(params, channel, mark),
            )
        channel = await self._resolve(ctx, params.channel)
        if ctx.attempt > 1:
            found = await self._posted(ctx, channel, mark, params.thread_ts)
            if found is not None:
                ctx.log.info("slack_message_exists", channel=channel, ts=found)
                return MessageOut(channel=channel, ts=found)
        answer = await self._call(
            ctx,
            "chat.postMessage",
            what=f"channel {params.channel}",
            body=self.payload(params, channel, mark),
        )
        return MessageOut(
            channel=str(answer.get("channel") or channel),
            ts=str(answer.get("ts", "")),
            created=True,
        )

    async def find_message(self, ctx: ActionContext, params: MessageIn) -> Reconciliation:
        """Reconcile ``post_message``: is a recent message of the channel this step's?"""
        channel = await self._resolve(ctx, params.channel)
        found = await self._posted(
            ctx, channel, key_hash(ctx.step_idempotency_key), params.thread_ts
        )
        if found is None:
            return Reconciliation(
                Landed.NOT_LANDED, detail=f"no recent message in {channel} carries this step"
            )
        output = MessageOut(channel=channel, ts=found).model_dump(mode="json")
        return Reconciliation(Landed.LANDED, output, detail=f"message {found} in {channel}")

    async def health(self, ctx: ActionContext) -> str:
        """Who the token is (``auth.test``)."""
        answer = await self._call(ctx, "auth.test")
        return (
            f"slack: signed in as {answer.get('user', '?')} "
            f"in {answer.get('team', '?')} ({answer.get('team_id', '?')})"
        )


__all__ = [
    "ChannelIn",
    "ChannelOut",
    "MessageIn",
    "MessageOut",
    "Slack",
    "SlackConfig",
    "key_hash",
]
