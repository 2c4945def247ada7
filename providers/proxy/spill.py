"""soft_limit spill: what each of a route's two HAProxy backends holds. Pure.

HAProxy 2.6 uses a backup server only when no active server is up, never
because the active ones are busy, so "every local machine is over its
soft_limit: prefer another region's machine" is decided in the *frontend*,
with one backend for the normal case and one for the spill:

- ``be_X`` (the route's backend) holds what it always did, except that its
  local machines get ``maxconn soft_limit``. The frontend sends a request to
  ``be_X_spill`` when ``be_conn_free(be_X)`` is 0, i.e. every usable local
  machine holds ``soft_limit`` requests from this proxy.
- ``be_X_spill`` (``balance first``: the first server with a free slot, by
  server id) holds the remote machines first, nearest first, at their
  ``hard_limit``, then the local machines at ``hard_limit - soft_limit``
  (none when those are equal). A local machine so gets at most ``soft_limit
  + (hard_limit - soft_limit) = hard_limit`` requests from this proxy; when
  every slot is taken, requests queue in the spill backend, then get 503
  after the queue timeout, as they did behind ``hard_limit``.

Only a route with remote machines (an app in more than one region) spills:
the rule, the second backend and the lower local ``maxconn`` exist only
there, so a single-region app pays nothing per request.

``balance first`` orders servers by id, and a server added at runtime gets
the lowest free id unless told otherwise, so every server of a spill backend
carries an explicit id (:attr:`Server.spill_id`): remote machines below
:data:`LOCAL_IDS`, local ones above, each newcomer after the others of its
kind. Ids are kept in the live table (and ``table.json``), since HAProxy
keeps them until a reload renumbers them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from providers.proxy import table as t

SUFFIX = "_spill"
LOCAL_IDS = 10_000  # spill-backend ids of local machines start above this: remote ones go first


def active(route: t.Route) -> bool:
    """Whether ``route`` spills: it has another region's machine to spill to."""
    return any(s.role is t.Role.REMOTE for s in route.servers)


def backend(route_name: str) -> str:
    return route_name + SUFFIX


def route_of(backend_name: str) -> str:
    """The route a backend belongs to (itself unless it is a spill backend)."""
    return backend_name.removesuffix(SUFFIX)


def main_servers(route: t.Route) -> tuple[t.Server, ...]:
    """The servers of ``be_X`` as HAProxy holds them: local ones at ``soft_limit`` if it spills."""
    spills = active(route)
    soft = route.soft_limit if route.hard_limit is None else min(route.soft_limit, route.hard_limit)
    return tuple(
        dataclasses.replace(
            s,
            maxconn=soft if spills and s.role is t.Role.LOCAL else s.maxconn,
            spill_id=None,  # ids are the spill backend's
        )
        for s in route.servers
    )


def spill_servers(route: t.Route) -> tuple[t.Server, ...]:
    """The servers of ``be_X_spill`` in ``balance first`` order (by id); empty if no spill.

    All are active servers there (role ``local`` in this view: no ``backup``).
    """
    if not active(route):
        return ()
    out: list[t.Server] = []
    for s in route.servers:
        if s.role is t.Role.REMOTE:
            out.append(dataclasses.replace(s, role=t.Role.LOCAL))
    for s in route.servers:
        if s.role is t.Role.LOCAL:
            room = _room(route)
            if room == 0:
                continue  # soft_limit == hard_limit: a local machine has nothing to give
            out.append(dataclasses.replace(s, maxconn=room))
    return tuple(sorted(out, key=lambda s: s.spill_id or 0))


def _room(route: t.Route) -> int | None:
    """A local machine's slots in the spill backend (None: no hard limit, no maxconn)."""
    if route.hard_limit is None:
        return None
    return max(route.hard_limit - route.soft_limit, 0)


def number(route: t.Route, kept: Mapping[str, int] | None = None) -> t.Route:
    """``route`` with a spill id on every server its spill backend holds.

    ``kept``: the ids HAProxy already gives servers of this spill backend
    (name -> id); those keep them, and each newcomer comes after every other
    server of its kind (remote or local). None: a fresh configuration,
    numbered from 1 (remote) and ``LOCAL_IDS + 1`` (local) in route order.
    """
    if not active(route):
        return dataclasses.replace(
            route, servers=tuple(dataclasses.replace(s, spill_id=None) for s in route.servers)
        )
    ids = dict(kept or {})
    room = _room(route)
    next_id = {
        t.Role.REMOTE: max((i for i in ids.values() if i <= LOCAL_IDS), default=0) + 1,
        t.Role.LOCAL: max((i for i in ids.values() if i > LOCAL_IDS), default=LOCAL_IDS) + 1,
    }
    servers = []
    for s in route.servers:
        wanted = s.role is t.Role.REMOTE or (s.role is t.Role.LOCAL and room != 0)
        spill_id = None
        if wanted:
            spill_id = ids.get(s.name)
            if spill_id is None or (spill_id > LOCAL_IDS) != (s.role is t.Role.LOCAL):
                spill_id = next_id[s.role]
                next_id[s.role] += 1
        servers.append(dataclasses.replace(s, spill_id=spill_id))
    return dataclasses.replace(route, servers=tuple(servers))


def number_table(table: t.RoutingTable) -> t.RoutingTable:
    """Every route of a fresh configuration numbered (see :func:`number`)."""
    return dataclasses.replace(table, routes=tuple(number(r) for r in table.routes))


def exhausted(route: t.Route) -> bool:
    """Whether remote ids ran into the local range (only a reload renumbers them)."""
    return any(s.role is t.Role.REMOTE and (s.spill_id or 0) > LOCAL_IDS for s in route.servers)


def ids(route: t.Route) -> dict[str, int]:
    """The spill ids HAProxy holds for ``route`` (a live route)."""
    return {s.name: s.spill_id for s in route.servers if s.spill_id is not None}
