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
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet import compile as fleet_compile
from fleet import model
from providers import resources
from reconciler.core import address, desired, diff, guards, observed, rollout, schedule, select
from reconciler.core import plan as P

Kind = resources.Kind
_DEFAULT_OPTIONS = P.Options()


@dataclass(slots=True)
class _Index:
    """The snapshot, indexed once: O(resources)."""

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
    kinds: dict[str, frozenset[str]] = field(default_factory=dict)  # empty: all kinds
    anycast: dict[str, model.AppAddresses] = field(default_factory=dict)
    warnings: list[P.Warning] = field(default_factory=list)


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
        if obs.facts.private_prefix:
            try:
                idx.prefixes[name] = ipaddress.IPv6Network(obs.facts.private_prefix)
            except ValueError:
                idx.warnings.append(P.Warning(f"host.{name}", "reports an invalid private prefix"))
        for r in obs.resources:
            if not r.managed:
                idx.unmanaged.append((name, r))
            elif r.kind is Kind.MACHINE:
                idx.machines[f"{r.spec.get('app')}/{r.spec.get('slot')}"].append((name, r))
            else:
                idx.others[(name, r.kind)][r.id] = r
                if r.kind is Kind.ANNOUNCEMENT:
                    _note_anycast(idx, r)
    for name in sorted(snap.hosts):
        if name not in fleet.hosts:
            idx.warnings.append(
                P.Warning(f"host.{name}", "observed host is not in the fleet; left alone")
            )
    return idx


def _note_anycast(idx: _Index, r: observed.Resource) -> None:
    app = str(r.spec.get("app", ""))
    if not app or app in idx.anycast:
        return
    v4 = v6 = None
    for prefix in r.spec.get("prefixes", []):
        try:
            addr = ipaddress.ip_interface(prefix).ip
        except ValueError:
            continue
        if isinstance(addr, ipaddress.IPv4Address):
            v4 = addr
        else:
            v6 = addr
    idx.anycast[app] = model.AppAddresses(v4, v6)


