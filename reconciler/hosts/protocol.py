"""The apply half of the agent protocol: actions in, events and results out.

Pure data and JSON (de)serialisation, shared by every HostClient. On the wire
(``fleet-agent apply`` over an SSH exec channel) the reconciler writes one JSON
request on stdin and reads JSON lines: zero or more ``{"event": ...}`` then one
``{"result": ...}``. See docs/protocol.md.

An action is a plan step as the agent sees it. The agent must:

* refuse it (outcome ``refused``, reporting the resource's ``current`` etag)
  when the resource's etag is neither ``expect`` (``null`` = must not exist)
  nor already the step's target ``etag``;
* do nothing and answer ``already`` when the resource already carries the
  target etag (or, for ``delete``, is already gone): this makes every action
  idempotent, so a resumed apply duplicates nothing;
* store the action's ``etag`` with the resource after ``create``/``update``;
* for a ``gate``, answer ``ok`` only once the machine has been healthy for
  ``min_healthy_s``, and ``gate_failed`` when ``deadline_s`` passes first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from providers import resources
from reconciler.core import observed

if TYPE_CHECKING:  # annotations only: the planner is not needed to talk to a host
    from reconciler.core import plan as P

PROTOCOL_VERSION = observed.PROTOCOL_VERSION
Json = Any


class Outcome(StrEnum):
    OK = "ok"
    ALREADY = "already"  # the resource was already in the target state
    REFUSED = "refused"  # precondition failed; ``etag`` is the current one
    FAILED = "failed"
    GATE_FAILED = "gate_failed"  # the machine did not become healthy in time

    @property
    def succeeded(self) -> bool:
        return self in (Outcome.OK, Outcome.ALREADY)


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    kind: resources.Kind
    resource_id: str
    verb: P.Verb
    spec: Mapping[str, Json] | None
    etag: str | None
    expect: str | None
    gate: P.Gate | None = None

    @staticmethod
    def of(step: P.Step) -> Action:
        return Action(
            step.id,
            step.kind,
            step.resource_id,
            step.verb,
            step.spec,
            step.etag,
            step.expect,
            step.gate,
        )


@dataclass(frozen=True, slots=True)
class Event:
    action: str
    type: str  # e.g. pulling, booting, running, healthy, unhealthy
    message: str = ""


@dataclass(frozen=True, slots=True)
class Result:
    action: str
    outcome: Outcome
    etag: str | None = None  # after the action; for ``refused`` the current etag
    message: str = ""
    generation: int | None = None  # the host's inventory generation after the answer
    # whether the host kept the inputs digest sent with the request (``record``):
    # None when none was sent or the agent did not say (an agent before this field)
    inputs_recorded: bool | None = None


EventSink = Callable[[Event], None]


class HostClient(Protocol):
    """One host, as the reconciler talks to it. Implementations: memory, SSH (later)."""

    @property
    def name(self) -> str: ...

    def observe(self) -> observed.HostObservation:
        """The host's inventory; raises :class:`~fleet.errors.HostError` if it cannot."""
        ...

    def apply(
        self, actions: Sequence[Action], on_event: EventSink, record: str | None = None
    ) -> list[Result]:
        """Run ``actions`` in order, streaming events; one result per action.

        ``record``: an inputs digest for the host to keep once every action
        succeeded, at the generation they leave (what :meth:`record_inputs`
        does, without its round trip); each result's ``inputs_recorded`` says
        whether it did.
        """
        ...

    def record_inputs(self, digest: str, generation: int) -> bool:
        """Keep ``digest`` (:mod:`reconciler.core.inputs`) if the host is still at
        ``generation``; whether it did (False: changed since, or an older agent)."""
        ...


def action_to_json(a: Action) -> dict[str, Json]:
    return {
        "id": a.id,
        "kind": a.kind.value,
        "resource_id": a.resource_id,
        "verb": a.verb.value,
        "spec": a.spec,
        "etag": a.etag,
        "expect": a.expect,
        "gate": {"min_healthy_s": a.gate.min_healthy_s, "deadline_s": a.gate.deadline_s}
        if a.gate
        else None,
    }


def request_to_json(host: str, apply_id: str, actions: Sequence[Action]) -> dict[str, Json]:
    return {
        "protocol_version": PROTOCOL_VERSION,
        "host": host,
        "apply_id": apply_id,
        "actions": [action_to_json(a) for a in actions],
    }


def event_to_json(e: Event) -> dict[str, Json]:
    return {"event": {"action": e.action, "type": e.type, "message": e.message}}


def result_to_json(host: str, generation: int, results: Sequence[Result]) -> dict[str, Json]:
    return {
        "result": {
            "protocol_version": PROTOCOL_VERSION,
            "host": host,
            "generation": generation,
            "results": [
                {
                    "action": r.action,
                    "outcome": r.outcome.value,
                    "etag": r.etag,
                    "message": r.message,
                }
                for r in results
            ],
        }
    }
