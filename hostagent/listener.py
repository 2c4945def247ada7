"""The supervisor's observe port: ``observe`` answered without starting a Python.

``fleet-agent serve`` already has the agent built (imports, config, stores);
answering an observe request from it costs milliseconds, where ``fleet-agent
observe`` on an exec channel starts a new interpreter each time (0.1-0.5 s of
CPU per host). The reconciler reaches this port through an SSH ``direct-tcpip``
channel over its existing connection and falls back to the exec verb when the
port does not answer (docs/protocol.md, "The observe port").

The wire is the exec verb's: one JSON request line in, one JSON answer line
out (or one ``{"error": ...}`` line), then the connection closes. Only
``observe`` is served here: ``apply`` stays on exec, where its process, its
stdin and its exit status belong to one request.

Security: the port binds loopback only (``127.0.0.1``), so it is reachable
from the host itself, which includes through sshd by a user who has logged
in. The answer is the same as ``fleet-agent observe``'s and holds no secrets.

Each connection is served in its own daemon thread; the supervisor loop never
waits on it. A port already in use is logged and skipped: the supervisor keeps
supervising and observe goes over exec.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable

from hostagent import config, wire
from hostagent.agent import Agent

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = config.OBSERVE_PORT
MAX_REQUEST = 1 << 16  # an observe request is ~60 bytes
IO_TIMEOUT_S = 30.0
MAX_CLIENTS = 16


class ObserveListener:
    """Accepts connections on ``address:port`` and answers one observe request on each.

    ``port=0`` picks a free port (tests); :attr:`port` tells which.
    """

    def __init__(
        self,
        agent: Agent | Callable[[], Agent],
        *,
        address: str = DEFAULT_ADDRESS,
        port: int = DEFAULT_PORT,
    ) -> None:
        self._make_agent: Callable[[], Agent] = (
            (lambda: agent) if isinstance(agent, Agent) else agent
        )
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((address, port))
            self._sock.listen(MAX_CLIENTS)
        except OSError:
            self._sock.close()
            raise
        self.address = address
        self.port: int = self._sock.getsockname()[1]
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"observe-listener:{self.port}", daemon=True
        )

    def start(self) -> ObserveListener:
        self._thread.start()
        log.info(json.dumps({"event": "observe_listening", "address": self.address,
                             "port": self.port}))  # fmt: skip
        return self

    def close(self) -> None:
        self._stopped.set()
        # shutdown() wakes the accept() blocked in the other thread; close() alone may not.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> ObserveListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                log.warning("observe listener: accept failed", exc_info=True)
                continue
            if not self._slots.acquire(blocking=False):
                conn.close()  # too many at once: the client falls back to exec
                continue
            threading.Thread(
                target=self._serve_one, args=(conn,), name="observe-conn", daemon=True
            ).start()

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(IO_TIMEOUT_S)
                with conn.makefile("rb") as reader:
                    line = reader.readline(MAX_REQUEST + 1)
                answer = wire.observe_line(self._make_agent, line)
                conn.sendall(answer.encode())
        except OSError as exc:
            log.info(json.dumps({"event": "observe_connection_failed", "error": str(exc)}))
        except Exception:  # a bug in one answer must not end the listener
            log.exception("observe listener: request failed")
        finally:
            self._slots.release()


def start(agent: Agent, *, address: str, port: int) -> ObserveListener | None:
    """The listener, started; ``None`` (logged) when the port cannot be bound."""
    try:
        return ObserveListener(agent, address=address, port=port).start()
    except OSError as exc:
        log.warning(json.dumps({"event": "observe_listen_failed", "address": address,
                                "port": port, "error": str(exc)}))  # fmt: skip
        return None
