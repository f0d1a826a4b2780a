"""Serving the API with uvicorn on a socket Quell binds itself.

Binding first means a taken port is a clear error before anything else happens, and that the
real port is known when ``--port 0`` asks the system for a free one.
"""

from __future__ import annotations

import errno
import socket

import uvicorn

from quell.errors import ConfigurationError
from quell.runtime import Runtime


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; ConfigurationError if that is impossible."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"cannot resolve host {host!r}: {exc.strerror}", host=host
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"port {port} on {host} is already in use; choose another with --port",
                host=host,
                port=port,
            ) from None
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror}", host=host, port=port
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bound_url(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def serve(runtime: Runtime, sock: socket.socket, *, embedded_worker: bool | None = None) -> None:
    """Serve the API on ``sock`` until SIGINT or SIGTERM.

    With ``embedded_worker`` (default: the ``embedded_worker`` setting) the same process runs
    playbooks too; on shutdown it hands the runs it still holds back to the database.
    """
    from quell.aio import loop_name, tune_gc
    from quell.api.app import create_app  # the whole API, only when serving

    if embedded_worker is None:
        embedded_worker = runtime.settings.embedded_worker
    host, port = sock.getsockname()[:2]
    app = create_app(
        runtime,
        run_sources=True,
        ingest_workers=runtime.settings.ingest_workers,
        embedded_worker=embedded_worker,
    )
    config = uvicorn.Config(
        app,
        loop=loop_name(runtime.settings.event_loop),
        host=host,
        port=port,
        log_config=None,  # Quell's logging is already set up
        access_log=False,  # the request middleware logs each request once, structured
        server_header=False,
        lifespan="on",
    )
    tune_gc()  # after the app (and its engine's registry) is built: see quell.aio
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl+C, then re-raises the signal it captured;
        # by then everything is closed, so this is a normal end.
        return
