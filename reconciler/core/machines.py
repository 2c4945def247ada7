"""Plan every machine slot: create, keep, update in place, replace, move, start, destroy. Pure.

For each desired slot, the placed host and the observed instances of the slot
decide the change: none seen -> create; one with the desired etag -> no-op (or
a ``start`` when it drifted to stopped/failed, unless the app auto-stops);
another etag -> field diff, update in place or replace as the kind's rules
say; seen on a host it must leave -> replace there (a move); extra instances
-> destroy. Observed managed machines of slots no longer desired -> destroy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet import model
from providers import resources
from reconciler.core import address, desired, diff, observed, rollout, schedule
from reconciler.core import plan as P

Kind = resources.Kind


@dataclass(slots=True)
class Acc:
    """What the planner accumulates before ordering."""

    works: list[rollout.Work] = field(default_factory=list)
    noops: list[P.Noop] = field(default_factory=list)
    deferred: list[P.Deferred] = field(default_factory=list)
    warnings: list[P.Warning] = field(default_factory=list)
    # every desired machine placed: (host, slot, its private address: "" on a skipped
    # host until :func:`placed` computes it for the route tables that need it)
    placed: list[tuple[str, model.MachineSlot, str]] = field(default_factory=list)
    unaddressed: list[int] = field(default_factory=list)  # indexes into ``placed``

    def add(self, change: P.Change, *steps: P.Step) -> None:
        self.works.append(rollout.Work(change, list(steps)))


def plan_machines(
    world: model.DesiredWorld,
    observed_machines: Mapping[str, list[tuple[str, observed.Resource]]],
    placement: schedule.Placement,
    acc: Acc,
    parts: Mapping[str, desired.AppParts],
    *,
    skipped: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Plan every machine slot; return host -> app -> slot keys placed there.

    ``skipped``: hosts the plan skips wholesale (:mod:`reconciler.core.skip`),
    each with its machines' etags by slot: a slot placed on one is a no-op
    without its etag computed (its observed etag is the one it was applied with).
    """
    skipped = skipped or {}
    fleet = world.fleet
    on_host: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    wanted: set[str] = set()
    deferred, hosts, prefixes = placement.deferred, placement.hosts, world.host_prefixes
    no_found: list[tuple[str, observed.Resource]] = []
    bits: dict[str, desired.HostBits] = {}  # host -> its prefix as ints, once per host
    placed = acc.placed
    last_app = ""
    for slot in world.slots:
        slot_id = slot.id  # a property that formats a string: once per slot
        wanted.add(slot_id)
        slot_key = slot.key
        app_name = slot.app
        addr = f"app.{app_name}/machine[{slot_key}]"  # address.machine(), inlined
        if slot_id in deferred:
            acc.deferred.append(P.Deferred(addr, "", deferred[slot_id]))
            continue
        host = hosts[slot_id]
        on_host[host][app_name].append(slot_key)
        if app_name != last_app:  # slots come ordered by app: its lookups once per app
            last_app, app, app_parts = app_name, fleet.apps[app_name], parts[app_name]
            running = _running_text(app)
        held = skipped.get(host)
        if held is not None:
            acc.unaddressed.append(len(placed))
            placed.append((host, slot, ""))
            acc.noops.append(P.noop(addr, f"{running}{host} ({held[slot_id]})"))  # as _running
            continue
        host_bits = bits.get(host)
        if host_bits is None:
            host_bits = bits[host] = desired.host_bits(prefixes[host])
        address_text, tag = app_parts.machine_etag(slot.region, host_bits, slot_id, slot_key)
        placed.append((host, slot, address_text))
        found = observed_machines.get(slot_id, no_found)
        if len(found) == 1 and found[0][0] == host and found[0][1].etag == tag:
            # The common case, as _machine would settle it: one instance, in place, same
            # etag. The spec is not even built.
            _unchanged_machine(acc, app, addr, host, found[0][1])
            continue
        _machine(
            acc,
            app,
            slot,
            addr=addr,
            host=host,
            spec=app_parts.machine_spec(slot.region, slot_key, address_text),
            tag=tag,
            found=found,
            moved_why=placement.moved.get(slot_id, ""),
        )
    for slot_id, found in sorted(observed_machines.items()):
        if slot_id in wanted:
            continue
        for host, r in found:
            app_name, slot_key = address.machine_slot(r.id, r.spec)
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
                delete_step(addr, host, r, app_name),
            )
    return on_host


