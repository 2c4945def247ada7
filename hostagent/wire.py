"""`fleet-agent observe` and `fleet-agent apply` on the wire: JSON in, JSON lines out.

The reconciler runs these over an SSH exec channel. The request is one JSON
object on stdin. ``observe`` answers with one JSON line; ``apply`` writes
``{"event": ...}`` lines as work progresses, then one ``{"result": ...}``
line. A request the agent cannot serve at all (wrong protocol version, wrong
host, bad JSON) gets one ``{"error": {"type": ..., "message": ...}}`` line and
exit status 1. See docs/protocol.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import IO, Any

from hostagent.agent import Agent, AgentError, stream_apply
from hostagent.config import ConfigError


def _error(out: IO[str], type_: str, message: str) -> int:
    out.write(json.dumps({"error": {"type": type_, "message": message}}) + "\n")
    out.flush()
    return 1


def _read(stdin: IO[str]) -> Any:
    text = stdin.read()
    return json.loads(text) if text.strip() else {}


def serve_request(
    make_agent: Callable[[], Agent],
    verb: str,
    stdin: IO[str] = sys.stdin,
    out: IO[str] = sys.stdout,
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
