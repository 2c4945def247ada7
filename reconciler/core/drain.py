"""Drain a machine replaced in place from every edge before its old VM stops. Pure.

A machine's private address belongs to its slot on its host, so a replacement
on the same host (a new image, env or size) gets the *same* address: the new
VM cannot run beside the old one, and the route spec does not change (same
server, same address), so without this module no edge would ever hear of it.
For each rollout batch with such members, every edge host whose route for the
app holds one of their servers gets a *drain* step first: its route with those
servers ``draining`` (weight 0: no new requests, in-flight ones finish; the
agent waits until their sessions end, at most ``kill_timeout``). Only then is
the old VM deleted and the new one created (destroy before create, forced by
the shared address), behind its health gate. The next batch's drain step
restores the previous batch's servers, and the route's last step (its normal
update, or a restore to the spec it had) restores the last batch's.

:func:`add` decides *what*: the drain steps, in order, on each route.
:func:`reconciler.core.rollout.order` decides *when* (drain -> old delete ->
new create -> next batch's drain -> ... -> the route's last step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fleet import model
from providers import resources
from providers.proxy import spec as proxy_spec
from reconciler.core import address, machines, observed, rollout
from reconciler.core import plan as P

Kind = resources.Kind


def in_place(change: P.Change) -> bool:
    """A machine replaced on the host it runs on: the new instance takes the old one's address."""
    return (
        change.kind is Kind.MACHINE and change.action is P.Action.REPLACE and not change.from_host
    )


def add(
    acc: machines.Acc,
    fleet: model.Fleet,
    seen: Mapping[tuple[str, Kind], Mapping[str, observed.Resource]],
) -> None:
    """Give every observed route of an app with in-place replacements its drain steps.

    ``seen`` is the observed resources by (host, kind). A route that was a
    no-op becomes an update (its last step restores the spec it had) and
    leaves the no-ops; a route that changes anyway keeps its update as the last
    step. Routes that hold none of the servers get nothing.
    """
    replaces: dict[str, list[rollout.Work]] = {}
    for w in acc.works:
        c = w.change
        if c.kind is Kind.MACHINE and c.action is P.Action.REPLACE and c.app:
            replaces.setdefault(c.app, []).append(w)
    batches: dict[str, list[tuple[int, list[str]]]] = {}
    for app_name, group in replaces.items():
        numbered = [
            (number, [_server(w.change) for w in members if in_place(w.change)])
            for number, members in enumerate(rollout.batches(fleet.apps[app_name], group), 1)
        ]
        if any(names for _, names in numbered):
            batches[app_name] = [(n, names) for n, names in numbered if names]
        app = fleet.apps[app_name]
        whole = max((len(names) for _, names in numbered), default=0)
        if whole and whole >= app.machine_count and app.machine_count > 1:
            acc.warnings.append(
                P.Warning(
                    f"app.{app_name}",
                    f"all {whole} machines are replaced in place in one batch "
                    f"({app.deploy.strategy.value}): each keeps its address, so none serves "
                    "while the new ones boot; a rolling deploy keeps the others serving",
                )
            )
    if not batches:
        return
    route_works = {
        w.change.address: w
        for w in acc.works
        if w.change.kind is Kind.ROUTE and w.change.action is P.Action.UPDATE
    }
    drained: set[str] = set()
    for (host, kind), routes in sorted(seen.items()):
        if kind is not Kind.ROUTE:
            continue
        for app_name, plan in sorted(batches.items()):
            r = routes.get(app_name)
            if r is not None:
                addr = address.host_resource(host, Kind.ROUTE, app_name)
                if _drain_route(
                    acc, addr=addr, host=host, r=r, plan=plan, work=route_works.get(addr)
                ):
                    drained.add(addr)
    if drained:
        acc.noops = [n for n in acc.noops if n.address not in drained]


def _server(change: P.Change) -> str:
    slot = (change.after or {}).get("slot")
    return proxy_spec.server_of_slot(str(slot))


def _drain_route(
    acc: machines.Acc,
    *,
    addr: str,
    host: str,
    r: observed.Resource,
    plan: list[tuple[int, list[str]]],
    work: rollout.Work | None,
) -> bool:
    steps: list[P.Step] = []
    expect = r.etag
    told: list[str] = []
    held = _servers(r.spec)
    for number, names in plan:
        if held.isdisjoint(names):
            continue  # this route holds none of the batch's servers (the common case)
        spec = proxy_spec.with_draining(r.spec, names)
        if spec == r.spec:
            continue  # this route holds none of the batch's servers
        tag = observed.etag(spec)
        steps.append(
            P.Step(
                f"{addr}:drain{number}",
                addr,
                host,
                Kind.ROUTE,
                r.id,
                P.Verb.UPDATE,
                spec,
                tag,
                expect,
                app=r.id,
                batch=number,
            )
        )
        expect = tag
        told.append(" + ".join(sorted(n for n in names if _held(r.spec, n))))
    if not steps:
        return False
    why = (
        f"drains {', then '.join(told)} before each is replaced in place (same address), "
        "then restores"
    )
    if work is None:
        change = P.Change(
            addr,
            Kind.ROUTE,
            P.Action.UPDATE,
            why,
            host=host,
            app=r.id,
            before=r.spec,
            after=r.spec,
        )
        last = P.Step(
            f"{addr}:update", addr, host, Kind.ROUTE, r.id, P.Verb.UPDATE, r.spec, r.etag, expect,
            app=r.id,
        )  # fmt: skip
        acc.add(change, *steps, last)
        return True
    work.change = dataclasses.replace(work.change, reason=f"{work.change.reason}; {why}")
    work.steps = [*steps, *(dataclasses.replace(s, expect=expect) for s in work.steps)]
    return True


def _servers(spec: Mapping[str, object]) -> set[str]:
    """Every server name any route of the spec holds."""
    routes = spec.get("routes")
    if not isinstance(routes, Mapping):
        return set()
    return {name for route in routes.values() for name in (route.get("servers") or {})}


def _held(spec: Mapping[str, object], server: str) -> bool:
    routes = spec.get("routes")
    if not isinstance(routes, Mapping):
        return False
    return any(server in (route.get("servers") or {}) for route in routes.values())
