"""A tiny HTTP endpoint that lets a Git server wake ``reconcile watch`` at once. I/O.

Polling every minute is what makes Argo CD and Flux slow to deploy; a push
webhook (GitHub, GitLab, Gitea, or a ``curl`` in a post-receive hook) turns
that into "now". Any ``POST`` wakes the watcher, which then fetches: the
request's body is never trusted or parsed, so a forged call can only cause an
extra fetch of the configured repository. It is meant to listen on loopback
behind the Git server or a reverse proxy.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def parse_address(value: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[::1]:PORT`` for IPv6) into a (host, port) pair."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class _Handler(http.server.BaseHTTPRequestHandler):
    on_hit: Callable[[], None]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))  # drain; never interpreted
        self.on_hit()
        self._reply(202, b"fetch scheduled\n")

    def do_GET(self) -> None:
        self._reply(200 if self.path == "/healthz" else 405, b"ok\n")

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("webhook: " + format, *args)


class _Server6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class Webhook:
    """Serves in a daemon thread until :meth:`close`."""

    def __init__(self, address: str, on_hit: Callable[[], None]) -> None:
        host, port = parse_address(address)
        handler = type("Handler", (_Handler,), {"on_hit": staticmethod(on_hit)})
        server_cls = _Server6 if ":" in host else http.server.ThreadingHTTPServer
        self.server = server_cls((host, port), handler)
        self.address = f"{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
