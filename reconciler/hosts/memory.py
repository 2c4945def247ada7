"""An in-process host: a test double of the HOST (not of the reconciler).

It keeps an inventory in memory and follows the agent protocol's rules
(preconditions, idempotence by target etag, health gates) so the apply engine
can be tested for real; it simulates pulls and boots with a delay, health
(passing, or failing for images marked unhealthy), unreachability and injected
failures. A :class:`MemoryFleet` can persist every host to one JSON file after
each change, so a reconciler killed with SIGKILL can be resumed by another
process against the same hosts. ``reconcile --hosts memory:PATH`` uses it.

Delays are simulated seconds multiplied by ``time_scale`` (0 = instant).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fleet import model
from fleet.errors import FleetError, HostUnreachable
from providers import resources
from reconciler.core import observed
from reconciler.core import plan as P
from reconciler.hosts import protocol

Kind = resources.Kind
STORE_FORMAT = 1


class Meter:
    """Counts actions in flight, overall and per host, and remembers the peaks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.per_host: dict[str, int] = {}
        self.peak_per_host: dict[str, int] = {}

    def enter(self, host: str) -> None:
        with self._lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
            n = self.per_host.get(host, 0) + 1
            self.per_host[host] = n
            self.peak_per_host[host] = max(self.peak_per_host.get(host, 0), n)

    def leave(self, host: str) -> None:
        with self._lock:
            self.current -= 1
            self.per_host[host] -= 1


@dataclasses.dataclass
class Behaviour:
    """Simulation knobs and injected failures of one host (mutable, for tests)."""

    boot_delay_s: float = 0.0
    pull_delay_s: float = 0.0
    time_scale: float = 0.0
    unreachable: str | None = None
    unhealthy_images: set[str] = dataclasses.field(default_factory=set)
    fail_actions: dict[str, str] = dataclasses.field(default_factory=dict)  # step id -> message
    # apps whose announcement this host does not export (it reaches no healthy machine)
    unannounced: set[str] = dataclasses.field(default_factory=set)


