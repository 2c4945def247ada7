"""The agent's side of the protocol: answer observe, carry out apply requests.

This is the one place that decides whether an action may run on this host.
For each action, under the inventory lock:

- the resource already carries the action's target etag (or, for a delete,
  is gone): answer ``already`` and do nothing, so a resumed apply duplicates
  nothing;
- its etag is not the one the plan expected (``expect``; ``None`` = must not
  exist): answer ``refused`` with the current etag, touch nothing;
- otherwise record the intent (``pending``), release the lock, let the kind's
  handler do the work, then record the new etag and spec.

A crash between intent and commit leaves ``pending`` equal to the action's
etag; the same action, retried, finishes the job. A different action sees the
pending change and is refused. The JSON shapes are in docs/protocol.md.

An action is also *in flight* while its process works on it, which now
outlives the client that sent it (the supervisor's request channel, the
reconciler's connection holder): a resumed apply may send the same action
while the first is still booting the machine. So each action holds a work
lock for its resource (an flock, one of :data:`WORK_STRIPES` files, released
by the kernel if the process dies) from its decision to its commit: the second
sender waits, then finds the work done (``already``) or, if the first died,
finishes it. Exactly one process does the work either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hostagent import handlers as H
from hostagent.inventory import Entry, Inventory

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
WORK_STRIPES = 256  # work lock files under <inventory>/work/ (a bounded set)
Json = Any
Sink = Callable[[dict[str, Json]], None]


class AgentError(Exception):
    """A request the agent cannot serve at all (bad JSON, wrong protocol, wrong host)."""

    def __init__(self, type_: str, message: str) -> None:
        self.type = type_
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Facts:
    host: str
    cpus: int
    memory_mb: int
    gpus: Mapping[str, int]
    hypervisor: str
    agent_version: str
    private_prefix: str | None


class Agent:
    def __init__(
        self,
        inventory: Inventory,
        handlers: Mapping[str, H.Handler],
        facts: Facts,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        live_facts: Callable[[], Mapping[str, Json]] = dict,
    ) -> None:
        self.inventory = inventory
        self.handlers = handlers
        self.facts = facts
        # Facts that can change while the agent runs (a rotated WireGuard key):
        # read at every observe, never cached with the rest.
        self.live_facts = live_facts
        self.clock = clock
        self.sleep = sleep

    # ------------------------------------------------------------------ checks

    def check_request(self, request: Json) -> None:
        if not isinstance(request, dict):
            raise AgentError("request", "the request must be a JSON object")
        version = request.get("protocol_version")
        if version != PROTOCOL_VERSION:
            raise AgentError(
                "protocol",
                f"agent speaks protocol {PROTOCOL_VERSION}, the reconciler sent {version}: "
                "re-bootstrap the host (`reconcile hosts bootstrap`)",
            )
        host = request.get("host")
        if host is not None and host != self.facts.host:
            raise AgentError(
                "host", f"this is host {self.facts.host!r}, the request is for {host!r}"
            )

    # ----------------------------------------------------------------- observe

    def observe(self, request: Json) -> dict[str, Json]:
        self.check_request(request)
        state = self.inventory.read()
        resources = []
        for (kind, rid), entry in sorted(state.entries.items()):
            handler = self.handlers.get(kind)
            live = handler.observe(rid, entry.spec) if handler else H.Observed()
            resources.append(_resource(entry, live))
        for kind, handler in sorted(self.handlers.items()):
            owned = [rid for (k, rid) in state.entries if k == kind]
            for rid, live in handler.unmanaged(owned):
                resources.append(_resource(Entry(kind, rid, "", {}, owner="unmanaged"), live))
        f = self.facts
        return {
            "protocol_version": PROTOCOL_VERSION,
            "host": f.host,
            "reachable": True,
            "generation": state.generation,
            "facts": {
                "cpus": f.cpus,
                "memory_mb": f.memory_mb,
                "gpus": dict(f.gpus),
                "hypervisor": f.hypervisor,
                "agent_version": f.agent_version,
                "private_prefix": f.private_prefix,
                "kinds": sorted(self.handlers),
                **self.live_facts(),
            },
            "resources": resources,
            "inputs_digest": state.inputs_digest,
        }

    # ------------------------------------------------------------------- apply

    def apply(self, request: Json, sink: Sink) -> dict[str, Json]:
        self.check_request(request)
        actions = request.get("actions")
        if not isinstance(actions, list):
            raise AgentError("request", "actions must be a list")
        record = request.get("record_inputs")
        if record is not None and not (
            isinstance(record, dict)
            and isinstance(record.get("digest"), str)
            and (actions or type(record.get("generation")) is int)
        ):
            raise AgentError(
                "request", "record_inputs needs a digest (and a generation, without actions)"
            )
        results = [self._one(action, sink) for action in actions]
        generation = self.inventory.read().generation
        answer: dict[str, Json] = {
            "protocol_version": PROTOCOL_VERSION,
            "host": self.facts.host,
            "generation": generation,
            "results": results,
        }
        if record is not None:
            # With actions: kept at the generation they left, if every one succeeded
            # (the reconciler sends it with a host's last step: no extra round trip).
            ok = all(r["outcome"] in ("ok", "already") for r in results)
            answer["inputs_recorded"] = ok and self.inventory.record_inputs(
                record["digest"], generation if actions else record["generation"]
            )
        return {"result": answer}

    def _one(self, raw: Json, sink: Sink) -> dict[str, Json]:
        act = _Act.parse(raw)
        if act is None:
            aid = str(raw.get("id", "?")) if isinstance(raw, dict) else "?"
            return _result(aid, "failed", None, "malformed action")

        def emit(type_: str, message: str = "") -> None:
            sink({"event": {"action": act.id, "type": type_, "message": message}})

        handler = self.handlers.get(act.kind)
        if handler is None:
            return _result(act.id, "failed", None, f"this agent does not manage {act.kind!r}")
        result = self._change(act, handler, emit)
        if act.gate and result["outcome"] in ("ok", "already") and act.verb != "delete":
            return self._gate(act, handler, emit)
        return result

    @contextlib.contextmanager
    def _working_on(self, kind: str, rid: str) -> Iterator[None]:
        """The work lock of one resource (see the module docstring)."""
        locks = self.inventory.directory / "work"
        locks.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(f"{kind}\0{rid}".encode()).digest()
        stripe = int.from_bytes(digest[:4], "big") % WORK_STRIPES
        with open(locks / f"{stripe:03d}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _change(self, act: _Act, handler: H.Handler, emit: H.Emit) -> dict[str, Json]:
        with self._working_on(act.kind, act.id_of_resource):
            return self._change_locked(act, handler, emit)

    def _change_locked(self, act: _Act, handler: H.Handler, emit: H.Emit) -> dict[str, Json]:
        kind, rid, verb = act.kind, act.id_of_resource, act.verb
        with self.inventory.transaction() as state:
            entry = state.get(kind, rid)
            decision = _decide(entry, verb, act.etag, act.expect)
            if decision is not None:
                return _result(act.id, *decision)
            old_spec = dict(entry.spec) if entry else {}
            if entry is None:
                entry = Entry(kind, rid, act.expect or "", {}, status={})
            entry.status = {**entry.status, "pending": act.etag if verb != "delete" else "delete"}
            state.put(entry)
            state.void_inputs()  # an action changes the host: the recorded digest no longer holds
        try:
            if verb == "create" or (verb == "update" and not old_spec):
                handler.create(rid, act.spec, emit)
            elif verb == "update":
                handler.update(rid, old_spec, act.spec, emit)
            elif verb == "delete":
                handler.delete(rid, old_spec, emit)
            elif verb == "start":
                handler.start(rid, old_spec or act.spec, emit)
            else:
                raise ValueError(f"unknown verb {verb!r}")
        except Exception as exc:  # the handler's failure is this action's failure
            log.warning("action %s failed: %s", act.id, exc)
            if not entry.etag and verb == "create":
                # Nothing existed before: undo what the create left behind, so a
                # failed create leaves the host as it was.
                try:
                    handler.delete(rid, act.spec, emit)
                except Exception as cleanup:  # report the first failure, log the second
                    log.warning("cleaning up after %s failed: %s", act.id, cleanup)
            with self.inventory.transaction() as state:
                current = state.get(kind, rid)
                if current is not None and not current.etag and verb == "create":
                    state.remove(kind, rid)
                elif current is not None:
                    current.status = {k: v for k, v in current.status.items() if k != "pending"}
                    current.status["last_error"] = str(exc)
                    state.put(current)
            return _result(act.id, "failed", entry.etag or None, str(exc))
        with self.inventory.transaction() as state:
            new_etag: str | None = None
            if verb == "delete":
                state.remove(kind, rid)
            else:
                current = state.get(kind, rid) or entry
                current.etag = act.etag or current.etag
                if verb != "start":
                    current.spec = act.spec
                current.status = {
                    k: v for k, v in current.status.items() if k not in ("pending", "last_error")
                }
                state.put(current)
                new_etag = current.etag
            state.applied[act.id] = "ok"
        return _result(act.id, "ok", new_etag, "")

    def _gate(self, act: _Act, handler: H.Handler, emit: H.Emit) -> dict[str, Json]:
        entry = self.inventory.read().get(act.kind, act.id_of_resource)
        if entry is None:
            return _result(act.id, "failed", None, f"{act.kind} {act.id_of_resource} is gone")
        gate = act.gate or {}
        min_healthy = float(gate.get("min_healthy_s", 0))
        deadline = self.clock() + float(gate.get("deadline_s", 300))
        healthy_since: float | None = None
        emit("gate", f"waiting for health (min {min_healthy:g}s)")
        while True:
            now = self.clock()
            if handler.healthy(act.id_of_resource, entry.spec):
                if healthy_since is None:
                    healthy_since = now
                    emit("healthy", "")
                if now - healthy_since >= min_healthy:
                    return _result(act.id, "ok", entry.etag, "")
            else:
                healthy_since = None
            if now >= deadline:
                emit("unhealthy", "deadline passed")
                return _result(act.id, "gate_failed", entry.etag, "not healthy before the deadline")
            self.sleep(0.2)


@dataclass(frozen=True, slots=True)
class _Act:
    """One action of an apply request, as the agent reads it."""

    id: str
    kind: str
    id_of_resource: str
    verb: str
    spec: dict[str, Json]
    etag: str | None
    expect: str | None
    gate: dict[str, Json] | None

    @staticmethod
    def parse(raw: Json) -> _Act | None:
        if not isinstance(raw, dict):
            return None
        try:
            return _Act(
                id=str(raw["id"]),
                kind=str(raw["kind"]),
                id_of_resource=str(raw["resource_id"]),
                verb=str(raw["verb"]),
                spec=dict(raw.get("spec") or {}),
                etag=raw.get("etag"),
                expect=raw.get("expect"),
                gate=raw.get("gate") or None,
            )
        except (KeyError, TypeError, ValueError):
            return None


def _decide(
    entry: Entry | None, verb: str, target: str | None, expect: str | None
) -> tuple[str, str | None, str] | None:
    """``(outcome, etag, message)`` when the action must not run, else None.

    An entry with an empty etag is a create that failed half-way: it counts as
    absent, so the same create may run again (handlers' creates are idempotent).
    """
    current = (entry.etag or None) if entry else None
    expect = expect or None  # "" and null both mean: must not exist (or a failed leftover)
    pending = entry.status.get("pending") if entry else None
    if verb == "delete":
        if entry is None:
            return ("already", None, "already gone")
        if pending == "delete":
            return None  # an interrupted delete: finish it
    elif verb == "start":
        # A start leaves the spec (and so the etag) as it is: the etag never says it
        # was done, the machine's run state does, and the handler's start is a no-op
        # on a running machine. Checked first, or "already applied" would answer a
        # drift start of a stopped machine and its gate would wait out its deadline.
        if entry is None:
            return ("refused", None, "does not exist")
        if current != expect:
            return ("refused", current, f"expected {expect or 'absent'}, found {current}")
    elif entry is not None and current == target and pending is None:
        return ("already", current, "already applied")
    if pending is not None and pending != (target if verb != "delete" else "delete"):
        return ("refused", current, f"another change is in progress ({pending})")
    if pending is not None or verb == "start":
        return None  # the same action, interrupted: finish it (or a start: run it)
    if current != expect:
        want = expect or "absent"
        return ("refused", current, f"expected {want}, found {current or 'absent'}")
    return None


def _result(aid: str, outcome: str, etag: str | None, message: str) -> dict[str, Json]:
    return {"action": aid, "outcome": outcome, "etag": etag, "message": message}


def _resource(entry: Entry, live: H.Observed) -> dict[str, Json]:
    out: dict[str, Json] = {
        "kind": entry.kind,
        "id": entry.id,
        "owner": entry.owner,
        "etag": entry.etag,
        "spec": entry.spec,
        "status": {
            "state": live.state,
            # The supervisor records health in the inventory; a live answer wins.
            "health": live.health
            if live.health != "unknown"
            else str(entry.status.get("health", "unknown")),
            "runtime": dict(live.runtime),
        },
    }
    if live.actual is not None:
        out["actual"] = dict(live.actual)
    return out


def stream_apply(agent: Agent, request: Json, write: Callable[[str], None]) -> None:
    """Run an apply request, writing JSON lines: events as they happen, then the result."""

    def sink(event: dict[str, Json]) -> None:
        write(json.dumps(event) + "\n")

    write(json.dumps(agent.apply(request, sink)) + "\n")