@dataclass(slots=True)
class _Acc:
    """What the planner accumulates before ordering."""

    works: list[rollout.Work] = field(default_factory=list)
    noops: list[P.Noop] = field(default_factory=list)
    deferred: list[P.Deferred] = field(default_factory=list)
    warnings: list[P.Warning] = field(default_factory=list)

    def add(self, change: P.Change, *steps: P.Step) -> None:
        self.works.append(rollout.Work(change, list(steps)))


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
    running = {slot: [h for h, _ in found] for slot, found in idx.machines.items()}
    usage: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for host, r in idx.unmanaged:
        if r.kind is Kind.MACHINE:
            usage[host].append(r.spec)
    placement = schedule.place(world, running, usage, idx.unreachable)

    acc = _Acc(warnings=list(idx.warnings))
    for host, error in sorted(idx.unreachable.items()):
        acc.deferred.append(P.Deferred(f"host.{host}", host, f"host not observed: {error}"))
    parts = {name: desired.AppParts(app, world.anycast[name]) for name, app in fleet.apps.items()}
    on_host = _machines(world, idx, placement, acc, parts)
    _host_resources(world, idx, on_host, acc, parts)

    ordered, rollouts = rollout.order(acc.works, fleet)
    chosen, excluded = select.select(ordered, options.targets, options.excludes)
    changes = tuple(w.change for w in chosen)
    guards.check(changes, idx_machines_by_region(world, idx), _announced(idx), options)
    steps = tuple(s for w in chosen for s in w.steps)
    return P.Plan(
        fleet=origin,
        observed_at=snap.taken_at,
        generations=snap.generations(),
        options=options,
        changes=_sorted_changes(changes),
        steps=steps,
        noops=tuple(sorted(acc.noops, key=lambda n: n.address)),
        unmanaged=tuple(
            P.Unmanaged(address.host_resource(h, r.kind, r.id), h, r.kind, r.id, r.owner)
            for h, r in sorted(idx.unmanaged, key=lambda x: (x[0], x[1].kind, x[1].id))
        ),
        deferred=tuple(sorted(acc.deferred, key=lambda d: d.address)),
        warnings=tuple(sorted(acc.warnings, key=lambda w: (w.address, w.message))),
        rollouts=tuple(r for r in rollouts if any(c.app == r.app for c in changes)),
        excluded=tuple(sorted(w.change.address for w in excluded)),
        created_at=created_at,
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


def idx_machines_by_region(world: model.DesiredWorld, idx: _Index) -> dict[str, int]:
    """Managed machines observed per region (the base of the destroy-share guard)."""
    out: dict[str, int] = defaultdict(int)
    for found in idx.machines.values():
        for host, _ in found:
            h = world.fleet.hosts.get(host)
            if h is not None:
                out[h.region] += 1
    return out


def _announced(idx: _Index) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for (host, kind), by_id in idx.others.items():
        if kind is Kind.ANNOUNCEMENT:
            for r in by_id.values():
                if r.spec.get("prefixes"):
                    out[str(r.spec.get("app"))].add(host)
    return out


# ------------------------------------------------------------------ machines


def _machines(
    world: model.DesiredWorld,
    idx: _Index,
    placement: schedule.Placement,
    acc: _Acc,
    parts: Mapping[str, desired.AppParts],
) -> dict[str, dict[str, list[str]]]:
    """Plan every machine slot; return host -> app -> slot keys placed there."""
    fleet = world.fleet
    on_host: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    wanted: set[str] = set()
    for slot in world.slots:
        wanted.add(slot.id)
        addr = address.machine(slot.app, slot.key)
        found = idx.machines.get(slot.id, [])
        if slot.id in placement.deferred:
            acc.deferred.append(P.Deferred(addr, "", placement.deferred[slot.id]))
            continue
        host = placement.hosts[slot.id]
        on_host[host][slot.app].append(slot.key)
        app = fleet.apps[slot.app]
        spec, tag = parts[slot.app].machine(slot, world.host_prefixes[host])
        _machine(
            acc,
            app,
            slot,
            addr=addr,
            host=host,
            spec=spec,
            tag=tag,
            found=found,
            moved_why=placement.moved.get(slot.id, ""),
        )
    for slot_id, found in sorted(idx.machines.items()):
        if slot_id in wanted:
            continue
        for host, r in found:
            app_name = str(r.spec.get("app"))
            slot_key = str(r.spec.get("slot"))
            addr = address.machine(app_name, slot_key)
            acc.add(
                P.Change(
                    addr,
                    Kind.MACHINE,
                    P.Action.DESTROY,
                    _why_unwanted(fleet, r),
                    host=host,
                    app=app_name,
                    before=r.spec,
                ),
                _delete(addr, host, r, app_name),
            )
    return on_host


def _why_unwanted(fleet: model.Fleet, r: observed.Resource) -> str:
    app_name = str(r.spec.get("app"))
    region = str(r.spec.get("region"))
    app = fleet.apps.get(app_name)
    if app is None:
        return f"app {app_name} is no longer in the fleet"
    count = app.regions.get(region, 0)
    if count == 0:
        return f"app {app_name} no longer runs in region {region}"
    return f"app {app_name} scaled to {count} in region {region}"


def _delete(
    addr: str, host: str, r: observed.Resource, app: str | None, suffix: str = ""
) -> P.Step:
    return P.Step(
        f"{addr}:delete{suffix}",
        addr,
        host,
        r.kind,
        r.id,
        P.Verb.DELETE,
        None,
        None,
        r.etag,
        app=app,
    )


def _gate(app: model.App) -> P.Gate | None:
    if app.deploy.strategy is model.Strategy.IMMEDIATE:
        return None
    return P.Gate(app.deploy.min_healthy_s, app.deploy.wait_timeout_s)


def _machine(
    acc: _Acc,
    app: model.App,
    slot: model.MachineSlot,
    *,
    addr: str,
    host: str,
    spec: dict[str, Any],
    tag: str,
    found: list[tuple[str, observed.Resource]],
    moved_why: str,
) -> None:
    here = [r for h, r in found if h == host]
    keeper = next((r for r in here if r.etag == tag), here[0] if here else None)
    old = None
    if keeper is None and moved_why:
        old = next(((h, r) for h, r in found if h != host), None)
    for h, r in found:
        if r is keeper or (old is not None and r is old[1]):
            continue
        acc.add(
            P.Change(
                addr,
                Kind.MACHINE,
                P.Action.DESTROY,
                f"duplicate instance {r.id} of the slot",
                host=h,
                app=app.name,
                before=r.spec,
            ),
            _delete(addr, h, r, app.name, f"@{r.id}"),
        )
    iid = desired.instance_id(slot, tag)
    if any(r.id == iid for r in here):  # an instance updated in place kept its first id
        iid += f".{len(here) + 1}"
    create = P.Step(
        f"{addr}:create",
        addr,
        host,
        Kind.MACHINE,
        iid,
        P.Verb.CREATE,
        spec,
        tag,
        None,
        gate=_gate(app),
        app=app.name,
    )
    if keeper is None:
        if old is None:
            acc.add(
                P.Change(
                    addr,
                    Kind.MACHINE,
                    P.Action.CREATE,
                    "slot has no machine yet",
                    host=host,
                    app=app.name,
                    after=spec,
                ),
                create,
            )
            return
        old_host, r = old
        items = diff.diff(r.spec, spec, Kind.MACHINE)
        acc.add(
            P.Change(
                addr,
                Kind.MACHINE,
                P.Action.REPLACE,
                f"moves: {moved_why}",
                host=host,
                from_host=old_host,
                app=app.name,
                before=r.spec,
                after=spec,
                diff=items,
            ),
            create,
            _delete(addr, old_host, r, app.name),
        )
        return
    if keeper.etag == tag:
        _unchanged_machine(acc, app, addr, host, keeper)
        return
    items = diff.diff(keeper.spec, spec, Kind.MACHINE)
    if not items:  # same content, other etag (e.g. set by hand): adopt the fleet's etag
        reason = f"etag {keeper.etag} differs from the fleet's, spec equal: re-tag"
    elif diff.forces_replace(items):
        fields = ", ".join(sorted({str(i.path[0]) for i in items if i.effect == "replace"}))
        acc.add(
            P.Change(
                addr,
                Kind.MACHINE,
                P.Action.REPLACE,
                f"{fields} changed (forces replacement)",
                host=host,
                app=app.name,
                before=keeper.spec,
                after=spec,
                diff=items,
            ),
            create,
            _delete(addr, host, keeper, app.name),
        )
        return
    else:
        fields = ", ".join(sorted({str(i.path[0]) for i in items}))
        reason = f"{fields} changed (in place)"
    acc.add(
        P.Change(
            addr,
            Kind.MACHINE,
            P.Action.UPDATE,
            reason,
            host=host,
            app=app.name,
            before=keeper.spec,
            after=spec,
            diff=items,
        ),
        P.Step(
            f"{addr}:update",
            addr,
            host,
            Kind.MACHINE,
            keeper.id,
            P.Verb.UPDATE,
            spec,
            tag,
            keeper.etag,
            app=app.name,
        ),
    )


def _unchanged_machine(
    acc: _Acc, app: model.App, addr: str, host: str, r: observed.Resource
) -> None:
    state = r.status.state
    image = r.spec.get("image")
    if state in (observed.RunState.STOPPED, observed.RunState.FAILED):
        allowed = desired.auto_stop(app) is not model.AutoStop.OFF
        if state is observed.RunState.STOPPED and allowed:
            acc.noops.append(P.Noop(addr, f"stopped by auto-stop on {host} (app allows it)"))
            return
        policy = resources.rules(Kind.MACHINE).drift
        if policy is resources.DriftPolicy.IGNORE:
            acc.noops.append(P.Noop(addr, f"{state} on {host}; drift ignored by policy"))
            return
        if policy is resources.DriftPolicy.WARN:
            acc.warnings.append(P.Warning(addr, f"drift: machine is {state} on {host}"))
            return
        acc.add(
            P.Change(
                addr,
                Kind.MACHINE,
                P.Action.START,
                f"drift: machine is {state} on {host}, last applied to run",
                host=host,
                app=app.name,
                before={"state": state.value},
                after={"state": "running"},
                drift=True,
            ),
            P.Step(
                f"{addr}:start",
                addr,
                host,
                Kind.MACHINE,
                r.id,
                P.Verb.START,
                None,
                r.etag,
                r.etag,
                gate=_gate(app),
                app=app.name,
            ),
        )
        return
    if r.status.health is observed.Health.CRITICAL:
        acc.warnings.append(P.Warning(addr, f"health checks failing on {host}"))
    acc.noops.append(P.Noop(addr, f"already running image {image} on {host} ({r.etag})"))


# ------------------------------------------------------------------ images, routes, announcements


def _host_resources(
    world: model.DesiredWorld,
    idx: _Index,
    on_host: Mapping[str, Mapping[str, list[str]]],
    acc: _Acc,
    parts: Mapping[str, desired.AppParts],
) -> None:
    fleet = world.fleet
    for host in sorted(idx.reachable):
        wanted: list[desired.Desired] = []
        apps = on_host.get(host, {})
        refs = sorted({fleet.apps[a].image for a in apps})
        wanted += [desired.image(host, ref) for ref in refs]
        for app_name in sorted(apps):
            p = parts[app_name]
            if desired.serves_publicly(p.app):
                wanted.append(p.route(host, apps[app_name]))
                if p.announces:
                    wanted.append(p.announcement(host))
        by_kind: dict[Kind, list[desired.Desired]] = defaultdict(list)
        supported = idx.kinds.get(host) or frozenset()
        for d in wanted:
            if supported and d.kind.value not in supported:
                # Never guess: a host whose agent cannot hold this kind gets no step
                # for it, and the plan says so.
                acc.warnings.append(
                    P.Warning(d.address, f"not planned: the agent on {host} does not manage "
                              f"{d.kind.value} resources yet")
                )  # fmt: skip
                continue
            by_kind[d.kind].append(d)
        for kind in (Kind.IMAGE, Kind.ROUTE, Kind.ANNOUNCEMENT):
            _reconcile_kind(
                acc, host, kind, by_kind.get(kind, []), idx.others.get((host, kind), {})
            )


_NOOP_TEXT = {
    Kind.IMAGE: "image {id} present",
    Kind.ROUTE: "route for app {id} up to date",
    Kind.ANNOUNCEMENT: "announcing app {id}",
}


def _reconcile_kind(
    acc: _Acc,
    host: str,
    kind: Kind,
    wanted: list[desired.Desired],
    seen: Mapping[str, observed.Resource],
) -> None:
    rules = resources.rules(kind)
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
        update_step = P.Step(
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
            acc.noops.append(P.Noop(d.address, _NOOP_TEXT[kind].format(id=d.id)))
    wanted_ids = {d.id for d in wanted}
    for rid, r in sorted(seen.items()):
        if rid in wanted_ids:
            continue
        addr = address.host_resource(host, kind, rid)
        app = str(r.spec.get("app")) if kind is not Kind.IMAGE else None
        reason = (
            "no machine on the host uses it"
            if kind is Kind.IMAGE
            else (f"no machine of app {app} on {host} any more")
        )
        acc.add(
            P.Change(addr, kind, P.Action.DESTROY, reason, host=host, app=app, before=r.spec),
            _delete(addr, host, r, app),
        )


def _drift(r: observed.Resource, rules: resources.Rules) -> tuple[diff.DiffItem, ...]:
    if r.actual is None or rules.drift is resources.DriftPolicy.IGNORE:
        return ()
    live = diff.strip_runtime(r.actual, rules)
    spec = diff.strip_runtime(r.spec, rules)
    if observed.canonical(live) == observed.canonical(spec):
        return ()
    return diff.diff(live, spec, r.kind)
