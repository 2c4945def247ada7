"""The real HostClient: `fleet-agent observe` and `fleet-agent apply` over SSH.

One reused SSH connection per host (:mod:`reconciler.hosts.ssh`); the request
goes in on stdin, JSON lines come back (docs/protocol.md). Events are passed on
as they arrive, so `reconcile apply` shows a machine booting while it boots.
Everything the agent can say goes through here into our error tree: an agent
that is not installed, a protocol mismatch, a broken answer.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from fleet import model
from fleet.errors import HostError, ProtocolError
from reconciler.core import observed
from reconciler.hosts import bootstrap, protocol, ssh

log = logging.getLogger(__name__)
Json = Any

OBSERVE_TIMEOUT_S = 60.0
APPLY_TIMEOUT_S = 3600.0


class AgentClient:
    """One host reached over SSH."""

    def __init__(self, host: model.Host, conn: ssh.SSHConnection, agent: str = bootstrap.AGENT):
        self.host = host
        self.conn = conn
        self.agent = agent

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
        result = self.conn.exec(
            f"{self.agent} observe", stdin=self._request(), timeout=OBSERVE_TIMEOUT_S
        )
        self._check(result, "observe")
        lines = result.lines()
        try:
            raw = json.loads(lines[-1]) if lines else None
        except ValueError as exc:
            raise ProtocolError(self.name, f"observe answer is not JSON: {exc}") from exc
        return observed.host_from_json(raw, expect_host=self.name)

    def apply(
        self, actions: Sequence[protocol.Action], on_event: protocol.EventSink
    ) -> list[protocol.Result]:
        request = protocol.request_to_json(self.name, uuid.uuid4().hex, actions)
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

        answer = self.conn.exec(
            f"{self.agent} apply",
            stdin=json.dumps(request).encode(),
            on_line=on_line,
            timeout=APPLY_TIMEOUT_S,
        )
        self._check(answer, "apply")
        if len(results) != len(actions):
            raise ProtocolError(
                self.name, f"apply answered {len(results)} results for {len(actions)} actions"
            )
        return results


def _results(host: str, raw: dict[str, Json]) -> list[protocol.Result]:
    out = []
    for item in raw.get("results") or []:
        try:
            outcome = protocol.Outcome(item["outcome"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(host, f"apply answer: bad result {item!r}") from exc
        out.append(
            protocol.Result(
                str(item.get("action", "")), outcome, item.get("etag"), str(item.get("message", ""))
            )
        )
    return out
