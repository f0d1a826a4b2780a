"""``openc2``: Quell as an OpenC2 producer, sending commands to any consumer over HTTP(S).

The transfer follows the OpenC2 HTTPS specification: one command per ``POST`` to the
configured ``url``, ``Content-Type`` and ``Accept`` ``application/openc2+json;version=1.0``,
an ``X-Request-ID`` (the command's ``command_id`` when it is a plain token, else one derived
from the step's idempotency key, so every attempt of a step sends the same one), and
``Authorization: Bearer <token>`` when the instance has the secret ``token``. Requests go
through the SSRF-guarded client (``ctx.client``): a consumer on a private address must be
allowed with ``QUELL_OUTBOUND_ALLOW``.

A command is checked before it is sent (OpenC2 language 1.0 with the SLPF profile: see
:mod:`quell.openc2.language`), so a malformed one fails its step naming the field and never
reaches the consumer; the consumer's answer is checked as an OpenC2 response. What fails:

* the consumer refused the command (HTTP 400, or OpenC2 status 400): PermanentError whose
  message carries the consumer's ``status_text``, which names the problem;
* HTTP 401/403 or OpenC2 401/403: AuthError; OpenC2 404: TargetNotFound;
  OpenC2 501: PermanentError ``not_implemented``; OpenC2 500: PermanentError;
* HTTP 429: RateLimited (``Retry-After`` honoured); HTTP 5xx without an OpenC2 body, OpenC2
  503, a timeout or a dropped connection: TransientError;
* a destination the outbound policy refuses: PermanentError ``outbound_blocked``.

OpenC2 statuses 200 and 102 are success; the output carries ``status``, ``status_text`` and
``results`` (for an SLPF deny or allow, ``results.slpf.rule_number``). A command sent with
``response_requested: none`` may get no response at all: ``status`` is then null.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import ssl
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from quell.openc2.language import (
    Action,
    Feature,
    InvalidMessage,
    Response,
    load_json,
    parse_command,
    parse_response,
)
from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    AuthError,
    Connector,
    PermanentError,
    RateLimited,
    RiskLevel,
    TargetNotFound,
    TransientError,
    action,
)
from quell.sdk.http import OutboundBlocked

MEDIA_TYPE = "application/openc2+json;version=1.0"
MAX_RESPONSE = 1024 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_REQUEST_NAMESPACE = uuid.UUID("8f7b2a5e-4a1c-4c5e-9a57-0c2f5d3e6b41")


class Openc2Config(BaseModel):
    """Where the consumer listens."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="The consumer's OpenC2 endpoint, e.g. https://fw/openc2.")
    timeout: float = Field(30.0, gt=0, le=300, description="Seconds per command.")
    ca_file: str | None = Field(
        None,
        description="PEM file of the CA that signed the consumer's certificate (default: the "
        "system's CAs). The certificate and host name are always verified.",
    )


class CommandIn(ActionInput):
    """An OpenC2 command, as the language specification writes it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"action": "deny", "target": {"ipv4_net": "203.0.113.7"},
                 "args": {"duration": 3_600_000, "slpf": {"direction": "ingress"}}},
                {"action": "delete", "target": {"slpf:rule_number": 12}},
            ]
        },
    )  # fmt: skip

    action: Action
    target: dict[str, Any] = Field(description="Exactly one target, e.g. {ipv4_net: ...}.")
    args: dict[str, Any] | None = None
    actuator: dict[str, Any] | None = None
    command_id: str | None = None

    def command(self) -> dict[str, Any]:
        """The command as it is sent: the properties given, nothing else."""
        data: dict[str, Any] = {"action": self.action, "target": self.target}
        for name in ("args", "actuator", "command_id"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data


def _all_features() -> list[Feature]:
    return ["versions", "profiles", "pairs", "rate_limit"]


class FeaturesIn(ActionInput):
    """Which features to ask for (all by default; none is a ping)."""

    features: list[Feature] = Field(default_factory=_all_features)
    actuator: dict[str, Any] | None = None


class CommandOut(ActionOutput):
    """The consumer's OpenC2 response."""

    http_status: int
    status: int | None = Field(description="The OpenC2 status; null when none was sent.")
    status_text: str | None = None
    results: dict[str, Any] | None = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _request_id(ctx: ActionContext, command: dict[str, Any]) -> str:
    command_id = command.get("command_id")
    if isinstance(command_id, str) and _REQUEST_ID.match(command_id):
        return command_id
    return str(uuid.uuid5(_REQUEST_NAMESPACE, ctx.step_idempotency_key))


