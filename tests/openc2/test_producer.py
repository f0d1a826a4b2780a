"""Quell as an OpenC2 producer: the ``openc2`` connector sends commands to a consumer (here
Quell's own, over real HTTP) through the SSRF-guarded client, as the engine would call it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from quell.api.app import create_app
from quell.connectors.openc2 import CommandIn, CommandOut, FeaturesIn, Openc2
from quell.connectors.registry import Registry, describe_connector
from quell.governance.permissions import Role
from quell.runtime import Runtime
from quell.sdk import (
    ActionContext,
    ActionError,
    AuthError,
    PermanentError,
    SecretValue,
    TargetNotFound,
)
from quell.sdk.http import OutboundPolicy, guard
from tests.fixtures.servers import LiveServer, start_server
from tests.openc2.support import MEDIA_TYPE, FakeNft

T = TypeVar("T")


@dataclass
class Seen:
    """What the consumer received: each request's headers and body."""

    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


class _Recorder:
    """An outermost ASGI middleware noting every OpenC2 request as it arrived."""

    def __init__(self, app: ASGIApp, seen: Seen) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/api/openc2":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        chunks: list[bytes] = []

        async def recording() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.seen.requests.append((headers, b"".join(chunks)))
            return message

        await self.app(scope, recording, send)


@dataclass
class Peer:
    """A consumer to send to: its URL, what it saw, its fake nft, and tokens by role."""

    url: str
    seen: Seen
    nft: FakeNft
    tokens: dict[Role, str]
    server: LiveServer


@pytest.fixture
def peer(runtime: Runtime, role_tokens: dict[Role, str], tmp_path: Path) -> Iterator[Peer]:
    """Quell's consumer over real HTTP, recording what reaches POST /api/openc2."""
    seen = Seen()
    nft = FakeNft(tmp_path / "nft.json")
    runtime.connector_instances.create(
        "edge-fw", "nftables", {"command": nft.command}, created_by="test"
    )
    app = create_app(runtime)
    app.add_middleware(_Recorder, seen=seen)
    server = start_server(app)
    yield Peer(f"{server.url}/api/openc2", seen, nft, role_tokens, server)
    server.stop()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def _call(
    url: str,
    action: str,
    params: Any,
    *,
    token: str | None,
    allow: tuple[str, ...] = ("127.0.0.1",),
    key: str = "run-1:send:1",
) -> CommandOut:
    """Call an action of an ``openc2`` instance on ``url`` as the engine would."""
    session = guard(OutboundPolicy.parse(list(allow)))
    connector = Openc2(Openc2.Config(url=url))
    ctx = ActionContext(
        run_id="run-1",
        step_id="send",
        attempt=1,
        idempotency_key=key,
        secrets={"token": SecretValue(token)} if token else {},
        http=session,
    )
    try:
        out: CommandOut = await getattr(connector, action)(ctx, params)
        return out
    finally:
        await connector.aclose()
        await session.close()


def _command(**fields: Any) -> CommandIn:
    return CommandIn.model_validate(fields)


def test_query_features_is_sent_as_openc2_and_the_response_parsed(peer: Peer) -> None:
    token = peer.tokens[Role.ANALYST]
    out = _run(_call(peer.url, "query_features", FeaturesIn(), token=token))
    assert out.http_status == 200
    assert out.status == 200
    assert out.results is not None
    assert out.results["versions"] == ["1.0"]
    assert out.results["profiles"] == ["slpf"]
    assert out.results["pairs"]["delete"] == ["slpf:rule_number"]

    ((headers, body),) = peer.seen.requests
    assert headers["content-type"] == MEDIA_TYPE
    assert headers["accept"] == MEDIA_TYPE
    assert headers["authorization"] == f"Bearer {token}"
    assert json.loads(body) == {
        "action": "query",
        "target": {"features": ["versions", "profiles", "pairs", "rate_limit"]},
    }
    # The request id comes from the step's idempotency key: every attempt sends the same one.
    _run(_call(peer.url, "query_features", FeaturesIn(features=[]), token=token))
    assert peer.seen.requests[1][0]["x-request-id"] == headers["x-request-id"]


