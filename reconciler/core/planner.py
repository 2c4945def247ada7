"""Compute a plan: observed snapshot + desired fleet -> changes, no-ops, steps. Pure.

The three-way diff happens here, per resource:

* desired vs last-applied (the spec the host reports with its etag) is a
  *change*; equal etags short-circuit, deepdiff runs only on specs that differ;
* observed vs last-applied (a machine's run state, a route's live table) is
  *drift*, handled by the kind's drift policy (correct, warn, ignore);
* resources not owned by the fleet are *unmanaged*: listed, never touched.

Then :mod:`reconciler.core.rollout` orders the steps, :mod:`reconciler.core.select`
applies ``--target`` / ``--exclude`` and :mod:`reconciler.core.guards` refuses
dangerous plans. Every resource that needs nothing gets a no-op with its reason.
"""

from __future__ import annotations

import ipaddress
import operator
import socket
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet import compile as fleet_compile
from fleet import model
from providers import resources
from reconciler.core import (
    address,
    desired,
    diff,
    drain,
    guards,
    hostnet,
    inputs,
    machines,
    observed,
    rollout,
    schedule,
    select,
    skip,
)
from reconciler.core import plan as P

Kind = resources.Kind
_DEFAULT_OPTIONS = P.Options()
_by_address = operator.attrgetter("address")


