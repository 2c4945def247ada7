"""From the routing table HAProxy has to the one it should have: runtime ops, or a reload.

Pure. Most changes (a machine joining, draining or leaving; a limit; an
address) are HAProxy runtime-API commands that touch only the servers that
changed. Anything the runtime API cannot express (a route or listener added
or removed, TLS, hostnames, a server changing role) needs a seamless reload,
and so does a drift of the backup order: HAProxy sends to the *first* usable
backup in list order and ``add server`` appends, so a newcomer that should
come before an existing backup is placed right only by a reload. A route
that spills (``spill.py``) has a second backend, kept in step the same way;
its first remote machine or the last one leaving adds or drops it (reload).

Every op knows its inverse, so a half-applied update can be rolled back to
the last good table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace

from providers.proxy import spill
from providers.proxy import table as t

REPLAY_MAP = "replay.map"
# Every machine server is health-checked (TCP connect): a remote machine the mesh
# cannot reach, or a machine that died, leaves rotation within 2.5 s (the next check,
# at most `inter` later, fails; the second one follows `fastinter` after it), and a
# down one is back within 1 s of answering. Checks are timer work of the worker that
# serves requests, one per server per `inter` (200/s for 100 two-machine routes at 1 s
# cost ~3% of its CPU per request at ~25k rps, more at lower rates), so an up server
# is checked every 2 s: half the checks for 0.5 s more at worst (docs/proxy.md).
CHECK = "check inter 2s fastinter 500ms downinter 1s fall 2 rise 1"
# A spill backend holds the route's machines a second time (spill.py). Checked as often,
# they doubled the checks of every route that spills: each machine of an app in several
# regions got two connections per `inter` from every edge. They are checked every 10 s, and a
# connection that fails (`observe layer4`) takes one down at once (`retries` and `option
# redispatch` carry the request on to the next server), so a spilled request meets a dead
# machine at most once; a machine coming back is in within 1 s of answering, as above.
SPILL_CHECK = (
    "check inter 10s fastinter 500ms downinter 1s fall 2 rise 1"
    " observe layer4 error-limit 1 on-error mark-down"
)


def check(backend: str) -> str:
    """The health-check words of a machine server of ``backend``."""
    return SPILL_CHECK if spill.route_of(backend) != backend else CHECK


@dataclass(frozen=True, slots=True)
class ServerOp:
    """Add (``before`` None), remove (``after`` None) or update one server of a backend."""

    backend: str
    before: t.Server | None
    after: t.Server | None

    @property
    def name(self) -> str:
        server = self.after or self.before
        assert server is not None
        return server.name

    def inverse(self) -> ServerOp:
        return ServerOp(self.backend, self.after, self.before)

    def commands(self) -> tuple[str, ...]:
        ref = f"{self.backend}/{self.name}"
        old, new = self.before, self.after
        if new is None:
            return (f"disable server {ref}", f"del server {ref}")
        if old is None:
            words = [f"add server {ref} {endpoint(new)}"]
            if new.spill_id is not None:  # balance first: the id is the order (spill.py)
                words.append(f"id {new.spill_id}")
            if new.backup:
                words.append("backup")
            if new.maxconn is not None:
                words.append(f"maxconn {new.maxconn}")
            words.append(f"weight {new.weight}")
            if new.role is t.Role.WAKER:
                words.append("pool-max-conn 0")
            else:
                words.append(check(self.backend))
            add = " ".join(words)
            # a dynamic server's health check starts disabled (HAProxy 2.6)
            health = () if new.role is t.Role.WAKER else (f"enable health {ref}",)
            return (add, *health, f"enable server {ref}") if new.enabled else (add, *health)
        out: list[str] = []
        if (old.address, old.port) != (new.address, new.port):
            out.append(f"set server {ref} addr {new.address} port {new.port}")
        if old.maxconn != new.maxconn:
            out.append(f"set maxconn server {ref} {new.maxconn or 0}")
        if old.weight != new.weight:
            out.append(f"set weight {ref} {new.weight}")
        if old.enabled != new.enabled:
            out.append(f"{'enable' if new.enabled else 'disable'} server {ref}")
        return tuple(out)


@dataclass(frozen=True, slots=True)
class MapOp:
    """Add, remove or change one entry of the replay map (``key`` -> targets)."""

    key: str
    before: str | None
    after: str | None

    def inverse(self) -> MapOp:
        return MapOp(self.key, self.after, self.before)

    def commands(self, path: str) -> tuple[str, ...]:
        if self.after is None:
            return (f"del map {path} {self.key}",)
        if self.before is None:
            return (f"add map {path} {self.key} {self.after}",)
        return (f"set map {path} {self.key} {self.after}",)


Op = ServerOp | MapOp


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do: ``reload`` says why a reload is needed (None: runtime ops suffice).

    ``live`` is the desired table with its servers in the order HAProxy will
    really hold them after the ops; the next plan starts from it.
    """

    reload: str | None
    ops: tuple[Op, ...]
    live: t.RoutingTable

    @property
    def touched(self) -> frozenset[str]:
        """Backends a runtime op touches (map keys start with the backend name)."""
        return frozenset(
            op.backend if isinstance(op, ServerOp) else op.key.split("/", 1)[0] for op in self.ops
        )


def endpoint(server: t.Server) -> str:
    """``addr:port`` as HAProxy parses it (IPv6 in brackets)."""
    if ipaddress.ip_address(server.address).version == 6:
        return f"[{server.address}]:{server.port}"
    return f"{server.address}:{server.port}"


