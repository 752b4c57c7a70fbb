"""The web server in its own thread: uvicorn with its own event loop, beside the listener.

Why a thread and not the listener's threads: a slow page or a large upload must never hold
a C-STORE; uvicorn's loop runs the async parts and a thread pool the service-layer calls,
both apart from pynetdicom's association threads. Why not a separate process: the probe
(listener bound, workers warm) is the node's own state; a site that wants the web apart
can run ``segnode web`` (the same app without a probe).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.admin.status import NodeProbe
from segnode.node.errors import NodeError
from segnode.node.web.app import create_app

log = logging.getLogger(__name__)
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class WebServerError(NodeError):
    """The web port cannot be bound (in use, no permission), named with the fix."""


class WebServer:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], probe: NodeProbe | None) -> None:
        web = settings.web
        self._socket = _bind(web.host, web.port)
        config = uvicorn.Config(
            create_app(settings, sessions, probe),
            log_config=None,  # the node's logging (JSON lines) carries uvicorn's records
            access_log=False,
            log_level="warning",  # its start-up lines would be withheld as third-party text
            ssl_certfile=str(web.tls.cert_file) if web.tls.cert_file else None,
            ssl_keyfile=str(web.tls.key_file) if web.tls.key_file else None,
            timeout_keep_alive=5,
            limit_concurrency=64,
            h11_max_incomplete_event_size=64 * 1024,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self.scheme = "https" if web.tls.enabled else "http"
        if web.host not in _LOOPBACK and not web.tls.enabled:
            log.warning("web: serving plain HTTP on a non-loopback address; set [web.tls]")

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise WebServerError("web: the server did not start (see the log)")
        log.info("web serving", extra={"port": self.port, "scheme": self.scheme})

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise WebServerError(
            f"web: cannot listen on {host}:{port}: {exc.strerror}; set [web] port (or enabled = false)"
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
