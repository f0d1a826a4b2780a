"""A real TAXII 2.1 server for tests: medallion (the OASIS reference server) in a child process.

The server runs medallion's own Flask application, with its memory backend, under werkzeug's
threaded server on a free loopback port. Its configuration (users with passwords, one API
root, a pool of collections that can be read and written, and one that cannot be read) is
written into a temporary directory before the start. A small WSGI wrapper appends every
request (method, path, query, user, status) to a JSON-lines log, so a test can see what a
client asked for: :meth:`TaxiiServer.requests`.

Collections cannot be created over TAXII, so the server is started once per session with a
pool of empty ones, and :meth:`TaxiiServer.new_collection` hands each test one that no other
test has used. Tests put objects in with :meth:`TaxiiServer.add_objects`, which POSTs TAXII
envelopes in batches and waits for each batch's status to be complete: every batch gets its
own ``date_added``.

Use it from a test module (the fixtures are registered by tests/intel/conftest.py)::

    @pytest.mark.requires("medallion")
    def test_something(taxii_server: TaxiiServer) -> None: ...
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tests.fixtures.requirements import requirement

MEDIA_TYPE = "application/taxii+json;version=2.1"
API_ROOT = "api1"
POOL_SIZE = 64
MAX_PAGE_SIZE = 100  # medallion's cap on ?limit=
STARTUP_SECONDS = 20.0

# Runs medallion's application as its ``medallion`` command does (users, taxii and backend
# from the configuration file, then its blueprints), under werkzeug's threaded server on a
# port the OS picks, with every request appended to a JSON-lines log.
_LAUNCHER = r"""
import json, logging, sys, threading
from werkzeug.serving import make_server
from medallion import application_instance, register_blueprints, set_config

config_path, log_path = sys.argv[1], sys.argv[2]
with open(config_path, encoding="utf-8") as handle:
    configuration = json.load(handle)
app = application_instance
for part in ("users", "taxii", "backend"):
    set_config(app, part, configuration)
register_blueprints(app)
logging.getLogger("werkzeug").setLevel(logging.WARNING)

lock = threading.Lock()
log = open(log_path, "a", encoding="utf-8")
inner = app.wsgi_app

def logged(environ, start_response):
    seen = {}
    def start(status, headers, exc_info=None):
        seen["status"] = int(status.split()[0])
        return start_response(status, headers, exc_info)
    try:
        return inner(environ, start)
    finally:
        line = json.dumps({
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""),
            "authorization": (environ.get("HTTP_AUTHORIZATION") or "").split(" ")[0],
            "status": seen.get("status"),
        })
        with lock:
            log.write(line + "\n")
            log.flush()