def test_a_deny_and_the_delete_of_its_rule_through_the_producer(peer: Peer) -> None:
    token = peer.tokens[Role.ADMIN]
    deny = _command(
        action="deny",
        target={"ipv4_net": "198.51.100.23"},
        args={"duration": 600_000, "slpf": {"drop_process": "reject"}},
        command_id="deny-17",
    )
    denied = _run(_call(peer.url, "command", deny, token=token))
    assert denied.status == 200
    assert denied.results is not None
    rule = denied.results["slpf"]["rule_number"]
    assert [r["handle"] for r in peer.nft.rules()] == [rule]
    headers, body = peer.seen.requests[0]
    assert headers["x-request-id"] == "deny-17"  # the command's own id
    assert json.loads(body)["command_id"] == "deny-17"

    delete = _command(action="delete", target={"slpf:rule_number": rule})
    deleted = _run(_call(peer.url, "command", delete, token=token, key="run-1:undo:1"))
    assert (deleted.status, deleted.status_text) == (200, f"rule {rule} deleted")
    assert peer.nft.rules() == []
    with pytest.raises(TargetNotFound, match=f"status 404: no rule {rule}"):
        _run(_call(peer.url, "command", delete, token=token, key="run-1:undo:2"))

    quiet = _command(
        action="deny", target={"ipv4_net": "198.51.100.24"}, args={"response_requested": "none"}
    )
    nothing = _run(_call(peer.url, "command", quiet, token=token, key="run-1:quiet:1"))
    assert (nothing.http_status, nothing.status, nothing.results) == (200, None, None)
    assert len(peer.nft.rules()) == 1


def test_a_400_from_the_consumer_is_a_permanent_error_naming_the_problem(peer: Peer) -> None:
    # Valid OpenC2, but the actuator cannot match ports of ICMP: the consumer answers 400.
    refused = _command(
        action="deny", target={"ipv4_connection": {"protocol": "icmp", "dst_port": 80}}
    )
    with pytest.raises(PermanentError) as failed:
        _run(_call(peer.url, "command", refused, token=peer.tokens[Role.ADMIN]))
    error = failed.value
    assert type(error) is PermanentError
    assert not error.retryable
    assert error.message.startswith("OpenC2 consumer 127.0.0.1: HTTP 400: the command was refused")
    assert "ipv4_connection" in error.message
    assert "ports need protocol tcp, udp or sctp" in error.message
    assert error.details["status"] == 400
    assert len(peer.seen.requests) == 1


def test_an_invalid_command_is_refused_before_it_is_sent(peer: Peer) -> None:
    bad = _command(action="deny", target={"ipv4_net": "10.0.0.300/8"})
    with pytest.raises(PermanentError) as failed:
        _run(_call(peer.url, "command", bad, token=peer.tokens[Role.ADMIN]))
    assert failed.value.code == "invalid_input"
    assert failed.value.message.startswith(
        "not a valid OpenC2 command: target.ipv4_net: '10.0.0.300/8' is not an IPv4 network"
    )
    assert peer.seen.requests == []


def test_the_consumer_s_refusals_become_the_matching_errors(peer: Peer) -> None:
    contain = _command(action="contain", target={"device": {"device_id": "laptop-7"}})
    with pytest.raises(PermanentError) as unsupported:
        _run(_call(peer.url, "command", contain, token=peer.tokens[Role.ADMIN]))
    assert unsupported.value.code == "not_implemented"
    assert "status 501: contain device is not implemented" in unsupported.value.message

    deny = _command(action="deny", target={"ipv4_net": "198.51.100.30"})
    with pytest.raises(AuthError, match="HTTP 401"):
        _run(_call(peer.url, "command", deny, token="qk_not-a-real-token"))
    with pytest.raises(AuthError, match="needs connectors:manage"):
        _run(_call(peer.url, "command", deny, token=peer.tokens[Role.ANALYST]))
    assert peer.nft.rules() == []


def test_a_consumer_the_outbound_policy_refuses_is_never_contacted(peer: Peer) -> None:
    ping = FeaturesIn(features=[])
    with pytest.raises(PermanentError) as blocked:
        _run(_call(peer.url, "query_features", ping, token=peer.tokens[Role.ADMIN], allow=()))
    assert blocked.value.code == "outbound_blocked"
    assert "127.0.0.1" in blocked.value.message
    assert peer.seen.requests == []


def test_the_health_check_pings_the_consumer(peer: Peer) -> None:
    async def check(token: str) -> str:
        session = guard(OutboundPolicy.parse(["127.0.0.1"]))
        connector = Openc2(Openc2.Config(url=peer.url))
        ctx = ActionContext(
            run_id="health",
            step_id="health",
            attempt=1,
            idempotency_key="health",
            secrets={"token": SecretValue(token)},
            http=session,
        )
        try:
            return await connector.health(ctx)
        finally:
            await session.close()

    # The auditor lacks runs:execute: the consumer refuses, and the check says why.
    with pytest.raises(AuthError, match="runs:execute"):
        _run(check(peer.tokens[Role.AUDITOR]))
    assert _run(check(peer.tokens[Role.ANALYST])) == "OpenC2 consumer 127.0.0.1 answered 200"