@dataclass(slots=True)
class _Index:
    """The snapshot, indexed once: O(resources), and O(1) per host a plan may skip."""

    reachable: set[str] = field(default_factory=set)
    unreachable: dict[str, str] = field(default_factory=dict)
    machines: dict[str, list[tuple[str, observed.Resource]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    others: dict[tuple[str, Kind], dict[str, observed.Resource]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    unmanaged: list[tuple[str, observed.Resource]] = field(default_factory=list)
    prefixes: dict[str, ipaddress.IPv6Network] = field(default_factory=dict)
    kinds: dict[str, frozenset[str]] = field(default_factory=dict)  # empty: _LEGACY_KINDS
    anycast: dict[str, model.AppAddresses] = field(default_factory=dict)
    announced: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # app -> hosts
    keys: dict[str, str] = field(default_factory=dict)  # WireGuard public keys reported
    warnings: list[P.Warning] = field(default_factory=list)
    # every managed machine's slot -> the hosts reporting it, in host order (placement)
    seen: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    # hosts that may be skipped (skip.candidate), not indexed resource by resource yet
    candidates: dict[str, observed.HostObservation] = field(default_factory=dict)
    summaries: dict[str, observed.Summary] = field(default_factory=dict)
    wanted_ids: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # skipped hosts
    inputs: dict[str, str] = field(default_factory=dict)  # digests reported ("": none kept)


def _index(fleet: model.Fleet, snap: observed.Snapshot) -> _Index:
    idx = _Index()
    for name in sorted(fleet.hosts):
        obs = snap.hosts.get(name)
        if obs is None:
            idx.unreachable[name] = "not in the observed snapshot"
            continue
        if not obs.reachable:
            idx.unreachable[name] = obs.error or "unreachable"
            continue
        idx.reachable.add(name)
        idx.kinds[name] = frozenset(obs.facts.kinds)
        if obs.facts.wireguard_public_key:
            idx.keys[name] = obs.facts.wireguard_public_key
        if obs.facts.private_prefix:
            try:
                idx.prefixes[name] = _v6_network(obs.facts.private_prefix)
            except ValueError:
                idx.warnings.append(P.Warning(f"host.{name}", "reports an invalid private prefix"))
        if obs.inputs is not None:
            idx.inputs[name] = obs.inputs
        summary = skip.candidate(obs)
        if summary is None:
            _index_resources(idx, name, observed.decoded(obs))
            continue
        idx.candidates[name] = obs
        idx.summaries[name] = summary
        for slot_id, _ in summary.machines:
            idx.seen[slot_id].append(name)
        for app, prefixes in summary.anycast:  # as _index_resources notes announcements
            if app not in idx.anycast:
                idx.anycast[app] = _anycast_of(prefixes)
            idx.announced[app].add(name)
    for name in sorted(snap.hosts):
        if name not in fleet.hosts:
            idx.warnings.append(
                P.Warning(f"host.{name}", "observed host is not in the fleet; left alone")
            )
    return idx


def _packed(text: str, family: int, bits: int) -> tuple[int, int] | None:
    """``address/length`` as (address, length) integers when the C library parses the
    address in ``family`` and the length is plain and at most ``bits``; else None."""
    address, slash, length = text.partition("/")
    if not (slash and length.isdigit() and len(length) <= 3 and int(length) <= bits):
        return None
    try:
        return int.from_bytes(socket.inet_pton(family, address), "big"), int(length)
    except OSError:
        return None


def _interface_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ipaddress.ip_interface(text).ip``, the address parsed by the C library when it
    has a plain prefix length (200 apps' announcements are 400 of them)."""
    for family, bits, cls in _FAMILIES:
        parsed = _packed(text, family, bits)
        if parsed is not None:
            return cls(parsed[0])
    return ipaddress.ip_interface(text).ip


_FAMILIES: tuple[tuple[int, int, type[ipaddress.IPv4Address | ipaddress.IPv6Address]], ...] = (
    (socket.AF_INET, 32, ipaddress.IPv4Address),
    (socket.AF_INET6, 128, ipaddress.IPv6Address),
)


def _v6_network(text: str) -> ipaddress.IPv6Network:
    """``ipaddress.IPv6Network(text)`` (strict), the address parsed by the C library
    (a snapshot of 1,000 hosts has 1,000 prefixes); anything unusual the slow way."""
    parsed = _packed(text, socket.AF_INET6, 128)
    return ipaddress.IPv6Network(parsed if parsed is not None else text)


def _index_resources(
    idx: _Index,
    name: str,
    obs: observed.HostObservation,
    *,
    machines: bool = True,
    seen: bool = True,
) -> None:
    """Index a host's resources one by one (``machines``: its machines too; ``seen``:
    their slots too, unless its summary gave them already)."""
    note_slots = seen
    machines_idx, others, slots_seen = idx.machines, idx.others, idx.seen
    fleet_owner, machine_kind, machine_slot = (
        observed.OWNER_FLEET,
        Kind.MACHINE,
        address.machine_slot,
    )
    by_kind: dict[Kind, dict[str, observed.Resource]] = {}  # others[(name, kind)]
    for r in obs.resources:
        kind = r.kind
        if r.owner != fleet_owner:  # not r.managed: a property call per resource
            idx.unmanaged.append((name, r))
        elif kind is machine_kind:
            if machines:
                app, slot = machine_slot(r.id, r.spec)
                slot_id = f"{app}/{slot}"
                machines_idx[slot_id].append((name, r))
                if note_slots:
                    slots_seen[slot_id].append(name)
        else:
            of_kind = by_kind.get(kind)
            if of_kind is None:
                of_kind = by_kind[kind] = others[(name, kind)]
            of_kind[r.id] = r
            if kind is Kind.ANNOUNCEMENT:
                announced = r.spec.get("app")
                if not (type(announced) is str and announced in idx.anycast):  # once per app
                    _note_anycast(idx, r)
                if r.spec.get("prefixes"):
                    idx.announced[str(announced)].add(name)


def _note_anycast(idx: _Index, r: observed.Resource) -> None:
    app = str(r.spec.get("app", ""))
    if not app or app in idx.anycast:
        return
    idx.anycast[app] = _anycast_of(r.spec.get("prefixes", []))


def _anycast_of(prefixes: Any) -> model.AppAddresses:
    v4 = v6 = None
    for prefix in prefixes:
        try:
            addr = _interface_address(prefix)
        except ValueError:
            continue
        if isinstance(addr, ipaddress.IPv4Address):
            v4 = addr
        else:
            v6 = addr
    return model.AppAddresses(v4, v6)


def make(
    fleet: model.Fleet,
    snap: observed.Snapshot,
    *,
    origin: P.FleetRef,
    options: P.Options = _DEFAULT_OPTIONS,
    created_at: str = "",
) -> P.Plan:
    """The plan that takes the observed hosts to the desired fleet."""
    idx = _index(fleet, snap)
    world = fleet_compile.compile_world(
        fleet, previous_prefixes=idx.prefixes, previous_anycast=idx.anycast
    )
    running = {slot: list(hosts) for slot, hosts in idx.seen.items()}
    usage: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for host, r in idx.unmanaged:
        if r.kind is Kind.MACHINE:
            usage[host].append(r.spec)
    placement = schedule.place(world, running, usage, idx.unreachable)

    acc = machines.Acc(warnings=list(idx.warnings))
    for host, error in sorted(idx.unreachable.items()):
        acc.deferred.append(P.Deferred(f"host.{host}", host, f"host not observed: {error}"))
    parts = {name: desired.AppParts(app, world.anycast[name]) for name, app in fleet.apps.items()}
    keys, digests, skipped = _skips(world, idx, placement, parts)
    on_host = machines.plan_machines(world, idx.machines, placement, acc, parts, skipped=skipped)
    edges = fleet_compile.edge_hosts(fleet)
    if any(drain.in_place(w.change) for w in acc.works):
        # drain.add reads the routes edges hold: a skipped edge's are indexed after all
        for host in sorted(edges & skipped.keys()):
            _index_resources(idx, host, observed.decoded(idx.candidates[host]), machines=False)
            del skipped[host]
    _host_resources(world, idx, on_host, acc, parts, keys=keys, skipped=skipped)
    drain.add(acc, fleet, idx.others)  # machines replaced in place leave the edges first

    ordered, rollouts = rollout.order(acc.works, fleet)
    chosen, excluded = select.select(ordered, options.targets, options.excludes)
    changes = tuple(w.change for w in chosen)
    guards.check(changes, _machines_by_region(world, idx), idx.announced, options)
    steps = tuple(s for w in chosen for s in w.steps)
    return P.Plan(
        fleet=origin,
        observed_at=snap.taken_at,
        generations=snap.generations(),
        options=options,
        changes=_sorted_changes(changes),
        steps=steps,
        noops=tuple(sorted(acc.noops, key=_by_address)),  # 40,000 in a no-op plan
        unmanaged=tuple(
            P.Unmanaged(address.host_resource(h, r.kind, r.id), h, r.kind, r.id, r.owner)
            for h, r in sorted(idx.unmanaged, key=lambda x: (x[0], x[1].kind, x[1].id))
        ),
        deferred=tuple(sorted(acc.deferred, key=lambda d: d.address)),
        warnings=tuple(sorted(acc.warnings, key=lambda w: (w.address, w.message))),
        rollouts=tuple(r for r in rollouts if any(c.app == r.app for c in changes)),
        excluded=tuple(sorted(w.change.address for w in excluded)),
        created_at=created_at,
        inputs={} if options.targets or options.excludes else digests,
    )


_ORDER = {
    P.Action.DESTROY: 0,
    P.Action.REPLACE: 1,
    P.Action.UPDATE: 2,
    P.Action.START: 3,
    P.Action.CREATE: 4,
}


def _sorted_changes(changes: tuple[P.Change, ...]) -> tuple[P.Change, ...]:
    return tuple(sorted(changes, key=lambda c: (c.address, _ORDER[c.action], c.from_host or "")))


def _machines_by_region(world: model.DesiredWorld, idx: _Index) -> dict[str, int]:
    """Managed machines observed per region (the base of the destroy-share guard)."""
    out: dict[str, int] = defaultdict(int)
    for hosts in idx.seen.values():
        for host in hosts:
            h = world.fleet.hosts.get(host)
            if h is not None:
                out[h.region] += 1
    return out


# ------------------------------------------------------------------ hosts skipped wholesale


def _skips(
    world: model.DesiredWorld,
    idx: _Index,
    placement: schedule.Placement,
    parts: Mapping[str, desired.AppParts],
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, str]]]:
    """The mesh keys, the inputs digests of the hosts that keep one, and the hosts
    skipped (:mod:`reconciler.core.skip`): host -> slot -> etag.

    Every candidate not skipped is indexed resource by resource here.
    """
    fleet = world.fleet
    wireguard = Kind.WIREGUARD.value
    keys = hostnet.public_keys(world, idx.keys, ())
    if len(keys) < len(fleet.hosts):
        if any(kind == wireguard for s in idx.summaries.values() for kind, _ in s.others):
            # Some key may come from the peer lists hosts were last given: read every one.
            for host in sorted(idx.candidates):
                obs = idx.candidates.pop(host)
                _index_resources(idx, host, observed.decoded(obs), seen=False)
        keys = hostnet.public_keys(world, idx.keys, _applied_wireguard(idx))
    if not idx.inputs:
        return keys, {}, {}
    slots_on: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    ids_on: dict[str, set[str]] = defaultdict(set)
    deferred = placement.deferred
    for slot_id, placed_on in placement.hosts.items():  # ids "app/key" (MachineSlot.id)
        if slot_id not in deferred:
            app, _, key = slot_id.partition("/")
            slots_on[placed_on][app].append(key)
            ids_on[placed_on].add(slot_id)
    edges = fleet_compile.edge_hosts(fleet)
    digests = inputs.host_digests(world, keys, slots_on, idx.inputs, edges)
    skipped: dict[str, dict[str, str]] = {}
    seen_twice = {slot for slot, hosts in idx.seen.items() if len(hosts) > 1}
    announced = _announced(fleet, parts)
    for host, obs in sorted(idx.candidates.items()):
        summary = idx.summaries[host]
        mine = slots_on.get(host, {})
        slot_ids = ids_on.get(host, set())
        etags = dict(summary.machines)
        supported = idx.kinds.get(host) or _LEGACY_KINDS
        if (
            obs.inputs == digests[host]
            and len(etags) == len(summary.machines) == len(slot_ids)
            and etags.keys() == slot_ids
            and slot_ids.isdisjoint(seen_twice)
            and _holds(
                summary, wanted := _wanted_ids(world, host, mine, announced, edges), supported
            )
        ):
            skipped[host] = etags
            idx.wanted_ids[host] = wanted
        else:
            _index_resources(idx, host, observed.decoded(obs), seen=False)
    return keys, digests, skipped


def _holds(
    summary: observed.Summary, wanted: list[tuple[str, str]], supported: frozenset[str]
) -> bool:
    """Whether the host holds exactly the wanted host-level resources (ids; etags by digest)."""
    ids = wanted
    if not supported >= _EVERY_KIND:
        ids = [(k, i) for k, i in wanted if k in supported]
    return len(ids) == len(summary.others) and set(ids) == set(summary.others)


def _applied_wireguard(idx: _Index) -> Iterator[Mapping[str, Any]]:
    """Every applied ``wireguard`` spec, in host order (read only when a key is missing)."""
    for host, kind in sorted(idx.others):
        if kind is Kind.WIREGUARD:
            yield from (r.spec for r in idx.others[(host, kind)].values())


def _announced(fleet: model.Fleet, parts: Mapping[str, desired.AppParts]) -> list[str]:
    """The apps every edge routes and (unless cordoned) announces, in name order."""
    return [a for a in sorted(fleet.apps) if parts[a].public and parts[a].announces]


def _wanted_ids(
    world: model.DesiredWorld,
    host: str,
    apps: Mapping[str, object],
    announced: list[str],
    edges: frozenset[str],
) -> list[tuple[str, str]]:
    """(kind, id) of every host-level resource ``_host_resources`` wants on ``host``, the
    kind as text (as summaries and addresses hold it), in address order (the no-ops made
    from them come nearly sorted); ``announced``: :func:`_announced`."""
    fleet = world.fleet
    out: list[tuple[str, str]] = []
    edge = host in edges
    if edge and not fleet.hosts[host].cordoned:
        out += [("announcement", a) for a in announced]
    if edge and hostnet.bird(world, host) is not None:
        out.append(("bgp", hostnet.BIRD_ID))
    out += [("image", ref) for ref in sorted({fleet.apps[a].image for a in apps})]
    if edge:
        out += [("route", a) for a in announced]
    out.append(("wireguard", hostnet.MESH_ID))
    return out


# ------------------------------------------------------------------ images, routes, announcements


def _host_resources(
    world: model.DesiredWorld,
    idx: _Index,
    on_host: Mapping[str, Mapping[str, list[str]]],
    acc: machines.Acc,
    parts: Mapping[str, desired.AppParts],
    *,
    keys: Mapping[str, str],
    skipped: Mapping[str, object],
) -> None:
    fleet = world.fleet
    _warn_keyless(idx, acc, keys)
    mesh: hostnet.MeshParts | None = None  # made when a host is not skipped
    routes: desired.RouteSpecs | None = None  # made when an edge is not skipped
    # Every edge host (fleet_compile.edge_hosts: all hosts unless some are marked)
    # routes every public app with anycast addresses, cordoned ones too: its
    # machines may all be elsewhere. Non-cordoned edges announce them; whether
    # they do right now is the host's health gate's call.
    announced = [parts[a] for a in _announced(fleet, parts)]
    edges = fleet_compile.edge_hosts(fleet)
    for host in sorted(idx.reachable):
        supported = idx.kinds.get(host) or _LEGACY_KINDS
        if host in skipped:  # every etag matches: the full path's no-ops, from the ids
            wanted_ids = idx.wanted_ids[host]  # as _skips compared them
            if not supported >= _EVERY_KIND:
                _unsupported(acc, host, [Kind(k) for k, _ in wanted_ids if k not in supported])
                wanted_ids = [(k, i) for k, i in wanted_ids if k in supported]
            at = f"host.{host}/"
            acc.noops += [
                P.noop(f"{at}{k}[{i}]", _NOOP_BY_TEXT[k].replace("{id}", i)) for k, i in wanted_ids
            ]
            continue
        wanted: list[desired.Desired] = []
        apps = on_host.get(host, {})
        refs = sorted({fleet.apps[a].image for a in apps})
        wanted += [desired.image(host, ref) for ref in refs]
        if mesh is None:
            mesh = hostnet.MeshParts(world, keys)
        wanted.append(mesh.spec(host))
        if host in edges:
            if routes is None:
                routes = desired.RouteSpecs(world, machines.placed(world, acc))
            wanted += [routes.route(host, p.app.name) for p in announced]
            if not fleet.hosts[host].cordoned:
                wanted += [p.announcement(host) for p in announced]
            bird = hostnet.bird(world, host)
            if bird is not None:
                wanted.append(bird)
        by_kind: dict[Kind, list[desired.Desired]] = defaultdict(list)
        for d in wanted:
            if d.kind in supported:  # a StrEnum is its value in a set of str
                by_kind[d.kind].append(d)
        _unsupported(acc, host, [d.kind for d in wanted if d.kind not in supported])
        for kind in _HOST_KINDS:
            _reconcile_kind(
                acc, host, kind, by_kind.get(kind, []), idx.others.get((host, kind), {})
            )


def _unsupported(acc: machines.Acc, host: str, kinds: list[Kind]) -> None:
    """Never guess: a host whose agent cannot hold a kind gets no step for it, and
    the plan says so (once per host and kind)."""
    skipped: dict[str, int] = defaultdict(int)
    for kind in kinds:
        skipped[kind.value] += 1
    for kind_name, count in sorted(skipped.items()):
        acc.warnings.append(
            P.Warning(f"host.{host}", f"{count} {kind_name} resource(s) not planned: "
                      f"the agent on {host} does not manage {kind_name}s yet")
        )  # fmt: skip


def _warn_keyless(idx: _Index, acc: machines.Acc, keys: Mapping[str, str]) -> None:
    """The mesh is made from the keys hosts report (or last gave their peers): say
    which meshed hosts are left out of it."""
    meshed = {h for h, kinds in idx.kinds.items() if Kind.WIREGUARD.value in kinds}
    for host in sorted(meshed - set(keys)):
        acc.warnings.append(
            P.Warning(f"host.{host}", "no WireGuard public key known yet (bootstrap the host): "
                      "no other host has it as a peer")
        )  # fmt: skip


_EVERY_KIND = frozenset(k.value for k in Kind)
# An agent that does not list its kinds predates the network kinds.
_LEGACY_KINDS = frozenset({"image", "machine", "route", "announcement"})
_HOST_KINDS = (Kind.IMAGE, Kind.ROUTE, Kind.ANNOUNCEMENT, Kind.WIREGUARD, Kind.BGP)
_NOOP_TEXT = {
    Kind.IMAGE: "image {id} present",
    Kind.ROUTE: "route for app {id} up to date",
    Kind.ANNOUNCEMENT: "announcing app {id}",
    Kind.WIREGUARD: "mesh interface and peers up to date",
    Kind.BGP: "BIRD config up to date",
}
_NOOP_BY_TEXT = {k.value: text for k, text in _NOOP_TEXT.items()}  # by the kind's text
_DESTROY_TEXT = {
    Kind.IMAGE: "no machine on the host uses it",
    Kind.ROUTE: "app {app} is no longer served at the edge",
    Kind.ANNOUNCEMENT: "{host} no longer announces app {app} (cordoned, or the app is not public)",
    Kind.WIREGUARD: "{host} has no mesh interface in the fleet",
    Kind.BGP: "{host} runs no BIRD in the fleet",
}


def _reconcile_kind(
    acc: machines.Acc,
    host: str,
    kind: Kind,
    wanted: list[desired.Desired],
    seen: Mapping[str, observed.Resource],
) -> None:
    rules = resources.rules(kind)
    noop_text = _NOOP_TEXT[kind]
    for d in wanted:
        r = seen.get(d.id)
        if r is None:
            acc.add(
                P.Change(
                    d.address,
                    kind,
                    P.Action.CREATE,
                    f"{kind} needed on {host}",
                    host=host,
                    app=d.app,
                    after=d.spec,
                ),
                P.Step(
                    f"{d.address}:create",
                    d.address,
                    host,
                    kind,
                    d.id,
                    P.Verb.CREATE,
                    d.spec,
                    d.etag,
                    None,
                    app=d.app,
                ),
            )
            continue
        if r.etag == d.etag and (r.actual is None or rules.drift is resources.DriftPolicy.IGNORE):
            # The common case, settled without building the update step it will not need.
            acc.noops.append(P.noop(d.address, noop_text.format(id=d.id)))
            continue
        update_step = _update_step(host, kind, d, r)
        if r.etag != d.etag:
            items = diff.diff(r.spec, d.spec, kind)
            fields = ", ".join(sorted({str(i.path[0]) for i in items})) or "etag"
            acc.add(
                P.Change(
                    d.address,
                    kind,
                    P.Action.UPDATE,
                    f"{fields} changed",
                    host=host,
                    app=d.app,
                    before=r.spec,
                    after=d.spec,
                    diff=items,
                ),
                update_step,
            )
            continue
        drifted = _drift(r, rules)
        if drifted and rules.drift is resources.DriftPolicy.CORRECT:
            fields = ", ".join(sorted({str(i.path[0]) for i in drifted}))
            acc.add(
                P.Change(
                    d.address,
                    kind,
                    P.Action.UPDATE,
                    f"drift: live {fields} differ from last applied",
                    host=host,
                    app=d.app,
                    before=r.actual,
                    after=d.spec,
                    diff=drifted,
                    drift=True,
                ),
                update_step,
            )
        elif drifted and rules.drift is resources.DriftPolicy.WARN:
            acc.warnings.append(P.Warning(d.address, "drift: live state differs from last applied"))
        else:
            acc.noops.append(P.noop(d.address, noop_text.format(id=d.id)))
    for rid in sorted(seen.keys() - {d.id for d in wanted}):
        r = seen[rid]
        addr = address.host_resource(host, kind, rid)
        app = str(r.spec.get("app")) if kind in (Kind.ROUTE, Kind.ANNOUNCEMENT) else None
        reason = _DESTROY_TEXT[kind].format(app=app, host=host)
        acc.add(
            P.Change(addr, kind, P.Action.DESTROY, reason, host=host, app=app, before=r.spec),
            machines.delete_step(addr, host, r, app),
        )


def _update_step(host: str, kind: Kind, d: desired.Desired, r: observed.Resource) -> P.Step:
    return P.Step(
        f"{d.address}:update",
        d.address,
        host,
        kind,
        d.id,
        P.Verb.UPDATE,
        d.spec,
        d.etag,
        r.etag,
        app=d.app,
    )


def _drift(r: observed.Resource, rules: resources.Rules) -> tuple[diff.DiffItem, ...]:
    if r.actual is None or rules.drift is resources.DriftPolicy.IGNORE:
        return ()
    live = diff.strip_runtime(r.actual, rules)
    spec = diff.strip_runtime(r.spec, rules)
    if observed.canonical(live) == observed.canonical(spec):
        return ()
    return diff.diff(live, spec, r.kind)
