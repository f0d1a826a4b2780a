"""``quell serve`` and ``quell demo``: run the server."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from quell.cli.state import CliState, pass_state
from quell.errors import NotFound

DEMO_TOKEN_NAME = "demo-admin"

host_option = click.option("--host", help="Address to bind (default: QUELL_API_HOST, 127.0.0.1).")
port_option = click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port to bind; 0 picks a free one (default: QUELL_API_PORT, 8470).",
)


@click.command("serve")
@host_option
@port_option
@click.option(
    "--worker/--no-worker",
    "worker",
    default=None,
    help="Also run playbooks in this process (default: QUELL_EMBEDDED_WORKER, on). "
    "Turn off in a cluster where `quell worker` processes run them.",
)
@pass_state
def serve_command(state: CliState, host: str | None, port: int | None, worker: bool | None) -> None:
    """Serve the API (and, embedded, run playbooks) until interrupted."""
    from quell.api.server import bind_socket, bound_url, serve

    settings = state.settings
    runtime = state.runtime()
    runtime.preflight()
    embedded = settings.embedded_worker if worker is None else worker
    sock = bind_socket(host or settings.api_host, settings.api_port if port is None else port)
    mode = "embedded worker" if embedded else "no worker"
    click.echo(
        f"Quell API ({runtime.db.backend.value}, {mode}) serving on {bound_url(sock)}", err=True
    )
    serve(runtime, sock, embedded_worker=embedded)


@click.command("demo")
@host_option
@port_option
@click.option("--serve/--no-serve", "start_server", default=True, help="Start the server after.")
@pass_state
def demo_command(state: CliState, host: str | None, port: int | None, start_server: bool) -> None:
    """Set up the embedded database, make an admin token and start the server."""
    from quell.api.server import bind_socket, bound_url, serve

    settings = state.settings
    runtime = state.runtime()
    runtime.preflight()
    sock = bind_socket(host or settings.api_host, settings.api_port if port is None else port)
    with contextlib.suppress(NotFound):  # first demo on this data dir
        runtime.tokens.revoke(DEMO_TOKEN_NAME)
    _, token = runtime.tokens.create(DEMO_TOKEN_NAME, "admin", created_by="quell demo")
    url = bound_url(sock)
    secret = token.reveal()
    me = sys.argv[0] if Path(sys.argv[0]).name == "quell" else "quell"
    click.echo(
        f"""
Quell demo
  data dir     {settings.data_dir}
  database     {runtime.db.display_url}
  API          {url}
  admin token  {secret}
               (shown once; the next `quell demo` revokes it and makes a new one)

Try, in another terminal:
  curl -s {url}/healthz
  curl -s {url}/api/whoami          # 401 problem+json: no token
  curl -s -H 'Authorization: Bearer {secret}' {url}/api/whoami
  curl -s -H 'Authorization: Bearer {secret}' {url}/api/openapi.json
  {me} token create --name analyst-1 --role analyst
  {me} ingest --format suricata eve.json
  {me} token list
  {me} playbook test examples/playbooks/block-malicious-source.yaml
  {me} run list
"""
    )
    if not start_server:
        sock.close()
        return
    click.echo("Press Ctrl+C to stop.", err=True)
    serve(runtime, sock)
