"""`fleet-agent observe` and `fleet-agent apply` on the wire: JSON in, JSON lines out.

The reconciler runs these over an SSH exec channel. The request is one JSON
object on stdin. ``observe`` answers with one JSON line; ``apply`` writes
``{"event": ...}`` lines as work progresses, then one ``{"result": ...}``
line. A request the agent cannot serve at all (wrong protocol version, wrong
host, bad JSON) gets one ``{"error": {"type": ..., "message": ...}}`` line and
exit status 1. See docs/protocol.md.

:func:`observe_line` is the same observe answer for a request that arrived
as one line on the supervisor's observe port (:mod:`hostagent.listener`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import IO, Any, Protocol

from hostagent.agent import Agent, AgentError, stream_apply
from hostagent.config import ConfigError


class Out(Protocol):
    """Where answer lines go: stdout, or the request channel's socket (:mod:`hostagent.channel`)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


def _error(out: Out, type_: str, message: str) -> int:
    out.write(_error_line(type_, message))
    out.flush()
    return 1


def _error_line(type_: str, message: str) -> str:
    return json.dumps({"error": {"type": type_, "message": message}}) + "\n"


def _read(stdin: IO[str]) -> Any:
    text = stdin.read()
    return json.loads(text) if text.strip() else {}


def serve_request(
    make_agent: Callable[[], Agent],
    verb: str,
    stdin: IO[str] = sys.stdin,
    out: Out = sys.stdout,
) -> int:
    """Answer one observe or apply request; the exit status for the process."""
    try:
        request = _read(stdin)
    except ValueError as exc:
        return _error(out, "request", f"the request is not JSON: {exc}")
    try:
        agent = make_agent()
        if verb == "observe":
            out.write(json.dumps(agent.observe(request)) + "\n")
        else:

            def write(line: str) -> None:
                out.write(line)
                out.flush()

            stream_apply(agent, request, write)
    except AgentError as exc:
        return _error(out, exc.type, str(exc))
    except ConfigError as exc:
        return _error(out, "config", str(exc))
    out.flush()
    return 0


def observe_line(make_agent: Callable[[], Agent], request: bytes) -> str:
    """The answer line (newline-terminated) to one observe request line."""
    text = request.decode("utf-8", "replace")
    if not text.endswith("\n"):
        return _error_line("request", "the request must be one JSON line, ended by a newline")
    try:
        body = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        return _error_line("request", f"the request is not JSON: {exc}")
    try:
        return json.dumps(make_agent().observe(body)) + "\n"
    except AgentError as exc:
        return _error_line(exc.type, str(exc))
    except ConfigError as exc:
        return _error_line("config", str(exc))
