"""The SSH connection holder: one pinned connection per host, kept between runs. I/O shell.

Started by :func:`reconciler.hosts.control.ensure_holder` as
``python -m reconciler.hosts.holder --socket PATH ...``, detached; the design,
its security and its lifetime are described there and in docs/ssh.md.

Requests are one JSON line each on the unix socket, answered with one line:

- ``{"op": "ping"}`` -> ``{"ok": true, "pid": ...}``;
- ``{"op": "connect", "host", "target"}``: the connection to that host is up
  (opened now, host key verified, logged in) -> ``{"ok": true}``;
- ``{"op": "ask", "host", "target", "address", "port", "data", "timeout"}``:
  a new ``direct-tcpip`` channel from the host to ``address:port``, ``data``
  sent, one line read back -> ``{"line": ...}``.
- ``{"op": "exec", "host", "target", "command", "stdin", "timeout"}``: one of
  the agent's protocol commands (:data:`HELD_COMMANDS`; anything else is
  refused with ``NotHeld``) on a new exec channel -> one ``{"line": ...}`` per
  stdout line as it arrives, then ``{"exit": N, "stderr": ...}``.

A failure is ``{"error": {"type": "HostUnreachable", "message": ...}}`` (the
class names of :mod:`fleet.errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fleet import errors
from reconciler.hosts import agentclient, control, hostkeys, ssh

log = logging.getLogger("reconciler.hosts.holder")

POLL_S = 1.0  # how often the idle time and the socket file are checked
# The only commands a client may run through the holder: the agent's protocol
# verbs, as agentclient sends them. The holder is an optimisation for talking
# to the agent, not a general remote shell for whoever shares our uid.
HELD_COMMANDS = frozenset(
    agentclient.agent_command(agentclient.AGENT, verb) for verb in ("observe", "apply")
)
Send = Callable[[dict[str, Any]], None]


class Holder:
    def __init__(self, pool: ssh.SSHPool, idle: float) -> None:
        self.pool = pool
        self.idle = idle
        self._lock = threading.Lock()
        self._busy = 0
        self._last = time.monotonic()

    def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        op = body.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        host = str(body.get("host", ""))
        try:
            target = control.target_from_json(body["target"])
            conn = self.pool.get(host, target)
            if op == "connect":
                conn.connect()
                return {"ok": True}
            if op == "ask":
                timeout = float(body.get("timeout", 60.0))
                with conn.open_tcp(str(body["address"]), int(body["port"])) as chan:
                    chan.sendall(str(body.get("data", "")).encode(), timeout=timeout)
                    line = chan.read_line(timeout=timeout, limit=int(body.get("limit", 64 << 20)))
                return {"line": line.decode("utf-8", "replace")}
        except errors.HostError as exc:
            return {"error": {"type": type(exc).__name__, "message": exc.message}}
        except (KeyError, TypeError, ValueError) as exc:
            return {"error": {"type": "ProtocolError", "message": f"bad request: {exc!r}"}}
        except Exception as exc:  # a bug: logged with its traceback, the holder stays up
            log.exception("request %r failed", op)
            return {"error": {"type": "HostError", "message": f"ssh holder: {exc!r}"}}
        return {"error": {"type": "ProtocolError", "message": f"unknown op {op!r}"}}

    def exec(self, body: dict[str, Any], send: Send) -> dict[str, Any]:
        """Run an agent command on the host, each stdout line sent on as it comes."""
        host = str(body.get("host", ""))
        try:
            command = str(body["command"])
            if command not in HELD_COMMANDS:
                return {"error": {"type": "NotHeld", "message": "not an agent command"}}
            conn = self.pool.get(host, control.target_from_json(body["target"]))
            result = conn.exec(
                command,
                stdin=str(body.get("stdin", "")).encode("utf-8"),
                on_line=lambda line: send({"line": line}),
                timeout=float(body.get("timeout", 3600.0)),
            )
        except errors.HostError as exc:
            return {"error": {"type": type(exc).__name__, "message": exc.message}}
        except (KeyError, TypeError, ValueError) as exc:
            return {"error": {"type": "ProtocolError", "message": f"bad request: {exc!r}"}}
        except Exception as exc:  # a bug: logged with its traceback, the holder stays up
            log.exception("exec failed")
            return {"error": {"type": "HostError", "message": f"ssh holder: {exc!r}"}}
        stderr = result.stderr.decode("utf-8", "replace")
        return {"exit": result.exit_status, "stderr": stderr, "seconds": result.seconds}

    def serve_one(self, client: socket.socket) -> None:
        with self._lock:
            self._busy += 1
        try:
            with client:
                if not _same_user(client):
                    return
                client.settimeout(30.0)
                with client.makefile("rb") as f:
                    line = f.readline()
                try:
                    body = json.loads(line)
                except ValueError:
                    body = {}
                if not isinstance(body, dict):
                    body = {}
                if body.get("op") == "exec":
                    answer = self.exec(body, _sender(client))
                else:
                    answer = self.handle(body)
                client.sendall(json.dumps(answer).encode() + b"\n")
        except OSError as exc:
            log.info("client: %s", exc)
        finally:
            with self._lock:
                self._busy -= 1
                self._last = time.monotonic()

    def idle_for(self) -> float:
        with self._lock:
            return 0.0 if self._busy else time.monotonic() - self._last


def _sender(client: socket.socket) -> Send:
    """Lines to a client that may have gone: the command still runs to its end."""
    gone = False

    def send(doc: dict[str, Any]) -> None:
        nonlocal gone
        if gone:
            return
        try:
            client.sendall(json.dumps(doc).encode() + b"\n")
        except OSError as exc:
            gone = True
            log.info("client gone while its command runs: %s", exc)

    return send


def _same_user(client: socket.socket) -> bool:
    """Only processes of our own uid may use our connections (``SO_PEERCRED``)."""
    creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def bind(path: Path) -> tuple[socket.socket, int]:
    """Listen on ``path`` (mode 0600); raises FileExistsError if a live holder has it.

    Made under a temporary name and hard-linked into place, so two holders
    started at once cannot both own the name.
    """
    if path.exists() and control.alive(path):
        raise FileExistsError(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        srv.bind(str(tmp))
    finally:
        os.umask(old)
    srv.listen(64)
    try:
        path.unlink(missing_ok=True)  # a dead holder's (checked above)
        os.link(tmp, path)
    finally:
        tmp.unlink()
    return srv, path.stat().st_ino


def run(path: Path, pool: ssh.SSHPool, idle: float) -> None:
    try:
        srv, inode = bind(path)
    except FileExistsError:
        log.info("another holder serves %s", path)
        return
    holder = Holder(pool, idle)
    srv.settimeout(POLL_S)
    log.info("holding SSH connections on %s (idle limit %gs)", path, idle)
    try:
        while True:
            try:
                client, _ = srv.accept()
            except TimeoutError:
                try:
                    if path.stat().st_ino != inode:
                        break  # replaced or removed: no longer ours
                except OSError:
                    break
                if holder.idle_for() >= idle:
                    break
                continue
            threading.Thread(target=holder.serve_one, args=(client,), daemon=True).start()
    finally:
        srv.close()
        try:
            if path.stat().st_ino == inode:
                path.unlink()
        except OSError:
            pass
        pool.close()
        log.info("holder on %s stopped", path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reconciler.hosts.holder")
    p.add_argument("--socket", required=True, type=Path)
    p.add_argument("--idle", type=float, default=control.DEFAULT_PERSIST_S)
    p.add_argument("--ssh-key")
    p.add_argument("--known-hosts")
    p.add_argument("--netns")
    p.add_argument("--foreground", action="store_true", help="do not fork into the background")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s holder: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    try:
        credentials = ssh.load_credentials(args.ssh_key)
        policy = hostkeys.load_policy(args.known_hosts)
    except errors.FleetError as exc:
        log.error("%s", exc)
        return 1
    if not args.foreground and os.fork() > 0:
        return 0  # the starter waits for this exit; the child holds on (no threads yet)
    # SIGTERM ends it as an idle timeout does: socket removed, connections closed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pool = ssh.SSHPool(credentials, policy, ssh.SSHOptions(netns=args.netns))
    run(args.socket, pool, args.idle)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
