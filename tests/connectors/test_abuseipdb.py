"""AbuseIPDB against a local server that speaks the documented API v2.

The server wants ``Key``, answers ``GET /api/v2/check?ipAddress=...&maxAgeInDays=...`` with
``{"data": {"ipAddress", "isPublic", "ipVersion", "isWhitelisted", "abuseConfidenceScore",
"countryCode", "usageType", "isp", "domain", "isTor", "totalReports", "numDistinctUsers",
"lastReportedAt"}}`` for any address (one nobody reported with zero reports, as AbuseIPDB
does), and errors in its ``{"errors": [{"detail", "status"}]}`` shape (422 for what is not an
address; 429 with ``Retry-After`` and ``X-RateLimit-*``).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest
from aiohttp import web

from quell.engine.actions import ActionRunner
from quell.runtime import Runtime
from quell.sdk import AuthError, PermanentError, RateLimited, TransientError
from tests.connectors.intel_api import FakeApi, assert_key_never_shown, lookup, run_lookups

AUTH_FAILED = (
    "Authentication failed. Your API key is either missing, incorrect, or revoked. "
    "Note: The APIv2 key differs from the APIv1 key."
)
REPORTED: dict[str, dict[str, Any]] = {
    "203.0.113.66": {"abuseConfidenceScore": 100, "totalReports": 1234, "numDistinctUsers": 321,
                     "usageType": "Data Center/Web Hosting/Transit", "isp": "Bulletproof Ltd",
                     "lastReportedAt": "2024-05-01T10:00:00+00:00", "isTor": False},
    "203.0.113.40": {"abuseConfidenceScore": 40, "totalReports": 12, "numDistinctUsers": 5},
    "203.0.113.9": {"abuseConfidenceScore": 9, "totalReports": 2, "numDistinctUsers": 1},
    "2001:db8::66": {"abuseConfidenceScore": 80, "totalReports": 30, "numDistinctUsers": 11},
    "198.51.100.53": {"abuseConfidenceScore": 0, "totalReports": 3, "numDistinctUsers": 3,
                      "isWhitelisted": True, "isp": "Example DNS"},
}  # fmt: skip


def _errors(status: int, detail: str, **headers: str) -> web.Response:
    body = {"errors": [{"detail": detail, "status": status}]}
    return web.json_response(body, status=status, headers=headers)


async def _check(request: web.Request) -> web.Response:
    given = request.query.get("ipAddress", "")
    try:
        address = ipaddress.ip_address(given)
    except ValueError:
        return _errors(
            422,
            "The ip address must be a valid IPv4 or IPv6 address (e.g. 8.8.8.8 or "
            "2001:4860:4860::8888).",
        )
    data = {
        "ipAddress": str(address),
        "isPublic": address.is_global,
        "ipVersion": address.version,
        "isWhitelisted": False,
        "abuseConfidenceScore": 0,
        "countryCode": "NL",
        "usageType": None,
        "isp": "Example ISP",
        "domain": "example.net",
        "hostnames": [],
        "isTor": False,
        "totalReports": 0,
        "numDistinctUsers": 0,
        "lastReportedAt": None,
        **REPORTED.get(str(address), {}),
    }
    return web.json_response({"data": data})


def _api() -> FakeApi:
    return FakeApi(
        routes=[web.get("/api/v2/check", _check)],
        key_header="Key",
        refuse=lambda: _errors(401, AUTH_FAILED),
    )


def _verdict(out: dict[str, Any]) -> tuple[bool, str, int]:
    return out["found"], out["verdict"], out["score"]


def test_the_verdicts_through_the_runner(runtime: Runtime) -> None:
    api = _api()

    async def scenario(runner: ActionRunner) -> list[dict[str, Any]]:
        return [
            await lookup(runner, "abuseipdb", kind, value)
            for kind, value in [
                ("ipv4", "203.0.113.66"),
                ("ipv4", "203.0.113.40"),
                ("ipv4", "203.0.113.9"),
                ("ipv6", "2001:DB8:0:0::66"),
                ("ipv4", "198.51.100.53"),
                ("ipv4", "192.0.2.1"),
            ]
        ]

    evil, doubtful, faint, evil6, listed, unknown = run_lookups(runtime, "abuseipdb", api, scenario)
    assert [seen.query for seen in api.seen][:2] == [
        {"ipAddress": "203.0.113.66", "maxAgeInDays": "90"},
        {"ipAddress": "203.0.113.40", "maxAgeInDays": "90"},
    ]
    assert api.seen[3].query["ipAddress"] == "2001:db8::66"
    assert all(seen.headers["Accept"] == "application/json" for seen in api.seen)

    assert _verdict(evil) == (True, "malicious", 100)
    assert evil["summary"] == (
        "AbuseIPDB: abuse confidence 100% from 1234 reports by 321 users in 90 days"
    )
    assert evil["link"] == "https://www.abuseipdb.com/check/203.0.113.66"
    assert evil["details"]["isp"] == "Bulletproof Ltd"
    assert evil["details"]["totalReports"] == 1234
    assert "hostnames" not in evil["details"]
    assert _verdict(doubtful) == (True, "suspicious", 40)
    assert _verdict(faint) == (True, "info", 9)  # reported, but too faintly to say anything
    assert _verdict(evil6) == (True, "malicious", 80)
    assert evil6["value"] == "2001:db8::66"
    assert _verdict(listed) == (True, "safe", 0)
    assert listed["summary"] == "AbuseIPDB: whitelisted (3 reports in 90 days)"
    assert _verdict(unknown) == (False, "info", 0)
    assert unknown["summary"] == "AbuseIPDB: no reports in 90 days"


def test_the_window_and_thresholds_are_configurable(runtime: Runtime) -> None:
    api = _api()

    async def scenario(runner: ActionRunner) -> list[dict[str, Any]]:
        return [
            await lookup(runner, "abuseipdb", "ipv4", "203.0.113.40"),
            await lookup(runner, "abuseipdb", "ipv4", "203.0.113.9"),
        ]

    config = {"max_age_days": 30, "suspicious_score": 5, "malicious_score": 40}
    doubtful, faint = run_lookups(runtime, "abuseipdb", api, scenario, config=config)
    assert api.seen[0].query["maxAgeInDays"] == "30"
    assert doubtful["verdict"] == "malicious"
    assert faint["verdict"] == "suspicious"


def test_only_addresses_are_looked_up(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> None:
        for kind, value in [("domain", "evil.example"), ("sha256", "a" * 64)]:
            with pytest.raises(PermanentError, match=f"cannot look up {kind} values") as refused:
                await lookup(runner, "abuseipdb", kind, value)
            assert refused.value.code == "unsupported_type"
            assert "ipv4, ipv6" in refused.value.message

    api = _api()
    run_lookups(runtime, "abuseipdb", api, scenario)
    assert api.seen == []


def test_refusals_rate_limits_and_server_errors(runtime: Runtime) -> None:
    api = _api()

    async def scenario(runner: ActionRunner) -> None:
        limited = "Daily rate limit of 1000 requests exceeded for this endpoint."
        reset = str(int(time.time()) + 120)
        headers = {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0"}
        api.queued.append(_errors(429, limited, **headers, **{"Retry-After": "29"}))
        with pytest.raises(RateLimited, match="Daily rate limit") as told:
            await lookup(runner, "abuseipdb", "ipv4", "203.0.113.66")
        assert told.value.retry_after == 29
        api.queued.append(_errors(429, limited, **headers, **{"X-RateLimit-Reset": reset}))
        with pytest.raises(RateLimited) as until:
            await lookup(runner, "abuseipdb", "ipv4", "203.0.113.66")
        assert until.value.retry_after is not None
        assert 100 <= until.value.retry_after <= 121
        api.queued.append(_errors(500, "Internal server error"))
        with pytest.raises(TransientError, match="HTTP 500"):
            await lookup(runner, "abuseipdb", "ipv4", "203.0.113.66")
        api.queued.append(_errors(422, "The max age in days must be between 1 and 365."))
        with pytest.raises(PermanentError, match="HTTP 422: The max age") as invalid:
            await lookup(runner, "abuseipdb", "ipv4", "203.0.113.66")
        assert not invalid.value.retryable

    run_lookups(runtime, "abuseipdb", api, scenario)


def test_a_refused_key_is_an_auth_error(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> None:
        with pytest.raises(AuthError, match="HTTP 401: Authentication failed") as refused:
            await lookup(runner, "abuseipdb", "ipv4", "203.0.113.66")
        assert "check the instance's api_key" in refused.value.message

    run_lookups(runtime, "abuseipdb", _api(), scenario, key="not-the-key")


def test_the_key_goes_in_its_header_and_nowhere_else(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    assert_key_never_shown(runtime, "abuseipdb", _api(), ("ipv4", "203.0.113.66"), caplog)
