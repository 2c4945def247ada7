"""The ``route`` resource's spec: one app's routes as JSON, both ways. Pure.

The reconciler computes each app's routes for a region with
:func:`providers.proxy.table.build` (from the desired placement) and sends them
to every host of that region as the spec of the host's ``route[<app>]``
resource; the host agent turns every route spec it holds back into
:class:`~providers.proxy.table.Route` values and assembles the host's
:class:`~providers.proxy.table.RoutingTable`. Both sides use this module, so
the JSON shape is defined once (docs/protocol.md shows it).

Two things are the host's to decide, not the reconciler's: the waker's port
(:func:`assign_wakers`, one per auto-start route of the host) and whether the
waker is enabled (it is while a local machine of the app is stopped, and while
a route is still waking: see :func:`assign_wakers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from fleet import model
from fleet.errors import ProviderError
from providers.proxy import table as t

Json = Any
DEFAULT_SETTINGS = t.Settings()


def app_routes(
    world: model.DesiredWorld,
    app: str,
    host: str,
    machines: Iterable[t.MachineView],
    settings: t.Settings = DEFAULT_SETTINGS,
    *,
    checked: bool = True,
) -> tuple[t.Route, ...]:
    """The routes of ``app`` on ``host`` (any host of its region gets the same ones).

    Builds the table of a world holding only this app, so an app's routes never
    depend on which other apps exist.
    """
    only = dataclasses.replace(world.fleet, apps={app: world.fleet.apps[app]})
    alone = dataclasses.replace(world, fleet=only)
    mine = (m for m in machines if m.slot.app == app)
    return t.build(alone, host, mine, settings, checked=checked).routes


def to_json(app: str, region: str, routes: Iterable[t.Route]) -> dict[str, Json]:
    """The route resource's spec for ``app`` on the hosts of ``region``.

    Routes are keyed by backend name and servers by server name, so a plan's
    field diff names what changed (``routes.be_web_0.servers.ams.2``); a
    server's ``rank`` keeps HAProxy's order (the first usable backup wins).
    """
    return {"app": app, "region": region, "routes": {r.name: _route(r) for r in routes}}


def _route(r: t.Route, full: bool = False) -> dict[str, Json]:
    return {
        "service": r.service,
        "mode": r.mode.value,
        "listeners": [
            {
                "address": lst.address,
                "port": lst.port,
                "tls": lst.tls,
                "http": lst.http,
                "force_https": lst.force_https,
            }
            for lst in r.listeners
        ],
        "servers": {
            s.name: _server(s, rank, r.hard_limit, full) for rank, s in enumerate(r.servers)
        },
        "hostnames": list(r.hostnames),
        "soft_limit": r.soft_limit,
        "hard_limit": r.hard_limit,
        "kill_timeout_s": r.kill_timeout_s,
        # only when off: the specs of every app that keeps the default stay as they were
        **({} if r.replay else {"replay": False}),
    }


def _server(s: t.Server, rank: int, hard_limit: int | None, full: bool = False) -> dict[str, Json]:
    """A server as few bytes as say it: every host holds one per machine of every app.

    Region and machine follow from the name (``ams.1`` is slot ``<app>/ams#1``);
    ``maxconn`` and ``draining`` appear only when they differ from the route's
    ``hard_limit`` and from false.
    """
    out: dict[str, Json] = {"rank": rank, "role": s.role.value}
    if s.role is t.Role.WAKER:  # the host picks the waker's address, port and state
        if full:
            out.update(address=s.address, port=s.port, enabled=s.enabled)
        return out
    out["address"] = s.address
    out["port"] = s.port
    if s.maxconn != hard_limit:
        out["maxconn"] = s.maxconn
    if s.draining:
        out["draining"] = True
    if full and s.spill_id is not None:  # what HAProxy holds, for the next process
        out["spill_id"] = s.spill_id
    return out


def table_to_json(table: t.RoutingTable) -> dict[str, Json]:
    """A whole table, waker details included: what a host keeps of the table HAProxy holds."""
    by_app: dict[str, dict[str, Json]] = {}
    for r in table.routes:
        by_app.setdefault(r.app, {})[r.name] = _route(r, full=True)
    return {
        "host": table.host,
        "region": table.region,
        "routes": [{"app": app, "routes": routes} for app, routes in by_app.items()],
    }


def table_from_json(raw: Mapping[str, Json]) -> t.RoutingTable:
    """The table :func:`table_to_json` wrote, in the same route and server order."""
    try:
        routes = [r for app in raw["routes"] for r in from_json(app, "saved table")]
        return t.RoutingTable(str(raw["host"]), str(raw["region"]), tuple(routes))
    except (KeyError, TypeError) as exc:
        raise ProviderError(f"proxy: saved table: malformed: {exc!r}") from None


def from_json(spec: Mapping[str, Json], where: str = "route") -> tuple[t.Route, ...]:
    """The routes in a route spec; a malformed spec raises :class:`ProviderError`."""
    try:
        app = str(spec["app"])
        routes = tuple(_parse_route(app, raw) for raw in (spec.get("routes") or {}).values())
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProviderError(f"proxy: {where}: malformed route spec: {exc!r}") from None
    for name, route in zip(spec["routes"], routes, strict=True):
        if name != route.name:
            raise ProviderError(f"proxy: {where}: route {name} describes {route.name}")
    return routes


def _parse_route(app: str, raw: Mapping[str, Json]) -> t.Route:
    hard = raw.get("hard_limit")
    return t.Route(
        app=app,
        service=int(raw["service"]),
        mode=t.Mode(raw["mode"]),
        listeners=tuple(
            t.Listener(
                str(lst["address"]),
                int(lst["port"]),
                bool(lst["tls"]),
                bool(lst["http"]),
                bool(lst.get("force_https", False)),
            )
            for lst in raw["listeners"]
        ),
        servers=tuple(
            _parse_server(app, name, s, hard)
            for name, s in sorted(raw["servers"].items(), key=lambda kv: int(kv[1]["rank"]))
        ),
        hostnames=tuple(str(h) for h in raw.get("hostnames") or ()),
        soft_limit=int(raw.get("soft_limit", 20)),
        hard_limit=int(hard) if hard is not None else None,
        kill_timeout_s=float(raw.get("kill_timeout_s", 5.0)),
        replay=bool(raw.get("replay", True)),
    )


def _parse_server(app: str, name: str, raw: Mapping[str, Json], hard_limit: Json) -> t.Server:
    role = t.Role(raw["role"])
    if role is t.Role.WAKER:
        address = str(raw.get("address", "127.0.0.1"))
        return t.Server(
            name, role, address, int(raw.get("port", 1)), enabled=bool(raw.get("enabled"))
        )
    maxconn = raw.get("maxconn", hard_limit)
    region, _, index = name.rpartition(".")
    return t.Server(
        name=name,
        role=role,
        address=str(raw["address"]),
        port=int(raw["port"]),
        region=region,
        machine=f"{app}/{region}#{index}",
        maxconn=int(maxconn) if maxconn is not None else None,
        draining=bool(raw.get("draining", False)),
        spill_id=int(raw["spill_id"]) if "spill_id" in raw else None,
    )


def assemble(
    host: str,
    region: str,
    routes: Iterable[t.Route],
    *,
    stopped_apps: frozenset[str] = frozenset(),
    settings: t.Settings = DEFAULT_SETTINGS,
    waking: Collection[str] = frozenset(),
) -> t.RoutingTable:
    """The host's table from the routes of every route spec it holds, wakers assigned."""
    ordered = sorted(routes, key=lambda r: r.name)
    table = t.RoutingTable(host, region, tuple(ordered))
    return assign_wakers(table, stopped_apps, settings, waking)


def assign_wakers(
    table: t.RoutingTable,
    stopped_apps: frozenset[str],
    settings: t.Settings = DEFAULT_SETTINGS,
    waking: Collection[str] = frozenset(),
) -> t.RoutingTable:
    """Give each auto-start route its own waker port (in route order), enabled while stopped.

    Also while the route is in ``waking`` (route names): its machine has left
    "stopped" but HAProxy's checks do not see it UP yet, so without the waker
    the route would have no usable server there (the host decides which
    routes those are: :func:`hostagent.edge.still_waking`).

    Never while the route drains a server: that machine is being replaced in
    place, so "stopped" there means "between its old and its new VM", and the
    waker (the first backup) would hold every request until the new VM boots
    (or start the old one again) instead of letting the next backup serve.
    """
    port = settings.waker_port
    routes = []
    for r in table.routes:
        servers = []
        draining = any(s.draining for s in r.servers)
        for s in r.servers:
            if s.role is t.Role.WAKER:
                waker = dataclasses.replace(
                    s,
                    address=settings.waker_address,
                    port=port,
                    enabled=(r.app in stopped_apps or r.name in waking) and not draining,
                )
                port += 1
                servers.append(waker)
            else:
                servers.append(s)
        routes.append(dataclasses.replace(r, servers=tuple(servers)))
    return dataclasses.replace(table, routes=tuple(routes))


def server_of_slot(slot_key: str) -> str:
    """The server name of a machine slot key: ``ams#1`` -> ``ams.1`` (see :func:`t.server_name`)."""
    region, _, index = slot_key.rpartition("#")
    return f"{region}.{index}"


def with_draining(spec: Mapping[str, Json], servers: Collection[str]) -> dict[str, Json]:
    """``spec`` with the named machine servers draining (weight 0) in every route that has them.

    What the reconciler sends every edge before a machine replaced in place
    (same address) stops: no new request reaches it, in-flight ones finish.
    The result equals ``spec`` when no route holds any of them.
    """
    routes: dict[str, Json] = {}
    for name, route in (spec.get("routes") or {}).items():
        held = route.get("servers") or {}
        if any(s in held for s in servers):
            marked = {
                s: {**raw, "draining": True} if s in servers else raw for s, raw in held.items()
            }
            routes[name] = {**route, "servers": marked}
        else:
            routes[name] = route
    return {**spec, "routes": routes}
