"""One persistent HAProxy admin-socket session: applies backend diffs without a reload.

The session stays open in interactive (``prompt``) mode, so a one-route change
costs a few socket round trips. Each op's commands are checked against what
HAProxy answers on success; the first refusal rolls back the ops already
applied (each op knows its inverse) and raises, so HAProxy keeps serving the
last good table. Observation is "command + pure parser": ``show servers state``
and ``show stat`` have parsers tested against recorded output.
"""

from __future__ import annotations

import csv
import io
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import ProviderError
from providers.proxy import diff

log = logging.getLogger(__name__)

PROMPT = b"\n> "
# ``show servers state``'s srv_op_state of a server HAProxy sends traffic to (UP)
OP_RUNNING = 2
DEL_RETRY_S = 2.0


@dataclass(frozen=True, slots=True)
class ServerState:
    """One line of ``show servers state``, the fields routing cares about."""

    backend: str
    name: str
    address: str
    port: int
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int  # bit flags (SRV_ADMF_*): see maintenance; 0x08 drain
    weight: int

    @property
    def maintenance(self) -> bool:
        """Forced (0x01), inherited (0x02) or resolution (0x20) maintenance: HAProxy's mask.

        Not 0x04 (CMAINT): it only records that the configuration said
        ``disabled``, and stays set after ``enable server`` puts it in service.
        """
        return bool(self.admin_state & 0x23)


@dataclass(frozen=True, slots=True)
class ServerStat:
    """One server line of ``show stat``: current and queued sessions, idle time."""

    backend: str
    name: str
    current: int
    queued: int
    total: int
    last_session_s: int  # -1: never
    last_change_s: int
    status: str


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse ``show servers state`` (format version 1)."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or line.strip() == "1":
            continue
        f = line.split()
        if len(f) < 19:
            continue
        out.append(ServerState(f[1], f[3], f[4], int(f[18]), int(f[5]), int(f[6]), int(f[7])))
    return out


def parse_stat(text: str) -> list[ServerStat]:
    """Parse the CSV of ``show stat`` into its server rows."""
    body = text.lstrip("# ")
    out = []
    for row in csv.DictReader(io.StringIO(body)):
        name = row.get("svname", "")
        if name in ("FRONTEND", "BACKEND", ""):
            continue
        out.append(
            ServerStat(
                backend=row["pxname"],
                name=name,
                current=int(row["scur"] or 0),
                queued=int(row["qcur"] or 0),
                total=int(row["stot"] or 0),
                last_session_s=int(row["lastsess"] or -1),
                last_change_s=int(row["lastchg"] or 0),
                status=row["status"],
            )
        )
    return out


def succeeded(command: str, answer: str) -> bool:
    """Whether HAProxy's answer to ``command`` means it was done."""
    text = answer.strip()
    if command.startswith("add server"):
        return text.startswith("New server registered")
    if command.startswith("del server"):
        return text.startswith("Server deleted")
    if command.startswith("set server") and " addr " in command:
        return "changed" in text or "no need to change" in text
    return text == ""


class AdminSession:
    """A persistent, interactive session on HAProxy's admin socket."""

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None

    def __enter__(self) -> AdminSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.path))
            sock.sendall(b"prompt\n")
            self._read(sock)
        except OSError as exc:
            sock.close()
            raise ProviderError(f"proxy: cannot reach HAProxy at {self.path}: {exc}") from exc
        return sock

    @staticmethod
    def _read(sock: socket.socket) -> str:
        data = bytearray()
        while not data.endswith(PROMPT) and data != b"> ":
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("HAProxy closed the admin session")
            data += chunk
        return data[: -len(PROMPT)].decode(errors="replace") if data != b"> " else ""

    def execute(self, command: str) -> str:
        """Run one command; reconnect once if HAProxy closed the session (e.g. a reload)."""
        if "\n" in command or ";" in command:
            raise ProviderError(f"proxy: refusing a command with a separator: {command!r}")
        for attempt in (1, 2):
            if self._sock is None:
                self._sock = self._connect()
            try:
                self._sock.sendall(command.encode() + b"\n")
                return self._read(self._sock)
            except OSError as exc:
                self.close()
                if attempt == 2:
                    message = f"proxy: admin session failed on {command!r}: {exc}"
                    raise ProviderError(message) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(self, command: str) -> None:
        answer = self.execute(command)
        if command.startswith("del server") and not succeeded(command, answer):
            answer = self._del_when_idle(command, answer)
        if not succeeded(command, answer):
            raise ProviderError(f"proxy: HAProxy refused {command!r}: {answer.strip()}")

    def _del_when_idle(self, command: str, answer: str) -> str:
        """A removed server may still hold idle or finishing connections: let them go."""
        ref = command.removeprefix("del server ").strip()
        deadline = time.monotonic() + DEL_RETRY_S
        while "connection" in answer.lower() and time.monotonic() < deadline:
            time.sleep(0.05)
            answer = self.execute(command)
        if "connection" in answer.lower():
            self.execute(f"shutdown sessions server {ref}")
            time.sleep(0.05)
            answer = self.execute(command)
        return answer

    def apply(self, ops: Sequence[diff.Op], replay_map: Path) -> list[str]:
        """Apply ``ops`` in order; on the first refusal undo what was done, then raise."""
        done: list[diff.Op] = []
        commands: list[str] = []
        try:
            for op in ops:
                cmds = op.commands(str(replay_map)) if isinstance(op, diff.MapOp) else op.commands()
                for command in cmds:
                    self._run(command)
                    commands.append(command)
                    if not done or done[-1] is not op:
                        done.append(op)  # partly applied ops are undone too
        except ProviderError as failure:
            self._rollback(done, replay_map, failure)
            raise
        return commands

    def _rollback(self, done: list[diff.Op], replay_map: Path, failure: ProviderError) -> None:
        for op in reversed(done):
            inverse = op.inverse()
            cmds = (
                inverse.commands(str(replay_map))
                if isinstance(inverse, diff.MapOp)
                else inverse.commands()
            )
            for command in cmds:
                try:
                    self._run(command)
                except ProviderError as exc:  # keep undoing the rest; report the first failure
                    log.error("proxy: rollback of %r failed after %s: %s", command, failure, exc)

    def servers_state(self, backend: str = "") -> list[ServerState]:
        return parse_servers_state(self.execute(f"show servers state {backend}".strip()))

    def stat(self) -> list[ServerStat]:
        return parse_stat(self.execute("show stat"))