app.wsgi_app = logged
server = make_server("127.0.0.1", 0, app, threaded=True)
base = f"http://127.0.0.1:{server.server_port}"
discovery = app.medallion_backend.data["/discovery"]
discovery["default"] = f"{base}/api1/"
discovery["api_roots"] = [f"{base}/api1/"]
print(f"READY {server.server_port}", flush=True)
server.serve_forever()
"""


@requirement("medallion")
def _medallion() -> str | None:
    for module in ("medallion", "flask", "flask_httpauth"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[dev]')"
    return None


@dataclass(frozen=True)
class LoggedRequest:
    """One request the server answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str  # the scheme only (Basic, Bearer) or ""
    status: int | None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class TaxiiServer:
    """A running medallion: its base URL, users, collections and request log."""

    url: str
    process: subprocess.Popen[bytes]
    root: Path
    username: str
    password: str
    collections: list[str]
    unreadable: str
    _next: int = field(default=0, repr=False)

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/taxii2/"

    @property
    def api_root_url(self) -> str:
        return f"{self.url}/{API_ROOT}/"

    def new_collection(self) -> str:
        """The id of a collection no test has used yet."""
        if self._next >= len(self.collections):
            raise RuntimeError(f"the TAXII test server's {POOL_SIZE} collections are used up")
        found = self.collections[self._next]
        self._next += 1
        return found

    def client(self) -> httpx.Client:
        return httpx.Client(
            auth=(self.username, self.password),
            headers={"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE},
            timeout=10,
        )

    def add_objects(
        self, collection: str, objects: Sequence[dict[str, Any]], *, batch: int = 100
    ) -> None:
        """POST ``objects`` in envelopes of ``batch``, each waited for until complete, so
        each batch has its own date_added."""
        url = f"{self.api_root_url}collections/{collection}/objects/"
        with self.client() as client:
            for start in range(0, len(objects), batch):
                envelope = {"objects": list(objects[start : start + batch])}
                answer = client.post(url, content=json.dumps(envelope))
                assert answer.status_code == 202, answer.text
                status = answer.json()
                for _ in range(200):
                    if status["status"] == "complete":
                        break
                    time.sleep(0.02)
                    status = client.get(f"{self.api_root_url}status/{status['id']}/").json()
                assert status["status"] == "complete", status
                assert status["failure_count"] == 0, status
                time.sleep(0.002)  # date_added has microseconds: keep batches apart

    def requests(self) -> list[LoggedRequest]:
        """Every request answered so far, oldest first."""
        found: list[LoggedRequest] = []
        path = self.root / "requests.jsonl"
        if not path.exists():
            return found
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            found.append(
                LoggedRequest(
                    item["method"],
                    item["path"],
                    parse_qs(item["query"]),
                    item["authorization"],
                    item["status"],
                )
            )
        return found

    def object_requests(self, collection: str) -> list[LoggedRequest]:
        """The GETs of ``collection``'s objects, oldest first."""
        suffix = f"/collections/{collection}/objects/"
        return [r for r in self.requests() if r.method == "GET" and r.path.endswith(suffix)]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _collection(collection_id: str, title: str, *, can_read: bool = True) -> dict[str, Any]:
    return {
        "id": collection_id,
        "title": title,
        "description": "a collection for one test",
        "can_read": can_read,
        "can_write": True,
        "media_types": ["application/stix+json;version=2.1"],
        "objects": [],
        "manifest": [],
    }


def _configuration(
    username: str, password: str, pool: list[str], unreadable: str
) -> dict[str, Any]:
    collections = [_collection(c, f"pool {i}") for i, c in enumerate(pool)]
    collections.append(_collection(unreadable, "write only", can_read=False))
    data = {
        "/discovery": {
            "title": "Quell test TAXII server",
            "description": "medallion with its memory backend",
            "contact": "tests@quell.invalid",
            "default": "filled in by the launcher",
            "api_roots": [],
        },
        API_ROOT: {
            "information": {
                "title": "Quell test API root",
                "description": "collections for the tests",
                "versions": [MEDIA_TYPE],
                "max_content_length": 10 * 1024 * 1024,
            },
            "status": [],
            "collections": collections,
        },
    }
    return {
        "backend": {
            "module_class": "MemoryBackend",
            "module": "medallion.backends.memory_backend",
            "data": data,
            "session_timeout": 600,  # `next` tokens live this long (seconds)
            "check_interval": 60,
        },
        "users": {username: password, "reader": secrets.token_urlsafe(12)},
        "taxii": {"max_page_size": MAX_PAGE_SIZE},
    }


def start_taxii_server(root: Path) -> TaxiiServer:
    """Write the configuration under ``root`` and start medallion; returns once it answers."""
    root.mkdir(parents=True, exist_ok=True)
    username, password = "quell", secrets.token_urlsafe(16)
    pool = [str(uuid.uuid4()) for _ in range(POOL_SIZE)]
    unreadable = str(uuid.uuid4())
    configuration = _configuration(username, password, pool, unreadable)
    data_file = root / "data.json"
    data_file.write_text(json.dumps(configuration["backend"].pop("data")), encoding="utf-8")
    configuration["backend"]["filename"] = str(data_file)
    config_file = root / "config.json"
    config_file.write_text(json.dumps(configuration), encoding="utf-8")
    stderr = (root / "medallion.stderr").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(config_file), str(root / "requests.jsonl")],
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=root,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    stderr.close()
    try:
        port = _wait_ready(process, root)
        server = TaxiiServer(
            f"http://127.0.0.1:{port}", process, root, username, password, pool, unreadable
        )
        _wait_answering(server)
    except BaseException:
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        raise
    return server


def _wait_ready(process: subprocess.Popen[bytes], root: Path) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline().decode().strip()
            if line.startswith("READY "):
                return int(line.split()[1])
        if process.poll() is not None:
            break
    log = (root / "medallion.stderr").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"medallion did not start (exit {process.poll()}):\n{log}")


def _wait_answering(server: TaxiiServer) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    with server.client() as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(server.discovery_url).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("medallion does not answer GET /taxii2/")
            time.sleep(0.05)


# -- STIX content for the tests ----------------------------------------------------------------

_NAMESPACE = uuid.UUID("6f2f0e58-3c1a-4d1e-9a55-1b8a0f3d2c7e")


def stix_time(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def indicator(
    value: str,
    kind: str = "domain-name",
    *,
    revision: int = 0,
    confidence: int = 80,
    pattern: str | None = None,
) -> dict[str, Any]:
    """A STIX 2.1 indicator for one value (``kind`` its cyber-observable type); a higher
    ``revision`` is a newer version of the same indicator."""
    created = datetime(2025, 6, 1, tzinfo=UTC)
    modified = created.replace(minute=revision)
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid5(_NAMESPACE, f'{kind}:{value}')}",
        "created": stix_time(created),
        "modified": stix_time(modified),
        "name": f"bad {kind} {value}",
        "indicator_types": ["malicious-activity"],
        "pattern": pattern or f"[{kind}:value = '{value}']",
        "pattern_type": "stix",
        "valid_from": stix_time(created),
        "confidence": confidence,
    }


def domains(start: int, count: int, *, zone: str = "bad.example") -> list[dict[str, Any]]:
    """``count`` indicators for ``n{start}.{zone}`` onwards."""
    return [indicator(f"n{i}.{zone}") for i in range(start, start + count)]


@pytest.fixture(scope="session")
def taxii_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaxiiServer]:
    """medallion, once per session (each test takes its own collection)."""
    reason = _medallion()
    if reason is not None:
        pytest.skip(f"needs medallion: {reason}")
    server = start_taxii_server(tmp_path_factory.mktemp("medallion"))
    yield server
    server.stop()


@pytest.fixture
def taxii_collection(taxii_server: TaxiiServer) -> str:
    """An empty collection of the server, this test's own."""
    return taxii_server.new_collection()
