"""URLhaus against a local server that speaks the documented abuse.ch API v1.

The server wants ``Auth-Key``, takes form-encoded POSTs only (``http_post_expected``
otherwise) at ``/v1/url/`` (``url``), ``/v1/host/`` (``host``) and ``/v1/payload/``
(``md5_hash`` or ``sha256_hash``), and answers in ``query_status``: ``ok`` with the entry,
``no_results``, or ``invalid_url`` / ``invalid_host`` / ``invalid_md5_hash`` /
``invalid_sha256_hash`` for a malformed field; numbers come as strings, as URLhaus sends them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from aiohttp import web

from quell.engine.actions import ActionRunner
from quell.runtime import Runtime
from quell.sdk import AuthError, PermanentError, RateLimited, TransientError
from tests.connectors.intel_api import FakeApi, assert_key_never_shown, lookup, run_lookups

ONLINE = "http://203.0.113.66/bins/mozi.m"
OFFLINE = "https://dodgy.example/invoice.zip"
PAYLOAD = b"\x7fELF not really mozi"
MD5, SHA256 = hashlib.md5(PAYLOAD).hexdigest(), hashlib.sha256(PAYLOAD).hexdigest()  # noqa: S324
SITE = "https://urlhaus.abuse.ch"


def _url_entry(number: int, url: str, status: str, host: str) -> dict[str, Any]:
    return {
        "id": str(number),
        "urlhaus_reference": f"{SITE}/url/{number}/",
        "url": url,
        "url_status": status,
        "host": host,
        "date_added": "2024-05-01 10:00:00 UTC",
        "last_online": "2024-05-02 10:00:00 UTC" if status != "online" else None,
        "threat": "malware_download",
        "blacklists": {"spamhaus_dbl": "not listed", "surbl": "not listed"},
        "reporter": "someone",
        "larted": "true",
        "takedown_time_seconds": None,
        "tags": ["elf", "mozi"],
        "payloads": [{"firstseen": "2024-05-01", "response_md5": MD5, "response_sha256": SHA256}],
    }


URLS = [
    _url_entry(2801, ONLINE, "online", "203.0.113.66"),
    _url_entry(2802, OFFLINE, "offline", "dodgy.example"),
    *(_url_entry(2900 + n, f"https://dodgy.example/{n}", "offline", "dodgy.example")
      for n in range(30)),
]  # fmt: skip


def _host(host: str) -> dict[str, Any] | None:
    urls = [
        {k: entry[k] for k in ("id", "urlhaus_reference", "url", "url_status", "date_added",
                                "threat", "reporter", "larted", "takedown_time_seconds", "tags")}
        for entry in URLS
        if entry["host"] == host
    ]  # fmt: skip
    if not urls:
        return None
    return {
        "urlhaus_reference": f"{SITE}/host/{host}/",
        "host": host,
        "firstseen": "2024-05-01 10:00:00 UTC",
        "url_count": str(len(urls)),
        "blacklists": {"spamhaus_dbl": "abused_legit_malware", "surbl": "not listed"},
        "urls": urls,
    }


PAYLOAD_ENTRY = {
    "md5_hash": MD5,
    "sha256_hash": SHA256,
    "file_type": "elf",
    "file_size": str(len(PAYLOAD)),
    "signature": "Mozi",
    "firstseen": "2024-05-01 10:00:00",
    "lastseen": "2024-05-03 10:00:00",
    "url_count": "1",
    "urlhaus_download": f"{SITE}/api/download/{SHA256}/",
    "virustotal": None,
    "imphash": None,
    "ssdeep": "3:x:y",
    "tlsh": None,
    "urls": [{"url_id": "2801", "url": ONLINE, "url_status": "online",
              "urlhaus_reference": f"{SITE}/url/2801/", "filename": None,
              "firstseen": "2024-05-01", "lastseen": None}],
}  # fmt: skip


def _status(status: str) -> web.Response:
    return web.json_response({"query_status": status})


def _answer(entry: dict[str, Any] | None) -> web.Response:
    if entry is None:
        return _status("no_results")
    return web.json_response({"query_status": "ok", **entry})


async def _url(request: web.Request) -> web.Response:
    url = str((await request.post()).get("url", ""))
    if "://" not in url:
        return _status("invalid_url")
    return _answer(next((entry for entry in URLS if entry["url"] == url), None))


async def _host_query(request: web.Request) -> web.Response:
    host = str((await request.post()).get("host", ""))
    if not host or "/" in host:
        return _status("invalid_host")
    return _answer(_host(host))


async def _payload(request: web.Request) -> web.Response:
    form = await request.post()
    for field, length in (("md5_hash", 32), ("sha256_hash", 64)):
        if field in form:
            digest = str(form[field])
            if len(digest) != length:
                return _status(f"invalid_{field}")
            return _answer(PAYLOAD_ENTRY if digest == PAYLOAD_ENTRY[field] else None)
    return _status("invalid_payload")


async def _get(_request: web.Request) -> web.Response:
    return _status("http_post_expected")


def _api() -> FakeApi:
    return FakeApi(
        routes=[
            web.post("/v1/url/", _url),
            web.post("/v1/host/", _host_query),
            web.post("/v1/payload/", _payload),
            web.get("/v1/{endpoint}/", _get),
        ],
        key_header="Auth-Key",
        refuse=lambda: web.json_response({"query_status": "unknown_auth_key"}, status=401),
    )


def _verdict(out: dict[str, Any]) -> tuple[bool, str, int]:
    return out["found"], out["verdict"], out["score"]


def test_urls_hosts_and_payloads_through_the_runner(runtime: Runtime) -> None:
    api = _api()

    async def scenario(runner: ActionRunner) -> list[dict[str, Any]]:
        return [
            await lookup(runner, "urlhaus", kind, value)
            for kind, value in [
                ("url", ONLINE),
                ("url", OFFLINE),
                ("ipv4", "203.0.113.66"),
                ("domain", "DODGY.example"),
                ("md5", MD5),
                ("sha256", SHA256.upper()),
            ]
        ]

    online, offline, host, domain, by_md5, by_sha256 = run_lookups(
        runtime, "urlhaus", api, scenario
    )
    assert [(seen.method, seen.path, seen.form) for seen in api.seen] == [
        ("POST", "/v1/url/", {"url": ONLINE}),
        ("POST", "/v1/url/", {"url": OFFLINE}),
        ("POST", "/v1/host/", {"host": "203.0.113.66"}),
        ("POST", "/v1/host/", {"host": "dodgy.example"}),
        ("POST", "/v1/payload/", {"md5_hash": MD5}),
        ("POST", "/v1/payload/", {"sha256_hash": SHA256}),
    ]
    assert all(
        seen.headers["Content-Type"] == "application/x-www-form-urlencoded" for seen in api.seen
    )

    assert _verdict(online) == (True, "malicious", 90)
    assert online["summary"] == "URLhaus: listed (malware_download), online"
    assert online["link"] == f"{SITE}/url/2801/"
    assert online["details"]["tags"] == ["elf", "mozi"]
    assert "payloads" not in online["details"]
    assert _verdict(offline) == (True, "suspicious", 60)
    assert offline["summary"] == "URLhaus: listed (malware_download), offline"

    assert _verdict(host) == (True, "malicious", 90)
    assert host["summary"] == "URLhaus: a host of 1 malware URLs, 1 online"
    assert host["link"] == f"{SITE}/host/203.0.113.66/"
    assert _verdict(domain) == (True, "suspicious", 60)
    assert domain["summary"] == "URLhaus: a host of 31 malware URLs, 0 online"
    assert len(domain["details"]["urls"]) == 10
    assert domain["details"]["url_count"] == "31"

    for out in (by_md5, by_sha256):
        assert _verdict(out) == (True, "malicious", 90)
        assert out["summary"] == "URLhaus: a known payload (Mozi, elf), served from 1 URLs"
        assert out["link"] == f"https://urlhaus.abuse.ch/browse.php?search={SHA256}"
        assert out["details"]["urls"][0]["url"] == ONLINE
    assert by_sha256["value"] == SHA256


def test_what_urlhaus_does_not_list_is_an_answer(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> list[dict[str, Any]]:
        return [
            await lookup(runner, "urlhaus", "url", "https://clean.example/"),
            await lookup(runner, "urlhaus", "domain", "clean.example"),
            await lookup(runner, "urlhaus", "sha256", "0" * 64),
        ]

    for out in run_lookups(runtime, "urlhaus", _api(), scenario):
        assert _verdict(out) == (False, "info", 0)
        assert out["summary"] == "URLhaus: not listed"
        assert out["link"] is None


def test_types_it_cannot_look_up_are_refused(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> None:
        for kind, value in [("sha1", "a" * 40), ("ipv6", "2001:db8::1")]:
            with pytest.raises(PermanentError, match=f"cannot look up {kind} values") as refused:
                await lookup(runner, "urlhaus", kind, value)
            assert refused.value.code == "unsupported_type"

    api = _api()
    run_lookups(runtime, "urlhaus", api, scenario)
    assert api.seen == []


def test_query_statuses_refusals_and_server_errors(runtime: Runtime) -> None:
    api = _api()

    async def scenario(runner: ActionRunner) -> None:
        for status in ("invalid_url", "http_post_expected"):
            api.queued.append(_status(status))
            with pytest.raises(PermanentError, match=f"query_status '{status}'") as refused:
                await lookup(runner, "urlhaus", "url", ONLINE)
            assert refused.value.details == {"query_status": status}
            assert not refused.value.retryable
        api.queued.append(web.Response(status=429, headers={"Retry-After": "12"}))
        with pytest.raises(RateLimited) as limited:
            await lookup(runner, "urlhaus", "url", ONLINE)
        assert limited.value.retry_after == 12
        api.queued.append(web.Response(status=503, text="Service Unavailable"))
        with pytest.raises(TransientError, match="HTTP 503: Service Unavailable"):
            await lookup(runner, "urlhaus", "url", ONLINE)
        api.queued.append(web.Response(status=403, text="Forbidden"))
        with pytest.raises(AuthError, match="HTTP 403"):
            await lookup(runner, "urlhaus", "url", ONLINE)

    run_lookups(runtime, "urlhaus", api, scenario)


def test_a_refused_key_is_an_auth_error(runtime: Runtime) -> None:
    async def scenario(runner: ActionRunner) -> None:
        with pytest.raises(AuthError, match="HTTP 401: unknown_auth_key") as refused:
            await lookup(runner, "urlhaus", "url", ONLINE)
        assert "check the instance's api_key" in refused.value.message

    run_lookups(runtime, "urlhaus", _api(), scenario, key="not-the-key")


def test_the_key_goes_in_its_header_and_nowhere_else(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    assert_key_never_shown(runtime, "urlhaus", _api(), ("url", ONLINE), caplog)