def plan(current: t.RoutingTable | None, desired: t.RoutingTable) -> Plan:
    """The runtime ops taking ``current`` (as HAProxy holds it) to ``desired``, or a reload."""
    if current is None:
        return Plan("initial configuration", (), spill.number_table(desired))
    old_shapes = [(r.shape(), spill.active(r)) for r in current.routes]
    new_shapes = [(r.shape(), spill.active(r)) for r in desired.routes]
    if old_shapes != new_shapes:
        return Plan(_shape_reason(current, desired), (), spill.number_table(desired))
    adds: list[Op] = []
    updates: list[Op] = []
    removes: list[Op] = []
    live_routes: list[t.Route] = []
    for old, new in zip(current.routes, desired.routes, strict=True):
        numbered = spill.number(new, spill.ids(old))
        main = _backend_ops(old.name, spill.main_servers(old), spill.main_servers(numbered))
        spilled = _backend_ops(
            spill.backend(old.name), spill.spill_servers(old), spill.spill_servers(numbered)
        )
        if spill.exhausted(numbered):
            main = f"{new.name}: spill ids exhausted"
        for step in (main, spilled):
            if isinstance(step, str):
                return Plan(step, (), spill.number_table(desired))
            adds.extend(step[0])
            updates.extend(step[1])
            removes.extend(step[2])
        assert not isinstance(main, str)
        live_order = main[3]
        by_name = {s.name: s for s in numbered.servers}
        live_routes.append(replace(numbered, servers=tuple(by_name[n] for n in live_order)))
    map_ops = _map_ops(replay_entries(current), replay_entries(desired))
    map_dels = [op for op in map_ops if op.after is None]
    map_sets = [op for op in map_ops if op.after is not None]
    ops = (*adds, *updates, *map_sets, *map_dels, *removes)
    return Plan(None, ops, replace(desired, routes=tuple(live_routes)))


def _backend_ops(
    backend: str, old: tuple[t.Server, ...], new: tuple[t.Server, ...]
) -> tuple[list[Op], list[Op], list[Op], list[str]] | str:
    """Adds, updates and removes taking one backend from ``old`` to ``new``, and its live order.

    A string instead: why only a reload gets there (a role change, or a
    backup that would land after one it should precede).
    """
    adds: list[Op] = []
    updates: list[Op] = []
    removes: list[Op] = []
    wanted = {s.name: s for s in new}
    live: list[t.Server] = []
    for s in old:
        target = wanted.get(s.name)
        if target is None:
            removes.append(ServerOp(backend, s, None))
        elif target.role is not s.role:
            return f"{backend}/{s.name} changed role"
        else:
            if target != s:
                updates.append(ServerOp(backend, s, target))
            live.append(target)
    have = {s.name for s in old}
    for s in new:
        if s.name not in have:
            adds.append(ServerOp(backend, None, s))
            live.append(s)
    if [s.name for s in live if s.backup] != [s.name for s in new if s.backup]:
        return f"{backend}: backup order changed"
    return adds, updates, removes, [s.name for s in live]


def _shape_reason(current: t.RoutingTable, desired: t.RoutingTable) -> str:
    old = {r.name: (r.shape(), spill.active(r)) for r in current.routes}
    new = {r.name: (r.shape(), spill.active(r)) for r in desired.routes}
    added = sorted(new.keys() - old.keys())
    gone = sorted(old.keys() - new.keys())
    changed = sorted(n for n in old.keys() & new.keys() if old[n][0] != new[n][0])
    spills = sorted(n for n in old.keys() & new.keys() if old[n][1] != new[n][1])
    parts = []
    if added:
        parts.append("routes added: " + ", ".join(added))
    if gone:
        parts.append("routes removed: " + ", ".join(gone))
    if changed:
        parts.append("routes changed: " + ", ".join(changed))
    if spills:  # the frontend rule and the spill backend come and go with remote machines
        parts.append("spill on or off: " + ", ".join(spills))
    return "; ".join(parts) or "route order changed"


def replay_entries(table: t.RoutingTable) -> dict[str, str]:
    """The replay map: where ``fly-replay`` may send a request of each backend.

    ``BE/any`` lists every machine in preference order, ``BE/region/R`` those of
    region R, ``BE/instance/NAME`` one machine. A target is ``name|addr|port``;
    several are joined by commas. Draining machines and the waker are not targets;
    routes with replay off have none.
    """
    out: dict[str, str] = {}
    for route in table.routes:
        if route.mode is not t.Mode.HTTP or not route.replay:
            continue
        machines = [s for s in route.servers if s.role is not t.Role.WAKER and not s.draining]
        if not machines:
            continue
        out[f"{route.name}/any"] = ",".join(_target(s) for s in machines)
        regions: dict[str, list[t.Server]] = {}
        for s in machines:
            regions.setdefault(s.region, []).append(s)
            out[f"{route.name}/instance/{s.name}"] = _target(s)
        for region, servers in regions.items():
            out[f"{route.name}/region/{region}"] = ",".join(_target(s) for s in servers)
    return out


def _target(server: t.Server) -> str:
    return f"{server.name}|{server.address}|{server.port}"


def _map_ops(old: Mapping[str, str], new: Mapping[str, str]) -> list[MapOp]:
    ops = [MapOp(k, old.get(k), v) for k, v in new.items() if old.get(k) != v]
    ops.extend(MapOp(k, v, None) for k, v in old.items() if k not in new)
    return ops