class MemoryHost:
    """One simulated host. Thread-safe; implements :class:`protocol.HostClient`."""

    def __init__(
        self,
        name: str,
        facts: observed.Facts,
        *,
        behaviour: Behaviour | None = None,
        meter: Meter | None = None,
        on_change: Any = None,
        lock: Any = None,
    ) -> None:
        self._name = name
        self.facts = facts
        self.behaviour = behaviour or Behaviour()
        self.meter = meter or Meter()
        self.generation = 0
        self.items: dict[tuple[Kind, str], observed.Resource] = {}
        self.log: list[list[str]] = []  # every mutation: [verb, kind, id, etag]
        # the reconciler's inputs digest and the generation it was recorded at (as the agent)
        self.inputs: tuple[str, int] = ("", -1)
        # Hosts of one MemoryFleet share one re-entrant lock: saving the fleet reads
        # every host while the changing one holds its lock (separate locks deadlock).
        self._lock = lock if lock is not None else threading.RLock()
        self._on_change = on_change

    @property
    def name(self) -> str:
        return self._name

    # -------------------------------------------------------------- observe

    def observe(self) -> observed.HostObservation:
        if self.behaviour.unreachable:
            raise HostUnreachable(self._name, self.behaviour.unreachable)
        with self._lock:
            return observed.HostObservation(
                host=self._name,
                reachable=True,
                generation=self.generation,
                facts=self.facts,
                resources=tuple(self.items[k] for k in sorted(self.items)),
                inputs=self.inputs[0] if self.inputs[1] == self.generation else "",
            )

    def put(self, resource: observed.Resource) -> None:
        """Place a resource directly (tests: drift, unmanaged machines, stale etags)."""
        with self._lock:
            self.items[(resource.kind, resource.id)] = resource
            self._changed(["put", resource.kind.value, resource.id, resource.etag])

    def record_inputs(self, digest: str, generation: int) -> bool:
        with self._lock:
            if generation != self.generation:
                return False
            self.inputs = (digest, generation)
            if self._on_change is not None:
                self._on_change()
            return True

    def _changed(self, entry: list[str]) -> None:
        self.generation += 1
        self.inputs = ("", -1)  # any change voids the digest, as on the agent
        self.log.append(entry)
        if self._on_change is not None:
            self._on_change()

    # -------------------------------------------------------------- apply

    def apply(
        self,
        actions: Sequence[protocol.Action],
        on_event: protocol.EventSink,
        record: str | None = None,
    ) -> list[protocol.Result]:
        if self.behaviour.unreachable:
            raise HostUnreachable(self._name, self.behaviour.unreachable)
        results = []
        for action in actions:
            self.meter.enter(self._name)
            try:
                result = self._one(action, on_event)
                results.append(dataclasses.replace(result, generation=self.generation))
            finally:
                self.meter.leave(self._name)
        if record is None:
            return results
        # kept at the generation the actions left, as the agent does
        kept = all(r.outcome.succeeded for r in results) and self.record_inputs(
            record, self.generation
        )
        return [dataclasses.replace(r, inputs_recorded=kept) for r in results]

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self.behaviour.time_scale > 0:
            time.sleep(seconds * self.behaviour.time_scale)

    def _one(self, a: protocol.Action, emit: protocol.EventSink) -> protocol.Result:
        key = (a.kind, a.resource_id)
        failure = self.behaviour.fail_actions.get(a.id)
        if failure:
            return protocol.Result(a.id, protocol.Outcome.FAILED, message=failure)
        with self._lock:
            current = self.items.get(key)
            have = current.etag if current else None
            done = self._already(a, current)
            if not done and have != a.expect:
                return protocol.Result(
                    a.id,
                    protocol.Outcome.REFUSED,
                    etag=have,
                    message=f"expected {a.expect or 'absent'}, found {have or 'absent'}",
                )
        if done:
            booting = (observed.RunState.CREATED, observed.RunState.STARTING)
            if current is not None and a.kind is Kind.MACHINE and current.status.state in booting:
                return self._finish_boot(a, key, emit, protocol.Outcome.ALREADY)
            if a.gate is not None and current is not None:
                return self._gate(a, current, emit, protocol.Outcome.ALREADY)
            return protocol.Result(a.id, protocol.Outcome.ALREADY, etag=a.etag)
        if a.verb is P.Verb.DELETE:
            emit(protocol.Event(a.id, "deleting"))
            self._sleep(0.1 if a.kind is Kind.MACHINE else 0.0)
            with self._lock:
                self.items.pop(key, None)
                self._changed(["delete", a.kind.value, a.resource_id, have or ""])
            return protocol.Result(a.id, protocol.Outcome.OK)
        if a.kind is Kind.IMAGE:
            emit(protocol.Event(a.id, "pulling", str((a.spec or {}).get("ref"))))
            self._sleep(self.behaviour.pull_delay_s)
        spec = a.spec if a.spec is not None else (current.spec if current else {})
        etag = a.etag or (current.etag if current else "")
        if a.kind is Kind.MACHINE:
            return self._boot(a, key=key, spec=spec, etag=etag, current=current, emit=emit)
        status = observed.Status()
        if a.kind is Kind.ANNOUNCEMENT:  # exported at once, as an agent's after the hold-down
            exported = a.resource_id not in self.behaviour.unannounced
            status = observed.Status(
                health=observed.Health.PASSING if exported else observed.Health.CRITICAL
            )
        with self._lock:
            self.items[key] = observed.Resource(
                a.kind, a.resource_id, observed.OWNER_FLEET, etag, spec, status, actual=spec
            )
            self._changed([a.verb.value, a.kind.value, a.resource_id, etag])
        return protocol.Result(a.id, protocol.Outcome.OK, etag=etag)

    def _already(self, a: protocol.Action, current: observed.Resource | None) -> bool:
        if a.verb is P.Verb.DELETE:
            return current is None
        if current is None or current.etag != a.etag:
            return False
        if a.verb is P.Verb.START:
            return current.status.state is observed.RunState.RUNNING
        return True

    def _boot(
        self,
        a: protocol.Action,
        *,
        key: tuple[Kind, str],
        spec: Mapping[str, Any],
        etag: str,
        current: observed.Resource | None,
        emit: protocol.EventSink,
    ) -> protocol.Result:
        if a.verb is P.Verb.UPDATE and current is not None:
            with self._lock:
                self.items[key] = dataclasses.replace(current, spec=spec, etag=etag)
                self._changed(["update", a.kind.value, a.resource_id, etag])
            return protocol.Result(a.id, protocol.Outcome.OK, etag=etag)
        emit(protocol.Event(a.id, "booting"))
        with self._lock:
            self.items[key] = observed.Resource(
                a.kind,
                a.resource_id,
                observed.OWNER_FLEET,
                etag,
                spec,
                observed.Status(observed.RunState.STARTING, observed.Health.UNKNOWN),
            )
            self._changed([a.verb.value, a.kind.value, a.resource_id, etag])
        return self._finish_boot(a, key, emit, protocol.Outcome.OK)

    def _finish_boot(
        self,
        a: protocol.Action,
        key: tuple[Kind, str],
        emit: protocol.EventSink,
        success: protocol.Outcome,
    ) -> protocol.Result:
        """Boot (or keep booting, as the supervisor would after a crash) and gate."""
        self._sleep(self.behaviour.boot_delay_s)
        with self._lock:
            current = self.items[key]
            healthy = current.spec.get("image") not in self.behaviour.unhealthy_images
            health = observed.Health.PASSING if healthy else observed.Health.CRITICAL
            booted = dataclasses.replace(
                current,
                status=observed.Status(
                    observed.RunState.RUNNING, health, {"pid": 1000 + self.generation}
                ),
            )
            self.items[key] = booted
            self._changed(["running", a.kind.value, a.resource_id, booted.etag])
        emit(protocol.Event(a.id, "running"))
        return self._gate(a, booted, emit, success)

    def _gate(
        self,
        a: protocol.Action,
        r: observed.Resource,
        emit: protocol.EventSink,
        success: protocol.Outcome,
    ) -> protocol.Result:
        if a.gate is None:
            return protocol.Result(a.id, success, etag=r.etag)
        if r.status.health is not observed.Health.PASSING:
            self._sleep(a.gate.deadline_s)
            emit(protocol.Event(a.id, "unhealthy", "health checks failing"))
            return protocol.Result(
                a.id,
                protocol.Outcome.GATE_FAILED,
                etag=r.etag,
                message=f"not healthy within {a.gate.deadline_s:g}s",
            )
        self._sleep(a.gate.min_healthy_s)
        emit(protocol.Event(a.id, "healthy"))
        return protocol.Result(a.id, success, etag=r.etag)

    # -------------------------------------------------------------- persistence

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            b = self.behaviour
            return {
                "generation": self.generation,
                "facts": observed.host_to_json(
                    observed.HostObservation(self._name, True, facts=self.facts)
                )["facts"],
                "resources": [observed.resource_to_json(self.items[k]) for k in sorted(self.items)],
                "log": self.log,
                "inputs": list(self.inputs),
                "behaviour": {
                    "boot_delay_s": b.boot_delay_s,
                    "pull_delay_s": b.pull_delay_s,
                    "time_scale": b.time_scale,
                    "unreachable": b.unreachable,
                    "unhealthy_images": sorted(b.unhealthy_images),
                    "fail_actions": b.fail_actions,
                    "unannounced": sorted(b.unannounced),
                },
            }


