"""The supervisor's request channel: ``apply`` (and ``observe``) without a new interpreter.

Why: every ``fleet-agent apply`` on an exec channel paid for a fresh Python
and the agent's imports (0.3-0.5 s per host, much more on a loaded machine)
before it touched anything. ``fleet-agent serve`` has all of it loaded. The
SSH side now runs the thin :mod:`hostagent.relay`, which forwards the request
here; the answer is computed exactly as ``fleet-agent apply`` computes it
(:func:`hostagent.wire.serve_request` on a freshly built agent), so locking
(the inventory's and the edge's flocks), the intent journal and idempotence
are the same code with the same semantics.

How: when ``serve`` starts, right after its agent is built and *before* it
starts any thread, it forks one small process, the *forker*, that owns the
unix socket ``<data dir>/agent.sock`` (mode 0600). The forker is
single-threaded, so forking it again is safe: each accepted connection is
handed to a grandchild (double fork, own session) that inherits every loaded
module, builds its agent, serves the one request and exits. That grandchild
belongs to nobody: it is not a child of ``serve``, so an apply in flight
runs to its end when ``serve`` is restarted or upgraded, like a ``fleet-agent
apply`` process always did. If the client goes away meanwhile (SSH dropped),
the apply still runs to its end and journals its outcome; the answer is
dropped.

Security: the socket is created 0600 under the data directory (root's) and
renamed into place; the forker serves only peers of its own uid
(``SO_PEERCRED``); the relay checks the socket's owner and mode and the
listener's uid before sending anything (:mod:`hostagent.relay`).

Lifetime: the forker exits when ``serve`` closes it (SIGTERM), when its parent
is gone, or when its socket file was replaced or removed (a newer ``serve``
took over); it then removes the socket if it is still its own. While no forker
listens, the relay falls back to ``fleet-agent apply``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from hostagent import relay, wire
from hostagent.agent import Agent

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the forker checks its parent and its socket file
IO_TIMEOUT_S = 60.0  # reading the request; each write of the answer
MAX_HEADER = 1 << 10


class Channel:
    """The forker process of one ``serve``, seen from ``serve``: its pid and socket."""

    def __init__(self, pid: int, path: Path, inode: int) -> None:
        self.pid = pid
        self.path = path
        self.inode = inode

    def close(self) -> None:
        """End the forker (requests in flight are separate processes and go on)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        if _ours(self.path, self.inode):  # a forker that could not clean up (killed)
            self.path.unlink(missing_ok=True)


def bind(path: Path) -> tuple[socket.socket, int]:
    """Listen on ``path`` (0600), replacing whatever is there atomically; the inode too."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        srv.bind(str(tmp))
    finally:
        os.umask(old)
    try:
        os.chmod(tmp, 0o600)
        srv.listen(64)
        os.rename(tmp, path)
    except OSError:
        srv.close()
        tmp.unlink(missing_ok=True)
        raise
    return srv, path.stat().st_ino


def start(
    data_dir: Path, make_agent: Callable[[], Agent], warm: Callable[[], None] = lambda: None
) -> Channel | None:
    """Fork the forker; ``None`` (logged) when the socket cannot be made.

    Call it before the process starts any thread: the forker forks again.
    ``warm`` runs once in the forker before it accepts: whatever it loads or
    compiles (templates, lazy imports) every request's process inherits.
    """
    path = data_dir / relay.SOCKET_NAME
    try:
        srv, inode = bind(path)
    except OSError as exc:
        log.warning(json.dumps({"event": "request_channel_failed", "path": str(path),
                                "error": str(exc)}))  # fmt: skip
        return None
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    # SIGTERM waits until the forker has its handler (it removes the socket then).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    pid = os.fork()
    if pid == 0:  # the forker: never returns into the caller's code
        code = 0
        try:
            signal.signal(signal.SIGTERM, _stop)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            _warm(warm)
            _forker(srv, path, inode, parent, make_agent)
        except _Stop:
            pass
        except BaseException:  # logged; the forker must end here, whatever it was
            log.exception("request channel: forker failed")
            code = 1
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    srv.close()
    log.info(json.dumps({"event": "request_channel_listening", "path": str(path), "pid": pid}))
    return Channel(pid, path, inode)


def _warm(warm: Callable[[], None]) -> None:
    try:
        warm()
    except Exception:  # an optimisation: each request does the work itself then
        log.warning("request channel: warming up failed", exc_info=True)


def _ours(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


class _Stop(Exception):
    """SIGTERM in the forker: stop accepting, remove the socket, exit."""


def _stop(_sig: int, _frame: object) -> None:
    raise _Stop


def _forker(
    srv: socket.socket, path: Path, inode: int, parent: int, make_agent: Callable[[], Agent]
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of `serve` is for `serve`
    srv.settimeout(POLL_S)
    try:
        while os.getppid() == parent and _ours(path, inode):
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                if relay.peer_uid(conn) != os.getuid():
                    log.warning(json.dumps({"event": "request_channel_refused",
                                            "uid": relay.peer_uid(conn)}))  # fmt: skip
                    continue
                _hand_off(srv, conn, make_agent)
    finally:
        srv.close()
        if _ours(path, inode):
            path.unlink(missing_ok=True)


def _hand_off(srv: socket.socket, conn: socket.socket, make_agent: Callable[[], Agent]) -> None:
    """Serve ``conn`` in a grandchild that nobody waits for (double fork, own session)."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)  # the middle child exits at once
        return
    code = 0
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        srv.close()
        code = serve_connection(conn, make_agent)
    except BaseException:  # logged; this process must end here
        log.exception("request channel: request failed")
        code = 1
    finally:
        os._exit(code)


class _Answer(io.TextIOBase):
    """The answer stream: each line written goes to the client at once.

    A client that has gone (SSH dropped, relay killed) does not stop the
    request: the rest of the answer is dropped, the work goes on and is
    journaled as always.
    """

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self._conn.sendall(text.encode())
            except OSError as exc:
                self.gone = True
                log.info(json.dumps({"event": "request_client_gone", "error": str(exc)}))
        return len(text)


def serve_connection(conn: socket.socket, make_agent: Callable[[], Agent]) -> int:
    """One request on ``conn``: header line, request, EOF in; answer lines and trailer out."""
    conn.settimeout(IO_TIMEOUT_S)
    with conn.makefile("rb") as reader:
        header = reader.readline(MAX_HEADER)
        body = reader.read()
    answer = _Answer(conn)
    try:
        verb = json.loads(header).get("verb")
    except (ValueError, AttributeError):
        verb = None
    if verb not in relay.VERBS:
        line = json.dumps({"error": {"type": "request", "message": f"bad header {header!r}"}})
        answer.write(line + "\n")
        code = 1
    else:
        request = io.StringIO(body.decode("utf-8", "replace"))
        code = wire.serve_request(make_agent, str(verb), request, answer)
    answer.write(json.dumps({"exit": code}) + "\n")
    return code