class Openc2(Connector):
    """Sends OpenC2 commands (language 1.0, SLPF profile) to a consumer over HTTP(S)."""

    name = "openc2"
    title = "OpenC2 producer (HTTPS)"
    Config = Openc2Config
    secrets = ("token",)

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = config if isinstance(config, Openc2Config) else None
        self._context: ssl.SSLContext | None = None

    def _tls(self) -> ssl.SSLContext | bool:
        """The TLS context for the consumer: its CA file when one is set, else the system's
        (True); verification is never turned off."""
        if self.settings is None or self.settings.ca_file is None:
            return True
        if self._context is None:
            try:
                self._context = ssl.create_default_context(cafile=self.settings.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise PermanentError(
                    f"ca_file {self.settings.ca_file}: cannot be read as PEM CAs ({exc})",
                    code="bad_ca_file",
                ) from None
        return self._context

    @action("command", risk=RiskLevel.HIGH, title="Send an OpenC2 command")
    async def command(self, ctx: ActionContext, params: CommandIn) -> CommandOut:
        """Check the command, send it to the consumer, and return its OpenC2 response."""
        return await self._send(ctx, params.command())

    @action(
        "query_features", risk=RiskLevel.READ, idempotent=True, title="Ask a consumer's features"
    )
    async def query_features(self, ctx: ActionContext, params: FeaturesIn) -> CommandOut:
        """Send ``query features``: the consumer's versions, profiles, pairs and rate limit."""
        command: dict[str, Any] = {"action": "query", "target": {"features": params.features}}
        if params.actuator is not None:
            command["actuator"] = params.actuator
        return await self._send(ctx, command)

    async def health(self, ctx: ActionContext) -> str:
        """The consumer answers an empty ``query features`` (the OpenC2 ping) with 200."""
        answer = await self._send(ctx, {"action": "query", "target": {"features": []}})
        return f"OpenC2 consumer {self._settings().url.host} answered {answer.status}"

    def _settings(self) -> Openc2Config:
        if self.settings is None:
            raise PermanentError(
                "the openc2 connector needs a configured url: quell connector add <name> "
                '--type openc2 --config \'{"url": "https://consumer/openc2"}\'',
                code="connector_config",
            )
        return self.settings

    async def _send(self, ctx: ActionContext, command: dict[str, Any]) -> CommandOut:
        settings = self._settings()
        try:
            checked = parse_command(command)
        except InvalidMessage as exc:
            raise PermanentError(
                f"not a valid OpenC2 command: {exc.message}",
                code="invalid_input",
                details={"path": exc.path},
            ) from None
        headers = {
            "Content-Type": MEDIA_TYPE,
            "Accept": MEDIA_TYPE,
            "X-Request-ID": _request_id(ctx, command),
        }
        token = ctx.secrets.get("token")
        if token:
            headers["Authorization"] = f"Bearer {token.reveal()}"
        host = settings.url.host or "?"
        try:
            async with ctx.client.post(
                str(settings.url),
                data=checked.model_dump_json(by_alias=True, exclude_unset=True).encode(),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=settings.timeout),
                ssl=self._tls(),
            ) as answer:
                http_status = answer.status
                body = await answer.content.read(MAX_RESPONSE)
                content_type = answer.headers.get("Content-Type", "")
                retry_after = answer.headers.get("Retry-After")
        except OutboundBlocked as exc:
            raise PermanentError(str(exc), code="outbound_blocked") from None
        except aiohttp.ClientConnectorCertificateError:
            raise PermanentError(
                f"OpenC2 consumer {host}: its certificate is not trusted (set ca_file to the CA "
                "that signed it)",
                code="tls_untrusted",
            ) from None
        except TimeoutError:
            raise TransientError(f"OpenC2 consumer {host}: no answer in time") from None
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OutboundBlocked) else None
            if cause is not None:
                raise PermanentError(str(cause), code="outbound_blocked") from None
            raise TransientError(f"OpenC2 consumer {host}: {type(exc).__name__}") from None
        response = self._read(host, http_status, content_type, body, retry_after)
        if response is None:
            return CommandOut(http_status=http_status, status=None)
        self._raise_for(host, response)
        return CommandOut(
            http_status=http_status,
            status=response.status,
            status_text=response.status_text,
            results=response.results.to_json() if response.results is not None else None,
        )

    @staticmethod
    def _read(
        host: str, http_status: int, content_type: str, body: bytes, retry_after: str | None
    ) -> Response | None:
        """The OpenC2 response in the answer (None for an empty 2xx), or the error it means."""
        where = f"OpenC2 consumer {host}: HTTP {http_status}"
        parsed: Response | None = None
        problem = f"not JSON ({content_type or 'no content type'})"
        said: str | None = None  # what the body says went wrong, OpenC2 or problem+json
        if body.strip():
            try:
                data = load_json(body, "response")
                parsed = parse_response(data)
            except InvalidMessage as exc:
                problem = exc.message
            else:
                said = parsed.status_text
            if parsed is None and isinstance(data := _json_or_none(body), dict):
                for key in ("status_text", "detail"):
                    if isinstance(data.get(key), str):
                        said = data[key]
                        break
        if http_status == 400 or (parsed is not None and parsed.status == 400):
            raise PermanentError(
                f"{where}: the command was refused: {said or 'bad request'}",
                details={"status": 400, "status_text": said},
            )
        if http_status == 429:
            raise RateLimited(f"{where}: rate limited", retry_after=_retry_after(retry_after))
        if http_status in (401, 403):
            raise AuthError(f"{where}: {said or 'the credentials were refused'}")
        if parsed is not None:
            return parsed  # an OpenC2 status, whatever the HTTP status: _raise_for reads it
        if not 200 <= http_status < 300:
            error = TransientError if http_status >= 500 else PermanentError
            raise error(f"{where}: {said or 'not an OpenC2 response'}")
        if not body.strip():
            return None  # response_requested none: nothing to read
        raise PermanentError(f"{where}: the answer is not an OpenC2 response: {problem}")

    @staticmethod
    def _raise_for(host: str, response: Response) -> None:
        """Raise the error an unsuccessful OpenC2 status means."""
        status = response.status
        if status in (102, 200):
            return
        message = f"OpenC2 consumer {host}: status {status}: {response.status_text or ''}".rstrip(
            ": "
        )
        details = {"status": status}
        if status in (401, 403):
            raise AuthError(message, details=details)
        if status == 404:
            raise TargetNotFound(message, details=details)
        if status == 501:
            raise PermanentError(message, code="not_implemented", details=details)
        if status == 503:
            raise TransientError(message, details=details)
        raise PermanentError(message, details=details)


__all__ = ["CommandIn", "CommandOut", "FeaturesIn", "Openc2", "Openc2Config"]
