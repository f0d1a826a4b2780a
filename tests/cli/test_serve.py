"""``quell serve`` and ``quell demo`` as a user runs them."""

from __future__ import annotations

import time

import httpx
import pytest

from quell.api.server import bind_socket
from tests.cli.processes import QuellProcess, run_quell

URL_LINE = r"serving on (http://127\.0\.0\.1:\d+)"


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    # A lab's setting: whoever adds a playbook may run it (review is tested elsewhere).
    return {"QUELL_DATABASE_URL": database_url, "QUELL_PLAYBOOK_REVIEW": "optional"}


def test_serve_answers_health_and_guards_openapi(env: dict[str, str]) -> None:
    token = run_quell("token", "create", "--name", "ops", "--role", "admin", env=env).stdout.strip()
    with QuellProcess("serve", "--port", "0", env=env) as server:
        url = server.wait_for(URL_LINE).group(1)
        assert httpx.get(f"{url}/healthz").status_code == 200
        # A query string can carry a secret (an OIDC callback's code): the server logs each
        # request by its path, and uvicorn's own access line (the whole URL) stays off.
        assert httpx.get(f"{url}/api/whoami?code=canary-code-7c1e").status_code == 401
        anonymous = httpx.get(f"{url}/api/openapi.json")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        authorized = httpx.get(
            f"{url}/api/openapi.json", headers={"Authorization": f"Bearer {token}"}
        )
        assert authorized.status_code == 200
        assert authorized.json()["openapi"].startswith("3.")
    assert server.process.returncode == 0
    assert [line for line in server.lines if "path=/api/whoami" in line], server.lines  # logged
    assert not [line for line in server.lines if "canary-code-7c1e" in line], server.lines


def test_serve_on_a_taken_port_is_a_one_line_error(env: dict[str, str]) -> None:
    taken = bind_socket("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        result = run_quell("serve", "--port", str(port), env=env)
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is already in use; choose another with --port"
    )


def test_demo_sets_up_serves_and_replaces_its_token(env: dict[str, str]) -> None:
    with QuellProcess("demo", "--port", "0", env=env) as demo:
        url = demo.wait_for(r"API\s+(http://\S+)").group(1)
        token = demo.wait_for(r"admin token\s+(qk_\S+)").group(1)
        demo.wait_for("Press Ctrl")
        me = httpx.get(f"{url}/api/whoami", headers={"Authorization": f"Bearer {token}"})
        assert me.json() == {**me.json(), "name": "demo-admin", "role": "admin"}
    again = run_quell("demo", "--no-serve", "--port", "0", env=env)
    assert again.returncode == 0
    tokens = run_quell("token", "list", "--all", "--json", env=env).stdout
    assert tokens.count('"demo-admin"') == 2
    assert tokens.count('"revoked"') == 1


PLAYBOOK = """\
id: hello
name: Hello
inputs: {who: {type: string, required: true}}
steps:
  - {id: greet, action: core.echo, with: {value: "hello {{ who }}"}}
"""


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _start_run(client: httpx.Client) -> str:
    added = client.post("/api/playbooks", content=PLAYBOOK.encode())
    assert added.status_code == 201, added.text
    started = client.post("/api/playbooks/hello/runs", json={"inputs": {"who": "soc"}})
    assert started.status_code == 202, started.text
    run_id: str = started.json()["id"]
    return run_id


def test_serve_runs_playbooks_in_its_own_process(env: dict[str, str]) -> None:
    token = run_quell("token", "create", "--name", "ops", "--role", "admin", env=env).stdout.strip()
    with QuellProcess("serve", "--port", "0", env=env) as server:
        url = server.wait_for(URL_LINE).group(1)
        assert "embedded worker" in server.lines[-1]
        with _client(url, token) as client:
            run_id = _start_run(client)
            for _ in range(300):
                run = client.get(f"/api/runs/{run_id}").json()
                if run["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.05)
        assert run["status"] == "succeeded", run
        assert run["steps"][0]["output"] == {"value": "hello soc"}
    assert server.process.returncode == 0
    assert any("embedded_worker_stopped" in line for line in server.lines)


@pytest.mark.parametrize("how", ["--no-worker", "QUELL_EMBEDDED_WORKER=0"])
def test_serve_without_a_worker_leaves_runs_to_the_workers(env: dict[str, str], how: str) -> None:
    token = run_quell("token", "create", "--name", "ops", "--role", "admin", env=env).stdout.strip()
    args = ["serve", "--port", "0"]
    if how.startswith("--"):
        args.append(how)
    else:
        env = {**env, "QUELL_EMBEDDED_WORKER": "0"}
    with QuellProcess(*args, env=env) as server:
        url = server.wait_for(URL_LINE).group(1)
        assert "no worker" in server.lines[-1]
        with _client(url, token) as client:
            run_id = _start_run(client)
            time.sleep(0.5)
            assert client.get(f"/api/runs/{run_id}").json()["status"] == "ready"
    assert server.process.returncode == 0