def placed(world: model.DesiredWorld, acc: Acc) -> list[tuple[str, model.MachineSlot, str]]:
    """``acc.placed`` with every address computed."""
    out = acc.placed
    for i in acc.unaddressed:
        host, slot, _ = out[i]
        bits = desired.host_bits(world.host_prefixes[host])
        out[i] = (host, slot, desired.machine_address_text(bits, slot.id))
    acc.unaddressed.clear()
    return out


def _why_unwanted(fleet: model.Fleet, r: observed.Resource) -> str:
    if not r.etag:
        return "left over by a create that failed"
    app_name = str(r.spec.get("app"))
    region = str(r.spec.get("region"))
    app = fleet.apps.get(app_name)
    if app is None:
        return f"app {app_name} is no longer in the fleet"
    count = app.regions.get(region, 0)
    if count == 0:
        return f"app {app_name} no longer runs in region {region}"
    return f"app {app_name} scaled to {count} in region {region}"


def delete_step(
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
    acc: Acc,
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
    # A machine without an etag is what a create that failed half-way left: never
    # a keeper, only something to clean up (as a duplicate, below).
    here = [r for h, r in found if h == host and r.etag]
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
            delete_step(addr, h, r, app.name, f"@{r.id}"),
        )
    if keeper is not None and keeper.etag == tag:
        _unchanged_machine(acc, app, addr, host, keeper)
        return
    iid = desired.instance_id(slot, tag)
    if any(r.id == iid for _, r in found):  # an instance updated in place kept its first id
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
            delete_step(addr, old_host, r, app.name),
        )
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
            delete_step(addr, host, keeper, app.name),
        )
        return
    else:
        fields = ", ".join(sorted({str(i.path[0]) for i in items}))
        reason = f"{fields} changed (in place)"
    steps = [
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
        )
    ]
    if _should_run(app, keeper):
        # e.g. auto_stop turned off: the update alone would leave the machine autostop
        # stopped until a later apply saw it as drift, and no waker starts it now
        reason += f"; {keeper.status.state} on {host}: started after the update"
        steps.append(_start_step(app, addr, host, keeper.id, tag))
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
        *steps,
    )


def _should_run(app: model.App, r: observed.Resource) -> bool:
    """Whether the observed instance is down when the app wants it running (drift to fix)."""
    state = r.status.state
    if resources.rules(Kind.MACHINE).drift is not resources.DriftPolicy.CORRECT:
        return False
    if state is observed.RunState.FAILED:
        return True
    return state is observed.RunState.STOPPED and desired.auto_stop(app) is model.AutoStop.OFF


def _start_step(app: model.App, addr: str, host: str, rid: str, etag: str) -> P.Step:
    """Start the instance (its etag unchanged), behind the app's health gate."""
    return P.Step(
        f"{addr}:start",
        addr,
        host,
        Kind.MACHINE,
        rid,
        P.Verb.START,
        None,
        etag,
        etag,
        gate=_gate(app),
        app=app.name,
    )


def _unchanged_machine(
    acc: Acc, app: model.App, addr: str, host: str, r: observed.Resource
) -> None:
    state = r.status.state
    if state in (observed.RunState.STOPPED, observed.RunState.FAILED):
        allowed = desired.auto_stop(app) is not model.AutoStop.OFF
        if state is observed.RunState.STOPPED and allowed:
            acc.noops.append(P.noop(addr, f"stopped by auto-stop on {host} (app allows it)"))
            return
        policy = resources.rules(Kind.MACHINE).drift
        if policy is resources.DriftPolicy.IGNORE:
            acc.noops.append(P.noop(addr, f"{state} on {host}; drift ignored by policy"))
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
            _start_step(app, addr, host, r.id, r.etag),
        )
        return
    if r.status.health is observed.Health.CRITICAL:
        acc.warnings.append(P.Warning(addr, f"health checks failing on {host}"))
    acc.noops.append(_running(addr, app, host, r.etag))


def _running(addr: str, app: model.App, host: str, etag: str) -> P.Noop:
    return P.noop(addr, f"{_running_text(app)}{host} ({etag})")


def _running_text(app: model.App) -> str:
    """The start of a running machine's no-op reason (then its host and etag)."""
    return f"already running image {app.image} on "
