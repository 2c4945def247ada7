"""Placement: which host each desired machine slot runs on. Pure and deterministic.

Rules, in order:

1. *Stickiness*: a slot already running on an eligible host stays there
   (eligible = same region, not cordoned, host labels match, the machine's
   new size still fits). Sticky machines are reserved first.
2. *Unknown*: a slot seen nowhere while a host of its region could not be
   observed may be running there; it is deferred, never guessed.
3. New slots go to the eligible, observed host with the fewest machines of the
   same app (spread), then the lowest memory use, then by name.

Capacity: memory and GPUs (by model) never overcommit; ``performance`` CPUs
count in full, ``shared`` CPUs count ``1 / network.shared_cpu_overcommit``.
Unmanaged machines on a host use capacity too. Cordoned hosts take nothing new.
An unsatisfiable placement is a :class:`~fleet.errors.PlanError` naming app,
region and the shortfall ("region ams: app infer needs 2 x a100, 0 free").

Cost: O(slots + hosts) for a no-op; new slots use a lazy heap per
(app, region), O(log hosts) each.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fleet import model
from fleet.errors import PlanError


@dataclass(frozen=True, slots=True)
class Placement:
    hosts: Mapping[str, str]  # slot id -> host
    moved: Mapping[str, str]  # slot id -> why it left its old host
    deferred: Mapping[str, str]  # slot id -> why its placement is unknown


@dataclass(slots=True)
class _Free:
    cpus: float
    memory_mb: int
    gpus: dict[str, int] = field(default_factory=dict)
    memory_total: int = 1
    per_app: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def fits(self, need: _Need) -> bool:
        if need.cpus > self.cpus + 1e-9 or need.memory_mb > self.memory_mb:
            return False
        return need.gpu_model is None or self.gpus.get(need.gpu_model, 0) >= need.gpu_count

    def take(self, need: _Need, app: str) -> None:
        self.cpus -= need.cpus
        self.memory_mb -= need.memory_mb
        if need.gpu_model is not None:
            self.gpus[need.gpu_model] = self.gpus.get(need.gpu_model, 0) - need.gpu_count
        self.per_app[app] += 1

    def used(self) -> float:
        return 1.0 - self.memory_mb / self.memory_total


@dataclass(frozen=True, slots=True)
class _Need:
    cpus: float
    memory_mb: int
    gpu_model: str | None
    gpu_count: int


def _need(cpus: int, memory_mb: int, cpu_kind: str, gpus: Any, overcommit: float) -> _Need:
    cost = float(cpus) if cpu_kind == model.CpuKind.PERFORMANCE else cpus / overcommit
    if gpus:
        return _Need(cost, memory_mb, str(gpus["model"]), int(gpus["count"]))
    return _Need(cost, memory_mb, None, 0)


def app_need(app: model.App, overcommit: float) -> _Need:
    vm = app.vm
    gpus = {"model": vm.gpus.model, "count": vm.gpus.count} if vm.gpus else None
    return _need(vm.cpus, vm.memory_mb, vm.cpu_kind.value, gpus, overcommit)


def spec_need(spec: Mapping[str, Any], overcommit: float) -> _Need | None:
    """What an observed machine spec uses (for unmanaged machines), if it says."""
    vm = spec.get("vm")
    if not isinstance(vm, Mapping):
        return None
    try:
        return _need(
            int(vm.get("cpus", 0)),
            int(vm.get("memory_mb", 0)),
            str(vm.get("cpu_kind", "shared")),
            vm.get("gpus"),
            overcommit,
        )
    except (TypeError, ValueError):
        return None


def ineligible(host: model.Host, app: model.App, region: str) -> str:
    """Why ``host`` may not run a machine of ``app`` in ``region`` ('' if it may)."""
    if host.region != region:
        return f"host {host.name} is not in region {region}"
    if host.cordoned:
        return f"host {host.name} is cordoned"
    for key, value in app.placement.host_labels.items():
        if host.labels.get(key) != value:
            return f"host {host.name} lacks label {key}={value}"
    return ""


def place(
    world: model.DesiredWorld,
    running: Mapping[str, Sequence[str]],
    unmanaged_usage: Mapping[str, Iterable[Mapping[str, Any]]],
    unreachable: Iterable[str],
) -> Placement:
    """Place every slot of ``world``.

    ``running`` maps slot id to the observed hosts where an instance of it runs;
    ``unmanaged_usage`` maps host to the specs of unmanaged machines on it;
    ``unreachable`` names hosts that could not be observed.
    """
    fleet = world.fleet
    over = fleet.network.shared_cpu_overcommit
    down = set(unreachable)
    free: dict[str, _Free] = {}
    for host in fleet.hosts.values():
        cap = host.capacity
        gpus: dict[str, int] = defaultdict(int)
        for g in cap.gpus:
            gpus[g.model] += g.count
        free[host.name] = _Free(float(cap.cpus), cap.memory_mb, dict(gpus), max(cap.memory_mb, 1))
    for host_name, specs in unmanaged_usage.items():
        if host_name in free:
            for spec in specs:
                need = spec_need(spec, over)
                if need is not None:
                    free[host_name].take(need, "")
    region_down: set[str] = {fleet.hosts[h].region for h in down if h in fleet.hosts}

    hosts: dict[str, str] = {}
    moved: dict[str, str] = {}
    deferred: dict[str, str] = {}
    pending: list[model.MachineSlot] = []
    needs = {name: app_need(app, over) for name, app in fleet.apps.items()}

    fleet_hosts = fleet.hosts
    for slot in world.slots:
        slot_id = slot.id  # a property that formats a string: once per slot
        app = fleet.apps[slot.app]
        need = needs[slot.app]
        seen = running.get(slot_id, ())
        if len(seen) == 1:  # the common case: one instance (no sort, no generator)
            where = seen if seen[0] in fleet_hosts else ()
        else:
            where = sorted(h for h in seen if h in fleet_hosts)
        kept = False
        reasons = []
        for host_name in where:
            h = fleet_hosts[host_name]
            if h.region == slot.region and not h.cordoned and not app.placement.host_labels:
                why = ""  # what ineligible() says here, without a call per slot
            else:
                why = ineligible(h, app, slot.region)
            if not why and not free[host_name].fits(need):
                why = f"host {host_name} has no room for the new size"
            if why:
                reasons.append(why)
                continue
            free[host_name].take(need, slot.app)
            hosts[slot_id] = host_name
            kept = True
            break
        if kept:
            continue
        if reasons:
            moved[slot_id] = "; ".join(reasons)
        elif slot.region in region_down:
            names = sorted(
                h for h in down if fleet.hosts.get(h) and fleet.hosts[h].region == slot.region
            )
            deferred[slot_id] = f"may run on unobserved host {', '.join(names)}"
            continue
        pending.append(slot)

    by_region: dict[str, list[model.Host]] = defaultdict(list)
    for host in sorted(fleet.hosts.values(), key=lambda h: h.name):
        if host.name not in down:
            by_region[host.region].append(host)
    heaps: dict[tuple[str, str], list[tuple[int, float, str]]] = {}
    short: dict[tuple[str, str], int] = defaultdict(int)
    for slot in pending:
        app = fleet.apps[slot.app]
        need = needs[slot.app]
        heap = heaps.get((slot.app, slot.region))
        if heap is None:
            heap = [
                (free[h.name].per_app[slot.app], free[h.name].used(), h.name)
                for h in by_region.get(slot.region, [])
                if not ineligible(h, app, slot.region)
            ]
            heapq.heapify(heap)
            heaps[(slot.app, slot.region)] = heap
        chosen = None
        while heap:
            count, used, name = heap[0]
            f = free[name]
            current = (f.per_app[slot.app], f.used(), name)
            if current != (count, used, name):
                heapq.heapreplace(heap, current)
                continue
            if not f.fits(need):
                heapq.heappop(heap)  # capacity only shrinks during placement
                continue
            chosen = name
            break
        if chosen is None:
            short[(slot.app, slot.region)] += 1
            continue
        free[chosen].take(need, slot.app)
        hosts[slot.id] = chosen
    if short:
        raise _shortfall(world, short, free, by_region, needs)
    return Placement(MappingProxyType(hosts), MappingProxyType(moved), MappingProxyType(deferred))


def _shortfall(
    world: model.DesiredWorld,
    short: Mapping[tuple[str, str], int],
    free: Mapping[str, _Free],
    by_region: Mapping[str, list[model.Host]],
    needs: Mapping[str, _Need],
) -> PlanError:
    lines = []
    for (app_name, region), missing in sorted(short.items()):
        app = world.fleet.apps[app_name]
        need = needs[app_name]
        eligible = [h for h in by_region.get(region, []) if not ineligible(h, app, region)]
        if need.gpu_model is not None:
            have = sum(max(free[h.name].gpus.get(need.gpu_model, 0), 0) for h in eligible)
            detail = f"needs {missing * need.gpu_count} x {need.gpu_model}, {have} free"
        else:
            cpus = sum(max(free[h.name].cpus, 0.0) for h in eligible)
            mem = sum(max(free[h.name].memory_mb, 0) for h in eligible)
            detail = (
                f"needs {missing} more machine(s) of {app.vm.cpus} {app.vm.cpu_kind.value} cpus "
                f"and {app.vm.memory_mb} MiB, {len(eligible)} eligible host(s) have "
                f"{cpus:g} cpus and {mem} MiB free"
            )
        lines.append(f"region {region}: app {app_name} {detail}")
    return _PlacementError(lines)


class _PlacementError(PlanError):
    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        super().__init__("cannot place machines: " + "; ".join(lines))

    def lines(self) -> list[str]:
        return ["cannot place machines: " + line for line in self._lines]