class MemoryFleet:
    """A set of in-process hosts, optionally persisted to one JSON file after every change."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.hosts: dict[str, MemoryHost] = {}
        self.meter = Meter()
        self._lock = threading.RLock()
        if self.path is not None and self.path.exists():
            self._load()

    def host(self, name: str, facts: observed.Facts | None = None) -> MemoryHost:
        """The host called ``name``, created empty (with ``facts``) if new."""
        if name not in self.hosts:
            self.hosts[name] = MemoryHost(
                name,
                facts or observed.Facts(),
                meter=self.meter,
                on_change=self.save,
                lock=self._lock,
            )
        return self.hosts[name]

    def client(self, host: model.Host) -> MemoryHost:
        """The HostClient factory for fleet Host documents."""
        return self.host(host.name, facts_of(host))

    def add_fleet(self, world: model.DesiredWorld) -> None:
        """Create an empty host for every Host of ``world`` (with its private prefix)."""
        for name, host in sorted(world.fleet.hosts.items()):
            h = self.host(name, facts_of(host, str(world.host_prefixes[name])))
            if h.facts.private_prefix is None:
                h.facts = facts_of(host, str(world.host_prefixes[name]))
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            data = {
                "format": STORE_FORMAT,
                "hosts": {n: h.to_json() for n, h in sorted(self.hosts.items())},
            }
            tmp = self.path.with_suffix(self.path.suffix + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, sort_keys=True))
            os.replace(tmp, self.path)

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FleetError(f"{self.path}: cannot read in-process hosts: {exc}") from exc
        for name, raw in data.get("hosts", {}).items():
            obs = observed.host_from_json(
                {
                    "protocol_version": observed.PROTOCOL_VERSION,
                    "host": name,
                    "reachable": True,
                    "generation": raw["generation"],
                    "facts": raw["facts"],
                    "resources": raw["resources"],
                }
            )
            b = raw.get("behaviour", {})
            h = MemoryHost(
                name,
                obs.facts,
                behaviour=Behaviour(
                    boot_delay_s=b.get("boot_delay_s", 0.0),
                    pull_delay_s=b.get("pull_delay_s", 0.0),
                    time_scale=b.get("time_scale", 0.0),
                    unreachable=b.get("unreachable"),
                    unhealthy_images=set(b.get("unhealthy_images", [])),
                    fail_actions=dict(b.get("fail_actions", {})),
                    unannounced=set(b.get("unannounced", [])),
                ),
                meter=self.meter,
                on_change=self.save,
                lock=self._lock,
            )
            h.generation = obs.generation
            h.items = {(r.kind, r.id): r for r in obs.resources}
            h.log = [list(e) for e in raw.get("log", [])]
            digest, at = raw.get("inputs", ["", -1])
            h.inputs = (str(digest), int(at))
            self.hosts[name] = h

    def observe_all(self, names: Iterable[str] | None = None) -> observed.Snapshot:
        """A snapshot of the given hosts (all by default), unreachable ones marked."""
        out = {}
        for name in sorted(names if names is not None else self.hosts):
            try:
                out[name] = self.host(name).observe()
            except HostUnreachable as exc:
                out[name] = observed.HostObservation.unreachable(name, exc.message)
        return observed.Snapshot(MappingProxyType(out), taken_at="1970-01-01T00:00:00Z")


def facts_of(host: model.Host, prefix: str | None = None) -> observed.Facts:
    gpus: dict[str, int] = {}
    for g in host.capacity.gpus:
        gpus[g.model] = gpus.get(g.model, 0) + g.count
    return observed.Facts(
        cpus=host.capacity.cpus,
        memory_mb=host.capacity.memory_mb,
        gpus=MappingProxyType(gpus),
        hypervisor=host.hypervisor.value,
        agent_version="memory",
        private_prefix=prefix,
    )
