"""The real HostClient: `fleet-agent observe` and `fleet-agent apply` over SSH.

One reused SSH connection per host (:mod:`reconciler.hosts.ssh`); the request
goes in on stdin, JSON lines come back (docs/protocol.md). Events are passed on
as they arrive, so `reconcile apply` shows a machine booting while it boots.
Everything the agent can say goes through here into our error tree: an agent
that is not installed, a protocol mismatch, a broken answer.

``observe`` first asks the host's running supervisor on its loopback observe
port (``fleet-agent serve``, port 7930), through a ``direct-tcpip`` channel on
the same SSH connection: no new Python process on the host. Whenever that does
not give a valid answer (no supervisor, forwarding disabled, an old agent, a
broken answer) it falls back to ``fleet-agent observe`` on an exec channel,
which stays the authority; after a failure the port is left alone for
``PORT_RETRY_S``. See docs/protocol.md, "The observe port".

The exec verbs run through the agent's thin relay (:func:`agent_command`):
a Python without ``site`` that forwards the request to the running
supervisor's request channel, or becomes ``fleet-agent VERB`` when there is
none (docs/agent.md, "How actions reach the agent").
"""

from __future__ import annotations

import json
import logging
import posixpath
import secrets
import shlex
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from fleet import model
from fleet.errors import FleetError, HostError, ProtocolError
from reconciler.core import observed
from reconciler.hosts import protocol

if TYPE_CHECKING:  # annotations only: a held connection needs no SSH library here
    from reconciler.hosts import ssh

log = logging.getLogger(__name__)
Json = Any

# bootstrap.AGENT, where `reconcile hosts bootstrap` installs the agent (not imported:
# it brings the wheel builder into every command that talks to a host).
AGENT = "/var/lib/fleet-agent/current/bin/fleet-agent"
OBSERVE_TIMEOUT_S = 60.0
APPLY_TIMEOUT_S = 3600.0
OBSERVE_PORT = 7930  # hostagent.config.OBSERVE_PORT: the supervisor's loopback port
PORT_TIMEOUT_S = 10.0  # a free channel slot, opening the channel, sending the request
PORT_RETRY_S = 60.0


def agent_command(agent: str, verb: str) -> str:
    """The shell command that runs ``fleet-agent VERB`` on the host, the fast way.

    For an agent installed by bootstrap (``<venv>/bin/fleet-agent``): the relay
    ``hostagent/relay.py`` of the same venv, run by its Python without ``site``
    (~40 ms instead of the agent's imports), which hands the request to
    ``fleet-agent serve`` or else execs ``fleet-agent VERB`` itself. An agent
    installed before the relay existed runs ``fleet-agent VERB`` directly; exit
    status 127 still means no agent at all.
    """
    if not agent.startswith("/") or posixpath.basename(agent) != "fleet-agent" or " " in agent:
        return f"{agent} {verb}"  # a command line of its own (tests): run as given
    bindir = posixpath.dirname(agent)
    venv = shlex.quote(posixpath.dirname(bindir))
    python = shlex.quote(posixpath.join(bindir, "python"))
    return (
        f"for r in {venv}/lib/python3*/site-packages/hostagent/relay.py; do "
        f'[ -f "$r" ] && exec {python} -E -s -S "$r" {verb}; done; '
        f"exec {shlex.quote(agent)} {verb}"
    )


class Channel(Protocol):
    """A byte stream to a port on the host (``ssh.TCPChannel``, ``control.HeldChannel``)."""

    def sendall(self, data: bytes, *, timeout: float) -> None: ...

    def read_line(self, *, timeout: float, limit: int = ...) -> bytes: ...


