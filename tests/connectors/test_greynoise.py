"""GreyNoise against a local server that speaks the documented Community API v3.

The server answers ``GET /v3/community/{ip}`` with ``{"ip", "noise", "riot", "classification",
"name", "link", "last_seen", "message": "Success"}``; an address it has not seen is a 404 with
``IP not observed scanning the internet or contained in RIOT data set.``, one that is not a
routable IPv4 address a 400. It takes a request with the right ``key`` header or with none (the
unauthenticated community plan); a wrong key is refused.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from aiohttp import web

from quell.connectors.greynoise import judge
from quell.engine.actions import ActionRunner
from quell.runtime import Runtime
from quell.sdk import AuthError, PermanentError, RateLimited, TransientError
from tests.connectors.intel_api import FakeApi, assert_key_never_shown, lookup, run_lookups

NOT_OBSERVED = "IP not observed scanning the internet or contained in RIOT data set."
SEEN: dict[str, dict[str, Any]] = {
    "203.0.113.66": {"noise": True, "riot": False, "classification": "malicious",
                     "name": "unknown", "last_seen": "2024-05-01"},
    "203.0.113.80": {"noise": True, "riot": False, "classification": "unknown",
                     "name": "unknown", "last_seen": "2024-05-02"},
    "198.51.100.8": {"noise": False, "riot": True, "classification": "benign",
                     "name": "Example Public DNS", "last_seen": "2024-05-03"},
    "198.51.100.9": {"noise": True, "riot": False, "classification": "benign",
                     "name": "Example Research Scanner", "last_seen": "2024-05-04"},
}  # fmt: skip


def _message(status: int, message: str, **fields: Any) -> web.Response:
    return web.json_response({"message": message, **fields}, status=status)


async def _community(request: web.Request) -> web.Response:
    given = request.match_info["ip"]
    try:
        address = ipaddress.IPv4Address(given)
    except ValueError:
        return _message(400, "Request is not a valid routable IPv4 address")
    found = SEEN.get(str(address))
    if found is None:
        return _message(404, NOT_OBSERVED, ip=given, noise=False, riot=False)
    link = f"https://viz.greynoise.io/ip/{address}"
    return web.json_response({"ip": given, **found, "link": link, "message": "Success"})


def _api() -> FakeApi:
    return FakeApi(
        routes=[web.get("/v3/community/{ip}", _community)],
        key_header="key",
        key_optional=True,
        refuse=lambda: _message(401, "Authentication required"),
    )


def _verdict(out: dict[str, Any]) -> tuple[bool, str, int]:
    return out["found"], out["verdict"], out["score"]


def test_the_verdicts_through_the_runner(runtime: Runtime) -> None:
    api = _api()

    async def scenario(runner: ActionRunner) -> list[dict[str, Any]]:
        return [
            await lookup(runner, "greynoise", "ipv4", value)
            for value in ("203.0.113.66", "203.0.113.80", "198.51.100.8", "198.51.100.9")
        ]

    malicious, noise, riot, benign = run_lookups(runtime, "greynoise", api, scenario)
    assert [seen.path for seen in api.seen] == [
        "/v3/community/203.0.113.66",
        "/v3/community/203.0.113.80",
        "/v3/community/198.51.100.8",
        "/v3/community/198.51.100.9",
    ]
    assert _verdict(malicious) == (True, "malicious", 80)
    assert malicious["summary"] == "GreyNoise: classified malicious (unknown), last seen 2024-05-01"
    assert malicious["link"] == "https://viz.greynoise.io/ip/203.0.113.66"
    assert malicious["details"] == {
        "noise": True,
        "riot": False,
        "classification": "malicious",
        "name": "unknown",
        "last_seen": "2024-05-01",
    }
    assert _verdict(noise) == (True, "suspicious", 40)
    assert (
        noise["summary"] == "GreyNoise: scanning the internet, intent unknown, last seen 2024-05-02"
    )
    assert _verdict(riot) == (True, "safe", 0)
    assert riot["summary"] == "GreyNoise: a common business service (Example Public DNS)"
    assert _verdict(benign) == (True, "safe", 0)
    assert benign["summary"].startswith("GreyNoise: a benign scanner (Example Research Scanner)")


def test_the_verdict_rule() -> None:
    assert judge({"classification": "malicious", "riot": True})[:2] == ("malicious", 80)
    assert judge({"classification": "unknown", "riot": True})[:2] == ("safe", 0)
    assert judge({"classification": "benign", "noise": True})[:2] == ("safe", 0)
    assert judge({"classification": "unknown", "noise": True})[:2] == ("suspicious", 40)
    assert judge({"classification": "unknown", "noise": False, "riot": False})[:2] == ("info", 0)


def test_an_address_greynoise_has_not_seen_is_an_answer(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> dict[str, Any]:
        return await lookup(runner, "greynoise", "ipv4", "192.0.2.1")

    out = run_lookups(runtime, "greynoise", _api(), scenario)
    assert _verdict(out) == (False, "info", 0)
    assert out["summary"] == "GreyNoise: not observed scanning, not in RIOT"


def test_without_a_key_it_asks_as_the_unauthenticated_plan(runtime: Runtime) -> None:
    api = _api()

    async def scenario(runner: ActionRunner) -> dict[str, Any]:
        return await lookup(runner, "greynoise", "ipv4", "203.0.113.66")

    out = run_lookups(runtime, "greynoise", api, scenario, key=None)
    assert out["verdict"] == "malicious"
    assert "key" not in {name.lower() for name in api.seen[0].headers}


def test_only_ipv4_addresses_are_looked_up(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> None:
        for kind, value in [("ipv6", "2001:db8::1"), ("domain", "evil.example")]:
            with pytest.raises(PermanentError, match=f"cannot look up {kind} values") as refused:
                await lookup(runner, "greynoise", kind, value)
            assert refused.value.code == "unsupported_type"
            assert "(it looks up ipv4)" in refused.value.message

    api = _api()
    run_lookups(runtime, "greynoise", api, scenario)
    assert api.seen == []


def test_rate_limits_and_server_errors(runtime: Runtime) -> None:
    api = _api()

    async def scenario(runner: ActionRunner) -> None:
        daily = _message(
            429,
            "You have hit your daily rate limit of 50 requests",
            plan="community",
            **{"rate-limit": "50-lookups/day"},
        )
        daily.headers["Retry-After"] = "3600"
        api.queued.append(daily)
        with pytest.raises(RateLimited, match="daily rate limit") as limited:
            await lookup(runner, "greynoise", "ipv4", "203.0.113.66")
        assert limited.value.retry_after == 3600
        api.queued.append(_message(500, "Internal Server Error"))
        with pytest.raises(TransientError, match="HTTP 500"):
            await lookup(runner, "greynoise", "ipv4", "203.0.113.66")
        api.queued.append(_message(404, "page not found"))
        with pytest.raises(PermanentError, match="HTTP 404: page not found"):
            await lookup(runner, "greynoise", "ipv4", "203.0.113.66")
        api.queued.append(_message(400, "Request is not a valid routable IPv4 address"))
        with pytest.raises(PermanentError, match="not a valid routable"):
            await lookup(runner, "greynoise", "ipv4", "203.0.113.66")

    run_lookups(runtime, "greynoise", api, scenario)


def test_a_refused_key_is_an_auth_error(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> None:
        with pytest.raises(AuthError, match="HTTP 401: Authentication required") as refused:
            await lookup(runner, "greynoise", "ipv4", "203.0.113.66")
        assert "check the instance's api_key" in refused.value.message

    run_lookups(runtime, "greynoise", _api(), scenario, key="not-the-key")


def test_the_key_goes_in_its_header_and_nowhere_else(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    assert_key_never_shown(runtime, "greynoise", _api(), ("ipv4", "203.0.113.66"), caplog)