def test_the_connector_keeps_the_action_contract() -> None:
    registry = Registry()
    registry.add(Openc2)
    described = describe_connector(registry, Openc2)
    assert described["secrets"] == ["token"]
    assert described["config_schema"]["required"] == ["url"]
    assert {a["key"]: a["risk"] for a in described["actions"]} == {
        "openc2.command": "high",
        "openc2.query_features": "read",
    }
    assert described["health_check"] is True
    json.dumps(described)
    unconfigured = Openc2()
    ctx = ActionContext(run_id="r", step_id="s", attempt=1, idempotency_key="k")
    with pytest.raises(ActionError, match="needs a configured url"):
        _run(unconfigured.query_features(ctx, FeaturesIn()))


def test_quell_talks_openc2_to_quell_through_a_configured_instance(
    runtime: Runtime, role_tokens: dict[Role, str], tmp_path: Path
) -> None:
    """The whole path: an ``openc2`` instance (URL and token secret set through the API) whose
    action, called by hand, reaches the consumer of the same Quell."""
    settings = runtime.settings.model_copy(
        update={"plugins": ["quell.connectors.openc2"], "outbound_allow": ["127.0.0.1"]}
    )
    server = start_server(create_app(dataclasses.replace(runtime, settings=settings)))
    try:
        with server.client(role_tokens[Role.ADMIN]) as admin:
            created = admin.post(
                "/api/connectors",
                json={
                    "name": "self",
                    "connector": "openc2",
                    "config": {"url": f"{server.url}/api/openc2"},
                    "secrets": {"token": role_tokens[Role.ANALYST]},
                },
            )
            assert created.status_code == 201, created.text
            assert role_tokens[Role.ANALYST] not in created.text
            ran = admin.post(
                "/api/actions/openc2.query_features/run", json={"input": {"features": ["versions"]}}
            ).json()
            assert ran["ok"] is True, ran
            assert ran["output"] == {
                "http_status": 200,
                "status": 200,
                "status_text": None,
                "results": {"versions": ["1.0"]},
            }
            checked = admin.post("/api/connectors/self/test").json()
            assert checked == {
                "name": "self",
                "ok": True,
                "detail": "OpenC2 consumer 127.0.0.1 answered 200",
            }
    finally:
        server.stop()


def test_commands_go_over_https_to_a_consumer_whose_certificate_is_verified(
    runtime: Runtime, role_tokens: dict[Role, str], tmp_path: Path
) -> None:
    """Quell's consumer served over TLS (a test CA): the producer trusts it through ca_file,
    and refuses it, naming why, without."""
    import threading

    import uvicorn

    from quell.api.server import bind_socket
    from tests.ingest.dovecot import _write_certificates

    ca = _write_certificates(tmp_path / "tls")
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(runtime), log_config=None, access_log=False,
        ssl_certfile=str(tmp_path / "tls" / "server.pem"),
        ssl_keyfile=str(tmp_path / "tls" / "server.key"),
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):  # bounded: about 10 s
        if server.started:
            break
        threading.Event().wait(0.02)
    url = f"https://127.0.0.1:{port}/api/openc2"
    token = role_tokens[Role.ADMIN]

    async def call(ca_file: str | None) -> CommandOut:
        session = guard(OutboundPolicy.parse(["127.0.0.1"]))
        connector = Openc2(Openc2.Config(url=url, ca_file=ca_file))
        ctx = ActionContext(
            run_id="run-tls", step_id="ask", attempt=1, idempotency_key="run-tls:ask:1",
            secrets={"token": SecretValue(token)}, http=session,
        )  # fmt: skip
        try:
            return await connector.query_features(ctx, FeaturesIn())
        finally:
            await connector.aclose()
            await session.close()
            await asyncio.sleep(0)

    try:
        answered = _run(call(str(ca)))
        assert answered.http_status == 200
        assert answered.status == 200
        assert answered.results is not None
        assert answered.results["profiles"] == ["slpf"]
        with pytest.raises(PermanentError) as untrusted:
            _run(call(None))
        assert untrusted.value.code == "tls_untrusted"
        assert "certificate is not trusted" in untrusted.value.message
    finally:
        server.should_exit = True
        thread.join(10)
