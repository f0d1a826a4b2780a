"""``notify``: tell the team in chat, through incoming webhooks (Slack, Microsoft Teams,
Mattermost), in each product's documented message format.

A webhook URL is a credential (whoever has it can post to the channel), so it is the
instance's secret ``webhook_url``, sealed at rest and never shown or logged; the request goes
through the SSRF-guarded client like every action's. ``format`` picks the payload:

- ``slack``: ``{"text": …, "blocks": [header, section, context]}`` (Slack incoming webhooks);
- ``teams``: a message with one Adaptive Card attachment (Teams Workflows / incoming webhooks);
- ``mattermost``: ``{"text": …, "username"?, "icon_url"?, "channel"?}`` (Mattermost incoming
  webhooks; markdown text).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    AuthError,
    Connector,
    PermanentError,
    RateLimited,
    RiskLevel,
    TransientError,
    action,
)
from quell.sdk.http import OutboundBlocked

Format = Literal["slack", "teams", "mattermost"]
Severity = Literal["info", "low", "medium", "high", "critical"]
_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=10)  # a connect that timed out sent nothing
_ICONS = {"info": "🔵", "low": "🟢", "medium": "🟡", "high": "🟠", "critical": "🔴"}


class NotifyConfig(BaseModel):
    """Which chat product the webhook belongs to, and how the message is signed."""

    model_config = ConfigDict(extra="forbid")

    format: Format = "slack"
    username: str | None = Field(None, max_length=80, description="Mattermost: shown sender.")
    icon_url: HttpUrl | None = Field(None, description="Mattermost: the sender's icon.")
    channel: str | None = Field(None, max_length=80, description="Mattermost: channel override.")


class MessageIn(ActionInput):
    """A message for the team."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "Blocked 203.0.113.7",
                    "text": "Run run_01… blocked the source of alert 4711 for 24 h.",
                    "severity": "high",
                    "link": "https://quell.example/runs/run_01",
                }
            ]
        },
    )

    title: str = Field(min_length=1, max_length=150)
    text: str = Field(min_length=1, max_length=3000)
    severity: Severity = "info"
    link: HttpUrl | None = Field(None, description="Where to read more (a run, an incident).")
    facts: dict[str, str] = Field(
        default_factory=dict, max_length=20, description="Short name/value pairs to show."
    )


class MessageOut(ActionOutput):
    """What the chat server said."""

    format: Format
    status: int
    simulated: bool = False
    payload: dict[str, Any] | None = Field(None, description="Dry run only: what would be sent.")


def slack_payload(message: MessageIn) -> dict[str, Any]:
    """Slack's incoming-webhook format: fallback text and Block Kit blocks."""
    icon = _ICONS[message.severity]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{icon} {message.title}"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": message.text}},
    ]
    if message.facts:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{value}"}
                    for name, value in message.facts.items()
                ],
            }
        )
    context = f"severity: {message.severity}"
    if message.link is not None:
        context += f" · <{message.link}|open in Quell>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": f"{icon} {message.title}: {message.text}", "blocks": blocks}


def teams_payload(message: MessageIn) -> dict[str, Any]:
    """A Teams message carrying one Adaptive Card (schema 1.4)."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": f"{_ICONS[message.severity]} {message.title}",
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
        },
        {"type": "TextBlock", "text": message.text, "wrap": True},
    ]
    facts = [{"title": "severity", "value": message.severity}]
    facts += [{"title": name, "value": value} for name, value in message.facts.items()]
    body.append({"type": "FactSet", "facts": facts})
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    if message.link is not None:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open", "url": str(message.link)}]
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def mattermost_payload(message: MessageIn, config: NotifyConfig) -> dict[str, Any]:
    """Mattermost's incoming-webhook format: markdown text and optional overrides."""
    lines = [f"#### {_ICONS[message.severity]} {message.title}", message.text]
    if message.facts:
        lines.append("| | |\n|---|---|")
        lines.extend(f"| {name} | {value} |" for name, value in message.facts.items())
    if message.link is not None:
        lines.append(f"[Open in Quell]({message.link})")
    payload: dict[str, Any] = {"text": "\n".join(lines)}
    if config.username:
        payload["username"] = config.username
    if config.icon_url is not None:
        payload["icon_url"] = str(config.icon_url)
    if config.channel:
        payload["channel"] = config.channel
    return payload


class Notify(Connector):
    """Chat notifications through Slack, Teams or Mattermost incoming webhooks."""

    name = "notify"
    title = "Chat webhooks (Slack, Teams, Mattermost)"
    Config = NotifyConfig
    secrets = ("webhook_url",)

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = config if isinstance(config, NotifyConfig) else NotifyConfig()

    def payload(self, message: MessageIn) -> dict[str, Any]:
        """The message in the configured product's format."""
        if self.settings.format == "slack":
            return slack_payload(message)
        if self.settings.format == "teams":
            return teams_payload(message)
        return mattermost_payload(message, self.settings)

    @action(
        "message",
        risk=RiskLevel.LOW,
        title="Post a message to the team's channel",
        supports_dry_run=True,
    )
    async def message(self, ctx: ActionContext, params: MessageIn) -> MessageOut:
        """Post ``title`` and ``text`` (with severity, facts and a link) to the channel."""
        payload = self.payload(params)
        if ctx.dry_run:
            return MessageOut(
                format=self.settings.format, status=0, simulated=True, payload=payload
            )
        url = ctx.secret("webhook_url").reveal()
        product = self.settings.format
        try:
            async with ctx.client.post(
                url,
                data=orjson.dumps(payload),
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
                timeout=_TIMEOUT,
            ) as response:
                status = response.status
                body = (await response.content.read(2000)).decode("utf-8", "replace")
                retry_after = response.headers.get("Retry-After")
        except OutboundBlocked as exc:
            raise PermanentError(str(exc), code="outbound_blocked") from None
        except aiohttp.ConnectionTimeoutError:  # nothing was sent: an ordinary retry
            raise TransientError(f"{product} webhook: could not connect in time") from None
        except TimeoutError:  # sent, and no answer came
            raise TransientError(f"{product} webhook: timed out", code="timeout") from None
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            cause = exc.__cause__
            if isinstance(cause, OutboundBlocked):
                raise PermanentError(str(cause), code="outbound_blocked") from None
            raise TransientError(f"{product} webhook: {type(exc).__name__}") from None
        # The URL is the secret: messages name the product and status, never the URL.
        if status == 429:
            seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
            raise RateLimited(f"{product} webhook: rate limited", retry_after=seconds)
        if status in (401, 403, 404, 410):
            raise AuthError(
                f"{product} webhook: HTTP {status} ({body[:100].strip()}): the webhook is "
                "invalid, revoked or not allowed to post"
            )
        if status >= 500:
            raise TransientError(f"{product} webhook: HTTP {status}")
        if not 200 <= status < 300:
            raise PermanentError(f"{product} webhook: HTTP {status} ({body[:200].strip()})")
        return MessageOut(format=product, status=status)


__all__ = [
    "MessageIn",
    "MessageOut",
    "Notify",
    "NotifyConfig",
    "mattermost_payload",
    "slack_payload",
    "teams_payload",
]