class Connection(Protocol):
    """What the client needs of a host connection: ``ssh.SSHConnection``, or the
    holder's ``control.HeldConnection`` (docs/ssh.md)."""

    def connect(self) -> None: ...

    def open_tcp(
        self, address: str, port: int, *, timeout: float | None = None
    ) -> AbstractContextManager[Channel]: ...

    def exec(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> ssh.ExecResult: ...


class AgentClient:
    """One host reached over SSH."""

    def __init__(
        self,
        host: model.Host,
        conn: Connection,
        agent: str = AGENT,
        *,
        observe_port: int | None = OBSERVE_PORT,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.host = host
        self.conn = conn
        self.agent = agent
        self.observe_port = observe_port  # None: always exec
        self.clock = clock
        self._port_down_until = 0.0
        self.last_observe_via = ""  # "port" or "exec", for logs and tests

    @property
    def name(self) -> str:
        return self.host.name

    def _request(self, **extra: Json) -> bytes:
        body = {"protocol_version": observed.PROTOCOL_VERSION, "host": self.host.name, **extra}
        return json.dumps(body).encode()

    def _check(self, result: ssh.ExecResult, verb: str) -> None:
        if result.exit_status == 127:
            raise HostError(
                self.name,
                f"fleet-agent is not installed ({self.agent} not found): "
                "run `reconcile hosts bootstrap`",
                action=verb,
            )
        for line in result.lines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                err = doc["error"]
                message = str(err.get("message", "error"))
                if err.get("type") == "protocol":
                    raise ProtocolError(self.name, message, action=verb)
                raise HostError(self.name, message, action=verb)
        if result.exit_status != 0:
            text = result.stderr.decode("utf-8", "replace").strip()
            tail = (text.splitlines() or ["no output"])[-1]
            raise HostError(
                self.name, f"fleet-agent {verb} exited {result.exit_status}: {tail}", action=verb
            )

    def observe(self) -> observed.HostObservation:
        if self.observe_port is not None and self.clock() >= self._port_down_until:
            # Connection failures are not the port's: they surface here, as on exec,
            # instead of costing a second round of connect retries there.
            self.conn.connect()
            try:
                found = self._observe_port(self.observe_port)
            except FleetError as exc:
                self._port_down_until = self.clock() + PORT_RETRY_S
                log.debug("%s: observe port: %s; falling back to exec", self.name, exc)
            else:
                self.last_observe_via = "port"
                return found
        self.last_observe_via = "exec"
        return self._observe_exec()

    def _observe_port(self, port: int) -> observed.HostObservation:
        with self.conn.open_tcp("127.0.0.1", port, timeout=PORT_TIMEOUT_S) as chan:
            chan.sendall(self._request() + b"\n", timeout=PORT_TIMEOUT_S)
            line = chan.read_line(timeout=OBSERVE_TIMEOUT_S)
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(self.name, f"observe port answer is not JSON: {exc}") from exc
        if isinstance(raw, dict) and isinstance(raw.get("error"), dict):
            message = str(raw["error"].get("message", "error"))
            raise HostError(self.name, f"observe port: {message}", action="observe")
        return observed.host_from_json(raw, expect_host=self.name)

    def _observe_exec(self) -> observed.HostObservation:
        result = self.conn.exec(
            agent_command(self.agent, "observe"), stdin=self._request(), timeout=OBSERVE_TIMEOUT_S
        )
        self._check(result, "observe")
        lines = result.lines()
        try:
            raw = json.loads(lines[-1]) if lines else None
        except ValueError as exc:
            raise ProtocolError(self.name, f"observe answer is not JSON: {exc}") from exc
        return observed.host_from_json(raw, expect_host=self.name)

    def apply(
        self,
        actions: Sequence[protocol.Action],
        on_event: protocol.EventSink,
        record: str | None = None,
    ) -> list[protocol.Result]:
        request = protocol.request_to_json(self.name, secrets.token_hex(16), actions)
        if record is not None:
            request["record_inputs"] = {"digest": record}
        results: list[protocol.Result] = []

        def on_line(line: str) -> None:
            try:
                doc = json.loads(line)
            except ValueError:
                log.debug("%s: not JSON: %s", self.name, line)
                return
            if not isinstance(doc, dict):
                return
            event = doc.get("event")
            if isinstance(event, dict):
                on_event(
                    protocol.Event(
                        str(event.get("action", "")),
                        str(event.get("type", "")),
                        str(event.get("message", "")),
                    )
                )
            result = doc.get("result")
            if isinstance(result, dict):
                results.extend(_results(self.name, result))

        self._send_apply(request, on_line, APPLY_TIMEOUT_S)
        if len(results) != len(actions):
            raise ProtocolError(
                self.name, f"apply answered {len(results)} results for {len(actions)} actions"
            )
        return results

    def record_inputs(self, digest: str, generation: int) -> bool:
        """An apply request without actions that asks the agent to keep the digest."""
        request = protocol.request_to_json(self.name, secrets.token_hex(16), [])
        request["record_inputs"] = {"digest": digest, "generation": generation}
        recorded: list[bool] = []

        def on_line(line: str) -> None:
            try:
                doc = json.loads(line)
            except ValueError:
                return
            if isinstance(doc, dict) and isinstance(doc.get("result"), dict):
                recorded.append(doc["result"].get("inputs_recorded") is True)

        self._send_apply(request, on_line, OBSERVE_TIMEOUT_S)
        return recorded == [True]

    def _send_apply(
        self, request: dict[str, Json], on_line: Callable[[str], None], timeout: float
    ) -> None:
        answer = self.conn.exec(
            agent_command(self.agent, "apply"),
            stdin=json.dumps(request).encode(),
            on_line=on_line,
            timeout=timeout,
        )
        self._check(answer, "apply")


def _results(host: str, raw: dict[str, Json]) -> list[protocol.Result]:
    out = []
    generation = raw.get("generation")
    recorded = raw.get("inputs_recorded")
    for item in raw.get("results") or []:
        try:
            outcome = protocol.Outcome(item["outcome"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(host, f"apply answer: bad result {item!r}") from exc
        out.append(
            protocol.Result(
                str(item.get("action", "")),
                outcome,
                item.get("etag"),
                str(item.get("message", "")),
                generation if type(generation) is int else None,
                recorded if type(recorded) is bool else None,
            )
        )
    return out
