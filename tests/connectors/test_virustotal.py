"""VirusTotal against a local server that speaks the documented API v3.

The server wants ``x-apikey``, answers ``GET /api/v3/ip_addresses/{ip}``, ``/domains/{domain}``,
``/files/{hash}`` (any of a file's md5, sha1 or sha256) and ``/urls/{id}``, where it decodes
``id`` as unpadded base64url and refuses anything else (``InvalidArgumentError``), with
``{"data": {"id", "type", "links", "attributes": {"last_analysis_stats", ...}}}``, and errors
in VirusTotal's ``{"error": {"code", "message"}}`` shape (``NotFoundError`` for what it does
not know).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

import pytest
from aiohttp import web

from quell.connectors.virustotal import VirusTotal, judge, url_id
from quell.engine.actions import ActionRunner
from quell.runtime import Runtime
from quell.sdk import AuthError, PermanentError, RateLimited, TransientError
from quell.sdk.intel import INTEL_TYPES
from tests.connectors.intel_api import FakeApi, assert_key_never_shown, lookup, run_lookups

EVIL_IP = "203.0.113.66"
CLEAN_IP6 = "2001:db8::7"
EVIL_URL = "http://evil.example/dl/payload.exe?id=1&x=ÿ"
FILE = b"MZ this is not really a program"
MD5, SHA1, SHA256 = (hashlib.new(name, FILE).hexdigest() for name in ("md5", "sha1", "sha256"))
_UNPADDED = re.compile(r"^[A-Za-z0-9_-]+$")


def _stats(malicious: int, suspicious: int, harmless: int, undetected: int) -> dict[str, int]:
    return {"malicious": malicious, "suspicious": suspicious, "harmless": harmless,
            "undetected": undetected, "timeout": 0}  # fmt: skip


OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    ("ip_addresses", EVIL_IP): {
        "last_analysis_stats": _stats(12, 2, 50, 6),
        "reputation": -41,
        "country": "NL",
        "asn": 64500,
        "as_owner": "Bulletproof Hosting",
        "network": "203.0.113.0/24",
        "whois": "a long whois record " * 500,  # not kept
    },
    ("ip_addresses", CLEAN_IP6): {"last_analysis_stats": _stats(0, 0, 60, 10), "reputation": 0},
    ("domains", "dodgy.example"): {
        "last_analysis_stats": _stats(1, 1, 40, 28),
        "registrar": "Example Registrar",
        "tags": [f"tag{n}" for n in range(50)],
    },
    ("domains", "fresh.example"): {"last_analysis_stats": _stats(0, 0, 0, 0)},
    ("files", SHA256): {
        "last_analysis_stats": {**_stats(55, 0, 0, 10), "type-unsupported": 5, "failure": 0},
        "md5": MD5,
        "sha1": SHA1,
        "sha256": SHA256,
        "meaningful_name": "payload.exe",
        "type_description": "Win32 EXE",
        "size": len(FILE),
    },
    ("urls", EVIL_URL): {
        "last_analysis_stats": _stats(4, 0, 60, 26),
        "last_final_url": EVIL_URL,
        "title": "Download",
    },
}
_TYPE = {"ip_addresses": "ip_address", "domains": "domain", "files": "file", "urls": "url"}


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def _decoded(ident: str) -> str | None:
    """The URL an id names, when it is unpadded base64url (VirusTotal's documented form)."""
    if not _UNPADDED.match(ident):
        return None
    try:
        return base64.urlsafe_b64decode(ident + "=" * (-len(ident) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _find(collection: str, ident: str) -> tuple[str, dict[str, Any]] | None:
    """The object's id and attributes (files by any of their hashes, URLs by their id)."""
    if collection == "files":
        for (kind, sha256), file in OBJECTS.items():
            if kind == "files" and ident in (file["md5"], file["sha1"], sha256):
                return sha256, file
        return None
    if collection == "urls":
        url = _decoded(ident) or ""
        found = OBJECTS.get(("urls", url))
        return (hashlib.sha256(url.encode()).hexdigest(), found) if found else None
    attributes = OBJECTS.get((collection, ident))
    return (ident, attributes) if attributes is not None else None


async def _object(request: web.Request) -> web.Response:
    collection, ident = request.match_info["collection"], request.match_info["id"]
    if collection not in _TYPE:
        return _error(404, "NotFoundError", f"Resource {collection!r} not found")
    if collection == "urls" and _decoded(ident) is None:
        return _error(400, "InvalidArgumentError", f"Invalid URL identifier {ident!r}")
    found = _find(collection, ident)
    if found is None:
        return _error(404, "NotFoundError", f'Resource "{ident}" not found')
    object_id, attributes = found
    data = {
        "id": object_id,
        "type": _TYPE[collection],
        "links": {"self": f"{request.url.origin()}/api/v3/{collection}/{object_id}"},
        "attributes": attributes,
    }
    return web.json_response({"data": data})


def _api() -> FakeApi:
    return FakeApi(
        routes=[web.get("/api/v3/{collection}/{id}", _object)],
        key_header="x-apikey",
        refuse=lambda: _error(401, "WrongCredentialsError", "Wrong API key"),
    )


def test_every_type_through_the_runner(runtime: Runtime) -> None:
    api = _api()

    async def scenario(runner: ActionRunner) -> dict[str, dict[str, Any]]:
        return {
            kind: await lookup(runner, "virustotal", kind, value)
            for kind, value in [
                ("ipv4", EVIL_IP),
                ("ipv6", "2001:DB8:0::7"),
                ("domain", "Dodgy.Example."),
                ("md5", MD5.upper()),
                ("sha1", SHA1),
                ("sha256", SHA256),
                ("url", EVIL_URL),
            ]
        }

    out = run_lookups(runtime, "virustotal", api, scenario)
    assert [seen.path for seen in api.seen] == [
        f"/api/v3/ip_addresses/{EVIL_IP}",
        f"/api/v3/ip_addresses/{CLEAN_IP6}",
        "/api/v3/domains/dodgy.example",
        f"/api/v3/files/{MD5}",
        f"/api/v3/files/{SHA1}",
        f"/api/v3/files/{SHA256}",
        f"/api/v3/urls/{base64.urlsafe_b64encode(EVIL_URL.encode()).decode().rstrip('=')}",
    ]
    assert all(seen.headers["Accept"] == "application/json" for seen in api.seen)

    ip = out["ipv4"]
    assert (ip["source"], ip["type"], ip["value"], ip["found"]) == (
        "virustotal",
        "ipv4",
        EVIL_IP,
        True,
    )
    assert (ip["verdict"], ip["score"]) == ("malicious", 19)  # (12 + 2/2) of 70 engines
    assert ip["summary"] == "VirusTotal: 12 of 70 engines flag it malicious, 2 suspicious"
    assert ip["link"] == f"https://www.virustotal.com/gui/ip-address/{EVIL_IP}"
    assert ip["details"]["as_owner"] == "Bulletproof Hosting"
    assert ip["details"]["last_analysis_stats"]["malicious"] == 12
    assert "whois" not in ip["details"]
    assert ip["observed_at"].endswith(("Z", "+00:00"))

    assert (out["ipv6"]["value"], out["ipv6"]["verdict"], out["ipv6"]["score"]) == (
        CLEAN_IP6, "safe", 0,
    )  # fmt: skip
    domain = out["domain"]
    assert (domain["value"], domain["verdict"], domain["score"]) == (
        "dodgy.example",
        "suspicious",
        2,
    )
    assert len(domain["details"]["tags"]) == 20  # bounded
    for kind in ("md5", "sha1", "sha256"):
        assert (out[kind]["verdict"], out[kind]["score"]) == ("malicious", 79)  # 55 of 70
        assert out[kind]["link"] == f"https://www.virustotal.com/gui/file/{SHA256}"
    assert out["md5"]["value"] == MD5
    assert out["sha256"]["details"]["meaningful_name"] == "payload.exe"
    url = out["url"]
    assert (url["verdict"], url["score"], url["value"]) == ("malicious", 4, EVIL_URL)
    assert url["link"].endswith(f"/gui/url/{hashlib.sha256(EVIL_URL.encode()).hexdigest()}")


def test_unknown_values_are_answers_not_errors(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> list[dict[str, Any]]:
        return [
            await lookup(runner, "virustotal", "ipv4", "198.51.100.1"),
            await lookup(runner, "virustotal", "url", "https://nowhere.example/"),
            await lookup(runner, "virustotal", "domain", "fresh.example"),
        ]

    unknown_ip, unknown_url, unanalysed = run_lookups(runtime, "virustotal", _api(), scenario)
    for out in (unknown_ip, unknown_url):
        assert (out["found"], out["verdict"], out["score"]) == (False, "info", 0)
        assert out["summary"] == "VirusTotal: never seen"
    assert (unanalysed["found"], unanalysed["verdict"], unanalysed["score"]) == (True, "info", 0)
    assert unanalysed["summary"] == "VirusTotal: known, but no engine has analysed it yet"


def test_the_malicious_threshold_is_configurable(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> dict[str, Any]:
        return await lookup(runner, "virustotal", "ipv4", EVIL_IP)

    out = run_lookups(runtime, "virustotal", _api(), scenario, config={"malicious_engines": 13})
    assert out["verdict"] == "suspicious"


def test_the_verdict_rule() -> None:
    assert judge({"malicious": 3, "undetected": 1}, 3) == ("malicious", 75)
    assert judge({"malicious": 2, "harmless": 98}, 3) == ("suspicious", 2)
    assert judge({"suspicious": 1, "harmless": 99}, 3) == ("suspicious", 0)
    assert judge({"harmless": 1, "undetected": 99}, 3) == ("safe", 0)
    assert judge({"undetected": 70, "timeout": 2}, 3) == ("info", 0)
    assert judge({}, 3) == ("info", 0)
    assert judge({"malicious": 10}, 3) == ("malicious", 100)
    assert url_id("http://a.example/") == "aHR0cDovL2EuZXhhbXBsZS8"


def test_every_type_is_supported_and_others_refused(runtime: Runtime) -> None:
    assert VirusTotal.lookup_types == INTEL_TYPES

    async def scenario(runner: ActionRunner) -> None:
        with pytest.raises(PermanentError, match="input type") as wrong:
            await lookup(runner, "virustotal", "email", "a@b.example")
        assert wrong.value.code == "invalid_input"
        with pytest.raises(PermanentError, match="not an sha256 hash") as short:
            await lookup(runner, "virustotal", "sha256", SHA1)
        assert short.value.code == "invalid_input"

    api = _api()
    run_lookups(runtime, "virustotal", api, scenario)
    assert api.seen == []


def test_refusals_quotas_and_server_errors(runtime: Runtime) -> None:
    api = _api()

    async def scenario(runner: ActionRunner) -> None:
        api.queued.append(_error(403, "ForbiddenError", "You are not allowed to do this"))
        with pytest.raises(AuthError, match="ForbiddenError"):
            await lookup(runner, "virustotal", "ipv4", EVIL_IP)
        api.queued.append(_error(429, "QuotaExceededError", "Quota exceeded"))
        with pytest.raises(RateLimited, match="QuotaExceededError") as quota:
            await lookup(runner, "virustotal", "ipv4", EVIL_IP)
        assert quota.value.retry_after == 60  # no Retry-After: the quota's minute
        api.queued.append(
            _error(429, "QuotaExceededError", "Quota exceeded", **{"Retry-After": "17"})
        )
        with pytest.raises(RateLimited) as told:
            await lookup(runner, "virustotal", "ipv4", EVIL_IP)
        assert told.value.retry_after == 17
        api.queued.append(_error(503, "TransientError", "Try again later"))
        with pytest.raises(TransientError, match="HTTP 503") as busy:
            await lookup(runner, "virustotal", "ipv4", EVIL_IP)
        assert busy.value.retryable
        api.queued.append(web.Response(status=502, text="<html>bad gateway</html>"))
        with pytest.raises(TransientError, match="HTTP 502"):
            await lookup(runner, "virustotal", "ipv4", EVIL_IP)
        api.queued.append(web.json_response({"data": "nothing"}))
        with pytest.raises(PermanentError, match="no data object"):
            await lookup(runner, "virustotal", "ipv4", EVIL_IP)

    run_lookups(runtime, "virustotal", api, scenario)


def test_a_refused_key_is_an_auth_error(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> None:
        with pytest.raises(AuthError, match="WrongCredentialsError: Wrong API key") as refused:
            await lookup(runner, "virustotal", "ipv4", EVIL_IP)
        assert not refused.value.retryable
        assert "check the instance's api_key" in refused.value.message

    run_lookups(runtime, "virustotal", _api(), scenario, key="not-the-key")


def test_the_key_goes_in_its_header_and_nowhere_else(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    api = _api()
    # a vendor that echoes the key it refused: the connector scrubs it from the error
    echo = _error(401, "WrongCredentialsError", f"Wrong API key {api.key}")
    assert_key_never_shown(runtime, "virustotal", api, ("ipv4", EVIL_IP), caplog, refusal=echo)
