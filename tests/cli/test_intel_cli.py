"""``quell intel`` on both backends: imports end with the counts as JSON, lookups give the
verdict and its reasons, the allow-list settles values, export gives STIX back."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Invoke
from tests.fixtures.requirements import corpus_path

COUNT_KEYS = {
    "source",
    "added",
    "updated",
    "unchanged",
    "expired",
    "unsupported",
    "sightings",
    "withdrawn",
}


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"QUELL_DATABASE_URL": database_url}


def _last_json(output: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return found


@pytest.mark.requires("corpus")
def test_every_format_imports_with_counts_and_again_changes_nothing(
    invoke: Invoke, env: dict[str, str]
) -> None:
    stix = str(corpus_path() / "stix" / "indicators-for-C2-with-COA.json")
    first = invoke("intel", "import", stix, env=env)
    assert first.exit_code == 0, first.stderr
    counts = _last_json(first.stdout)
    assert set(counts) == COUNT_KEYS
    assert (counts["added"], counts["unsupported"]) == (2, 0)
    again = _last_json(invoke("intel", "import", stix, env=env).stdout)
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 2)

    misp = str(corpus_path() / "misp" / "malware_exist.json")
    shown = invoke("intel", "import", misp, "--format", "misp", "--source", "misp", env=env)
    assert _last_json(shown.stdout)["added"] == 3
    assert "unsupported:" in shown.stderr  # the filename and size attributes, each named

    csv = str(corpus_path() / "misp" / "valid_fieldnames.csv")
    assert _last_json(invoke("intel", "import", csv, env=env).stdout)["added"] == 9

    email = str(corpus_path() / "stix" / "malicious-email-indicator-with-attachment.json")
    unsupported = invoke("intel", "import", email, env=env)
    assert _last_json(unsupported.stdout)["unsupported"] == 2
    assert "MATCHES" in unsupported.stderr


@pytest.mark.requires("corpus")
def test_a_csv_with_unknown_columns_is_refused_with_the_remedy(
    invoke: Invoke, env: dict[str, str]
) -> None:
    bad = str(corpus_path() / "misp" / "invalid_fieldnames.csv")
    refused = invoke("intel", "import", bad, env=env)
    assert refused.exit_code == 1
    assert "SHA1" in refused.stderr
    assert "fileName" in refused.stderr
    assert "e.g. SHA1=sha1,fileName=skip,size=skip" in refused.stderr
    mapped = invoke("intel", "import", bad, "--map", "SHA1=sha1,fileName=skip,size=skip", env=env)
    assert mapped.exit_code == 0, mapped.stderr
    assert _last_json(mapped.stdout)["added"] == 10


def test_lookup_allow_list_and_export(invoke: Invoke, env: dict[str, str], tmp_path: Path) -> None:
    feed = tmp_path / "feodo.csv"
    feed.write_text(
        "# Feodo Tracker botnet C2 list\n"
        "# first_seen_utc,dst_ip,dst_port,c2_status,last_online,malware\n"
        '"2026-11-01 10:00:00","203.0.113.5","443","online","2026-11-27","Emotet"\n'
        '"2026-11-02 11:00:00","198.51.100.7","8080","offline","2026-11-20","QakBot"\n'
    )
    imported = invoke(
        "intel", "import", str(feed), "--source", "feodo", "--header", "comment",
        "--map", "first_seen_utc=first_seen,dst_ip=ip-dst,*=skip", "--confidence", "85",
        env=env,
    )  # fmt: skip
    assert imported.exit_code == 0, imported.stderr
    assert _last_json(imported.stdout)["added"] == 2

    looked = invoke("intel", "lookup", "203.0.113.5", "--local", "--json", env=env)
    verdict = json.loads(looked.stdout)
    assert (verdict["type"], verdict["verdict"], verdict["score"]) == ("ipv4", "malicious", 85)
    assert verdict["reasons"][0]["source"] == "feodo"
    assert invoke("intel", "lookup", "192.0.2.1", "--local", env=env).stdout.startswith(
        "ipv4 192.0.2.1: info"
    )

    added = invoke(
        "intel", "allow", "add", "ipv4", "203.0.113.0/24", "--reason", "lab range", env=env
    )
    assert added.exit_code == 0, added.stderr
    safe = json.loads(invoke("intel", "lookup", "203.0.113.5", "--json", env=env).stdout)
    assert safe["verdict"] == "safe"
    assert safe["reasons"][0]["says"] == "allow-listed: lab range"

    out = tmp_path / "bundle.json"
    assert invoke("intel", "export", "--source", "feodo", "--out", str(out), env=env).exit_code == 0
    bundle = json.loads(out.read_text())
    patterns = sorted(o["pattern"] for o in bundle["objects"] if o["type"] == "indicator")
    assert patterns == ["[ipv4-addr:value = '198.51.100.7']", "[ipv4-addr:value = '203.0.113.5']"]
    listed = invoke("intel", "list", "--source", "feodo", "--json", env=env)
    assert sorted(r["value"] for r in json.loads(listed.stdout)) == ["198.51.100.7", "203.0.113.5"]


@pytest.fixture
def web_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A folder served over HTTP on loopback: (base URL, folder)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Nothing on stderr."""


def test_import_from_a_url_goes_through_the_outbound_policy(
    invoke: Invoke, env: dict[str, str], web_folder: tuple[str, Path]
) -> None:
    base, folder = web_folder
    (folder / "drop.txt").write_text(
        "; Spamhaus DROP style\n192.0.2.0/24 ; SBL1\n198.51.100.0/25\n"
    )
    url = f"{base}/drop.txt"
    blocked = invoke("intel", "import", url, env=env)
    assert blocked.exit_code == 1
    assert "127.0.0.1" in blocked.stderr  # loopback is private: not allowed by default
    allowed = invoke("intel", "import", url, env={**env, "QUELL_OUTBOUND_ALLOW": "127.0.0.1"})
    assert allowed.exit_code == 0, allowed.stderr
    counts = _last_json(allowed.stdout)
    assert (counts["source"], counts["added"]) == ("drop.txt", 2)
    missing = invoke(
        "intel", "import", f"{base}/nope.csv", env={**env, "QUELL_OUTBOUND_ALLOW": "127.0.0.1"}
    )
    assert missing.exit_code == 1
    assert "HTTP 404" in missing.stderr


def test_an_input_over_the_limit_is_refused_before_it_is_read(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    big = tmp_path / "huge.csv"
    with big.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)  # 100 MB, sparse: nothing is written
    refused = invoke("intel", "import", str(big), env=env)
    assert refused.exit_code == 1
    assert "huge.csv is 104,857,600 bytes; intel imports stop at 67,108,864" in refused.stderr
    stats = json.loads(invoke("intel", "stats", "--json", env=env).stdout)
    assert stats["total"] == 0
