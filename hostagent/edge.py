"""The ``route`` kind: every app's routes on this host's edge proxy (HAProxy).

The inventory holds one ``route[<app>]`` entry per app (the reconciler's spec:
:mod:`providers.proxy.spec`). Whatever changes, the handler rebuilds the
host's whole :class:`~providers.proxy.table.RoutingTable` from every route
spec HAProxy serves (``proxy/routes.json``, changed under the edge lock, so
concurrent applies never undo each other) and hands it to
:class:`~providers.proxy.proxy.EdgeProxy`, which changes HAProxy through the
runtime API when it can and a seamless reload when it must.

HAProxy outlives the short ``fleet-agent apply`` process that starts it (its
own session; its PID in ``proxy/haproxy/haproxy.pid``). Every process that
touches it (apply, the supervisor's ticker) takes ``proxy/edge.lock``, resumes
from ``proxy/table.json`` (the table exactly as HAProxy holds it) and saves it
back. A malformed spec or a table HAProxy refuses leaves HAProxy serving the
last good table; the reason is kept in ``proxy/alarm`` and every route
resource reports it in observe until an update succeeds.

HAProxy binds the anycast addresses ``transparent`` (non-local bind): the
announcement kind puts them on ``lo`` while the host may serve them, and takes
them off when it withdraws; the proxy keeps listening either way.

A server that leaves a route first drains: it stays with weight 0 until its
sessions end or the app's ``kill_timeout`` passes, then it is removed.

A route's waker (the first backup of an auto-start route) is enabled while a
local machine of the app is stopped, and stays enabled after the machine
leaves "stopped" until HAProxy's checks see one of the route's local machine
servers UP (at most :data:`WAKE_WINDOW_S` after the start): HAProxy holds the
machine's server DOWN until its next check passes, and without the waker the
route would have no usable server meanwhile (:func:`still_waking`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from fleet.errors import ProviderError
from hostagent import handlers as H
from providers.proxy import certs, haproxy, proxy, reload, runtime, spec, spill
from providers.proxy import table as t

log = logging.getLogger(__name__)
Json = Any
# The apps with a stopped local machine, asked anew each time (it changes under our feet)
StoppedApps = Callable[[], frozenset[str]]
# The apps with a starting or running local machine: when the latest one started (wall clock)
StartedApps = Callable[[], Mapping[str, float]]
# The stopped local machines, by slot id (``hello/ams#1``, a server's ``machine``)
StoppedMachines = Callable[[], frozenset[str]]
# How long after its machine's start a route's waker may stay on while HAProxy sees none of
# the route's local machines UP: the waker's own start timeout (hostagent.wake), so a machine
# that never comes up does not keep the remote backups from serving for longer than that.
WAKE_WINDOW_S = 45.0
KIND = "route"
DRAIN_POLL_S = 0.1
T = TypeVar("T")
# how many supervisor passes in a row HAProxy may leave the gate's question unanswered
# before this host counts as unable to serve (HAProxyHealth)
FALL = 3
# how long a drain step waits for the servers it restores to pass this HAProxy's checks
RESTORE_WAIT_S = 10.0
# the start of an alarm raised by a refresh (a change with no override), not by an update
REFRESH = "refresh: "


@dataclass(frozen=True, slots=True)
class EdgePaths:
    """Where this host's proxy keeps its state, under the agent's data directory."""

    root: Path

    @staticmethod
    def of(data_dir: Path) -> EdgePaths:
        return EdgePaths(data_dir / "proxy")

    @property
    def haproxy_dir(self) -> Path:
        return self.root / "haproxy"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def ca(self) -> Path:
        """The CA that signs this host's per-app certificates (``ca.pem``, ``ca.key``)."""
        return self.root / "ca"

    @property
    def table(self) -> Path:
        return self.root / "table.json"

    @property
    def alarm(self) -> Path:
        return self.root / "alarm"

    @property
    def specs(self) -> Path:
        """Every route spec HAProxy serves, by app: the source of the host's table."""
        return self.root / "routes.json"

    @property
    def lock(self) -> Path:
        return self.root / "edge.lock"

    def options(self) -> haproxy.Options:
        return haproxy.Options(state_dir=self.haproxy_dir, certs_dir=self.certs)


class Edge:
    """This host's edge proxy as seen by any agent process: lock, saved table, alarm."""

    def __init__(
        self, paths: EdgePaths, host: str, settings: t.Settings = spec.DEFAULT_SETTINGS
    ) -> None:
        self.paths = paths
        self.host = host
        self.settings = settings

    def warm(self) -> None:
        """Render the saved table once, unsaved: this compiles HAProxy's template into
        the process's cache (0.1-0.3 s), so processes forked afterwards (the request
        channel's, :mod:`hostagent.channel`) change routes without compiling it again."""
        saved = self.saved()
        if saved is not None:
            haproxy.render(saved, self.paths.options())

    @contextlib.contextmanager
    def locked(self) -> Iterator[proxy.EdgeProxy]:
        """The proxy, resumed from the saved table, under the host-wide edge lock."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with open(self.paths.lock, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            edge = proxy.EdgeProxy(self.paths.options())
            try:
                saved = self.saved()
                if saved is not None:
                    edge.resume(saved)
                yield edge
            finally:
                edge.session.close()
                if edge.live is not None and edge.process.running():
                    _write(self.paths.table, json.dumps(spec.table_to_json(edge.live)))
                fcntl.flock(lock, fcntl.LOCK_UN)

    def busy(self) -> bool:
        """Whether another process (or thread) holds the edge lock right now."""
        with open(self.paths.lock, "a+") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(probe, fcntl.LOCK_UN)
            return False

    def saved(self) -> t.RoutingTable | None:
        try:
            return spec.table_from_json(json.loads(self.paths.table.read_text()))
        except (OSError, ValueError, ProviderError):
            return None

    def alarm(self) -> str | None:
        try:
            return self.paths.alarm.read_text().strip() or None
        except OSError:
            return None

    def _set_alarm(self, text: str | None) -> None:
        if text is None:
            self.paths.alarm.unlink(missing_ok=True)
        else:
            _write(self.paths.alarm, text + "\n")

    def specs(self) -> dict[str, Mapping[str, Json]]:
        try:
            raw = json.loads(self.paths.specs.read_text())
        except (OSError, ValueError):
            return {}
        return dict(raw) if isinstance(raw, dict) else {}

    def table(
        self,
        specs: Mapping[str, Mapping[str, Json]],
        stopped: frozenset[str],
        waking: Collection[str] = frozenset(),
    ) -> t.RoutingTable:
        """The host's table from route specs (a malformed one raises ProviderError)."""
        routes: list[t.Route] = []
        region = ""
        for rid, value in sorted(specs.items()):
            routes += spec.from_json(value, f"route[{rid}]")
            region = region or str(value.get("region", ""))
        return spec.assemble(
            self.host, region, routes, stopped_apps=stopped, settings=self.settings, waking=waking
        )

    def change(
        self,
        override: Mapping[str, Mapping[str, Json] | None],
        stopped: StoppedApps,
        emit: H.Emit,
        started: StartedApps = dict,
    ) -> None:
        """Under the edge lock: the served specs with ``override`` (None: removed), made live.

        Concurrent applies (one per action) serialise here, each starting from
        what the previous one made live, so none undoes another's route. The
        stopped apps (each waker's state) are asked under the lock too: a set
        asked before it could be older than the table the previous holder
        made live, and would undo its wakers. So are the routes still waking
        (their waker stays on, :func:`still_waking`), from the live table and
        HAProxy's server states.
        """
        with self.locked() as edge:
            before = self.specs()
            specs = dict(before)
            for rid, value in override.items():
                if value is None:
                    specs.pop(rid, None)
                else:
                    specs[rid] = dict(value)
            if specs == before and edge.live is not None and not override:
                pass  # a refresh (wakers, a dead HAProxy): go on, the table may differ
            elif specs == before and (edge.live is not None or not specs):
                return  # nothing changes (e.g. removing a route that never went live)
            try:
                now_stopped = stopped()
                table = self.table(specs, now_stopped, _waking(edge, now_stopped, started))
                if table.routes:
                    self._bring(edge, table, emit)
                    if not override:
                        align_wakers(edge, emit)
                else:
                    edge.stop()
                    self.paths.table.unlink(missing_ok=True)
                    emit("proxy-stopped", "no routes left")
            except ProviderError as exc:
                self._set_alarm(f"{REFRESH}{exc}" if not override else str(exc))
                raise
            # An update's alarm stays until an update succeeds: a refresh (the supervisor's,
            # an autostop's) serves the same specs, so it clears only an alarm of its own.
            if override or (self.alarm() or "").startswith(REFRESH):
                self._set_alarm(None)
            _write(self.paths.specs, json.dumps(specs, sort_keys=True))

    def _bring(self, edge: proxy.EdgeProxy, table: t.RoutingTable, emit: H.Emit) -> None:
        t.check(table)
        ca = certs.load_or_create_authority(self.paths.ca)
        certs.write_app_certificates(ca, table, self.paths.certs)
        if edge.live is None:
            edge.start(table)
            emit("proxy-started", f"HAProxy serving {len(table.routes)} route(s)")
            return
        draining = with_leavers_draining(edge.live, table)
        if draining != table:
            result = edge.apply(draining)
            emit("draining", ", ".join(sorted(result.touched)))
            wait_drained(edge, edge.live or draining, table)
        asked = newly_draining(edge.live, table)
        restored = newly_restored(edge.live, table)
        if asked and restored:
            # A drain step also restores the previous batch's servers: they take the
            # traffic first, and count as serving once this HAProxy's checks see them
            # UP; draining the next batch before that leaves the route (and the
            # announcement gate) with no server for a check interval.
            first = with_draining_kept(edge.live, table, asked)
            result = edge.apply(first)
            emit("restored", ", ".join(f"{r}/{s}" for r, s in sorted(restored)))
            limit = max(RESTORE_WAIT_S, *asked.values())
            down = wait_up(edge, restored, limit)
            if down:
                # Not fatal (the batch's machines passed their own gates, and the announcement
                # gate withdraws this edge if it is left with no server), but never silent.
                why = (
                    f"{', '.join(f'{r}/{s}' for r, s in sorted(down))} not UP on this edge "
                    f"after {limit:g}s; draining {', '.join(f'{r}/{s}' for r, s in sorted(asked))} "
                    "anyway"
                )
                log.warning("proxy: %s", why)
                emit("restore-slow", why)
        result = edge.apply(table)
        if result.method is not proxy.Method.NOOP:
            emit(f"proxy-{result.method}", f"{result.reason}: {', '.join(sorted(result.touched))}")
        if asked:
            # The reconciler drains a machine it is about to replace in place: answer
            # only once no request is in flight there (or kill_timeout has passed).
            wait_idle(edge, asked)
            emit("drained", ", ".join(f"{r}/{s}" for r, s in sorted(asked)))


def _waking(edge: proxy.EdgeProxy, stopped: frozenset[str], started: StartedApps) -> frozenset[str]:
    """The live table's routes still waking; none when HAProxy cannot say (it died)."""
    if edge.live is None:
        return frozenset()
    try:
        return waking_routes(edge.live, stopped, started, edge.session.servers_state)
    except ProviderError:
        return frozenset()


def waking_routes(
    table: t.RoutingTable,
    stopped: frozenset[str],
    started: StartedApps,
    states: Callable[[], Collection[runtime.ServerState]],
) -> frozenset[str]:
    """:func:`still_waking` now, asking the machines and HAProxy only if a route may be."""
    if not any(r.app not in stopped and _waker_on(r) for r in table.routes):
        return frozenset()
    return still_waking(table, stopped, started(), states(), time.time())


def still_waking(
    table: t.RoutingTable,
    stopped: frozenset[str],
    started: Mapping[str, float],
    states: Collection[runtime.ServerState],
    now: float,
    *,
    window_s: float = WAKE_WINDOW_S,
) -> frozenset[str]:
    """Routes whose waker stays on though no local machine of their app is stopped. Pure.

    A route is still waking while its waker is on in ``table``, its app's
    latest local machine started less than ``window_s`` before ``now``, and
    HAProxy (``show servers state``) holds none of the route's local machine
    servers running (operational state 2, not in maintenance). The waker is a
    backup: once a local machine is UP it gets no new request anyway.
    """
    up = {
        (s.backend, s.name)
        for s in states
        if s.op_state == runtime.OP_RUNNING and not s.maintenance
    }
    return frozenset(
        r.name
        for r in table.routes
        if r.app not in stopped
        and _waker_on(r)
        and now - started.get(r.app, -math.inf) < window_s
        and not any(s.role is t.Role.LOCAL and (r.name, s.name) in up for s in r.servers)
    )


def machine_servers(table: t.RoutingTable, machines: Collection[str]) -> list[str]:
    """``backend/server`` of these machines' local servers, their spill copies too. Pure."""
    refs = []
    for route in table.routes:
        spilled = {s.name for s in spill.spill_servers(route)}
        for s in route.servers:
            if s.role is t.Role.LOCAL and s.machine in machines:
                refs.append(f"{route.name}/{s.name}")
                if s.name in spilled:
                    refs.append(f"{spill.backend(route.name)}/{s.name}")
    return refs


def servers_down(session: runtime.AdminSession, refs: Collection[str]) -> None:
    """Tell HAProxy these servers are down now; its checks bring them back once they answer."""
    for ref in refs:
        command = f"set server {ref} health down"
        answer = session.execute(command).strip()
        if answer:  # not fatal: the health checks notice within seconds
            log.warning("proxy: HAProxy refused %r: %s", command, answer)


def _waker_on(route: t.Route) -> bool:
    return any(s.role is t.Role.WAKER and s.enabled for s in route.servers)


def waker_states(table: t.RoutingTable) -> dict[tuple[str, str], bool]:
    """(route, waker) -> enabled, for every waker of the table. Pure."""
    return {
        (r.name, s.name): s.enabled
        for r in table.routes
        for s in r.servers
        if s.role is t.Role.WAKER
    }


def haproxy_waker_states(
    table: t.RoutingTable, states: Collection[runtime.ServerState]
) -> dict[tuple[str, str], bool]:
    """(route, waker) -> enabled (not in maintenance) as HAProxy holds the table's wakers."""
    wakers = waker_states(table)
    return {(s.backend, s.name): not s.maintenance for s in states if (s.backend, s.name) in wakers}


def align_wakers(edge: proxy.EdgeProxy, emit: H.Emit) -> None:
    """Bring HAProxy's waker states to the live table's where they differ (under the lock).

    The table is what this process believes HAProxy holds; a refresh diffs
    against it, so a waker HAProxy holds otherwise would never be corrected.
    """
    live = edge.live
    if live is None:
        return
    held = haproxy_waker_states(live, edge.session.servers_state())
    for (backend, name), enabled in sorted(waker_states(live).items()):
        if held.get((backend, name), enabled) == enabled:
            continue
        command = f"{'enable' if enabled else 'disable'} server {backend}/{name}"
        answer = edge.session.execute(command)
        if not runtime.succeeded(command, answer):
            raise ProviderError(f"proxy: {command!r} refused: {answer.strip()}")
        log.warning(
            "proxy: waker %s/%s was %s in HAProxy", backend, name, "off" if enabled else "on"
        )
        emit("waker-aligned", f"{backend}/{name} {'enabled' if enabled else 'disabled'}")


def with_leavers_draining(live: t.RoutingTable, new: t.RoutingTable) -> t.RoutingTable:
    """``new``, except that servers it drops from a route it keeps stay, draining, in place.

    Servers keep HAProxy's current order (so no reload is needed for order);
    servers new to a route come after them.
    """
    old = {r.name: r for r in live.routes}
    routes = []
    for r in new.routes:
        before = old.get(r.name)
        if before is None:
            routes.append(r)
            continue
        wanted = {s.name: s for s in r.servers}
        servers = [
            wanted.get(s.name) or replace(s, draining=True)
            for s in before.servers
            if s.name in wanted or s.role is not t.Role.WAKER
        ]
        have = {s.name for s in before.servers}
        servers += [s for s in r.servers if s.name not in have]
        routes.append(replace(r, servers=tuple(servers)))
    return replace(new, routes=tuple(routes))


def newly_draining(
    live: t.RoutingTable | None, new: t.RoutingTable
) -> dict[tuple[str, str], float]:
    """(route, server) -> kill_timeout of the servers ``new`` drains that ``live`` did not."""
    was = _draining(live)
    return {
        (r.name, s.name): r.kill_timeout_s
        for r in new.routes
        for s in r.servers
        if s.draining and (r.name, s.name) not in was
    }


def newly_restored(live: t.RoutingTable | None, new: t.RoutingTable) -> set[tuple[str, str]]:
    """(route, server) that ``live`` drains and ``new`` puts back in rotation."""
    back = {(r.name, s.name) for r in new.routes for s in r.servers if not s.draining}
    return back & _draining(live)


def _draining(table: t.RoutingTable | None) -> set[tuple[str, str]]:
    return {
        (r.name, s.name) for r in (table.routes if table else ()) for s in r.servers if s.draining
    }


def with_draining_kept(
    live: t.RoutingTable | None, new: t.RoutingTable, asked: Mapping[tuple[str, str], float]
) -> t.RoutingTable:
    """``new`` with the servers it newly drains still in rotation (the restore half of a step)."""
    return replace(
        new,
        routes=tuple(
            replace(
                r,
                servers=tuple(
                    replace(s, draining=False) if (r.name, s.name) in asked else s
                    for s in r.servers
                ),
            )
            for r in new.routes
        ),
    )


def wait_up(
    edge: proxy.EdgeProxy, servers: Collection[tuple[str, str]], timeout: float
) -> set[tuple[str, str]]:
    """Wait until HAProxy's checks see these (route, server) UP, at most ``timeout``.

    Returns the ones still not UP when the time is over (empty: all came up).
    """
    deadline = time.monotonic() + timeout
    while True:
        up = {(s.backend, s.name) for s in edge.session.stat() if s.status.startswith("UP")}
        missing = set(servers) - up
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(DRAIN_POLL_S)


def wait_drained(edge: proxy.EdgeProxy, during: t.RoutingTable, final: t.RoutingTable) -> None:
    """Wait until the servers leaving have no sessions, at most their route's kill_timeout."""
    final_names = {(r.name, s.name) for r in final.routes for s in r.servers}
    wait_idle(
        edge,
        {
            (r.name, s.name): r.kill_timeout_s
            for r in during.routes
            for s in r.servers
            if (r.name, s.name) not in final_names
        },
    )


def wait_idle(edge: proxy.EdgeProxy, leaving: Mapping[tuple[str, str], float]) -> None:
    """Wait until these (route, server) have no session nor queue, at most the longest timeout."""
    if not leaving:
        return
    deadline = time.monotonic() + max(leaving.values())
    while time.monotonic() < deadline:
        busy = [
            s
            for s in edge.session.stat()
            # a spilled request to the server counts too (providers/proxy/spill.py)
            if (spill.route_of(s.backend), s.name) in leaving and (s.current > 0 or s.queued > 0)
        ]
        if not busy:
            return
        time.sleep(DRAIN_POLL_S)


class RouteHandler:
    """The ``route`` resource kind: one entry per app, one HAProxy for all of them."""

    kind = KIND

    def __init__(
        self,
        edge: Edge,
        stopped_apps: StoppedApps = frozenset,
        started_apps: StartedApps = dict,
        stopped_machines: StoppedMachines = frozenset,
    ) -> None:
        self.edge = edge
        self.stopped_apps = stopped_apps
        self.started_apps = started_apps
        self.stopped_machines = stopped_machines

    def change(
        self,
        override: Mapping[str, Mapping[str, Json] | None],
        emit: H.Emit,
        stopped: StoppedApps | None = None,
    ) -> None:
        """:meth:`Edge.change` with this host's machines (or ``stopped`` instead of its own)."""
        self.edge.change(override, stopped or self.stopped_apps, emit, self.started_apps)

    def create(self, rid: str, spec_: Mapping[str, Json], emit: H.Emit) -> None:
        self.change({rid: spec_}, emit)

    def update(
        self, rid: str, old: Mapping[str, Json], spec_: Mapping[str, Json], emit: H.Emit
    ) -> None:
        self.change({rid: spec_}, emit)

    def delete(self, rid: str, spec_: Mapping[str, Json], emit: H.Emit) -> None:
        self.change({rid: None}, emit)

    def start(self, rid: str, spec_: Mapping[str, Json], emit: H.Emit) -> None:
        self.change({}, emit)

    def observe(self, rid: str, spec_: Mapping[str, Json]) -> H.Observed:
        alarm = self.edge.alarm()
        saved = self.edge.saved()
        serving = (
            saved is not None
            and any(r.app == rid for r in saved.routes)
            and reload.HAProxyProcess(self.edge.paths.options()).adopt()
        )
        runtime: dict[str, Json] = {}
        if alarm:
            runtime["alarm"] = alarm
        state = "running" if serving else "stopped"  # the protocol's run states
        health = "passing" if serving and not alarm else "critical"
        return H.Observed(state=state, health=health, runtime=runtime)

    def healthy(self, rid: str, spec_: Mapping[str, Json]) -> bool:
        return self.observe(rid, spec_).health == "passing"

    def unmanaged(self, managed: Collection[str]) -> list[tuple[str, H.Observed]]:
        return []


class Ticker:
    """The supervisor's edge duty: restart a dead HAProxy, keep wakers matching stopped machines.

    Cheap when nothing changed (a PID check, the machines' states and one
    ``show servers state``). The table is rebuilt when HAProxy died or when
    the waker states the stopped machines (and the routes still waking) call
    for differ from the saved table's or from HAProxy's: compared with what
    is there, not with what this ticker last wrote, so a table another
    process made live with an outdated set of stopped apps is corrected on
    the next tick.
    """

    def __init__(self, handler: RouteHandler) -> None:
        self.handler = handler

    def __call__(self, now: float) -> list[str]:
        edge = self.handler.edge
        saved = edge.saved()
        if saved is None:
            return []
        alive = reload.HAProxyProcess(edge.paths.options()).adopt()
        if alive:
            self._down_stopped(saved)
        if alive and not self._astray(saved):
            return []
        if alive and edge.busy():
            # An apply is changing the edge: it asks the stopped apps under the lock, and
            # until it saves, HAProxy may be ahead of the saved table (a drain step waits
            # there up to kill_timeout). Do not hold up the supervisor: look again next tick.
            return []
        self.handler.change({}, lambda *_: None)
        return [] if alive else ["restarted HAProxy"]

    def _down_stopped(self, saved: t.RoutingTable) -> None:
        """Servers of machines that stopped go DOWN now, not when checks time out.

        A machine stopped other than by autostop (which does this itself) kept
        its server UP for seconds (a check to a stopped VM's address times out
        rather than being refused: ~6 s in the lab), and requests meanwhile
        went to it (then queued, some to 503) instead of to the waker.
        """
        stopped = self.handler.stopped_machines()
        refs = machine_servers(saved, stopped) if stopped else []
        if not refs:
            return
        try:
            with runtime.AdminSession(self.handler.edge.paths.options().admin_socket, 1.0) as s:
                up = {
                    f"{x.backend}/{x.name}"
                    for x in s.servers_state()
                    if x.op_state == runtime.OP_RUNNING
                }
                servers_down(s, [ref for ref in refs if ref in up])
        except ProviderError:
            return  # HAProxy cannot say now (a reload): its checks will

    def _astray(self, saved: t.RoutingTable) -> bool:
        edge = self.handler.edge
        stopped = self.handler.stopped_apps()
        try:
            with runtime.AdminSession(edge.paths.options().admin_socket, 1.0) as session:
                states = functools.cache(session.servers_state)  # once a tick, when needed
                waking = waking_routes(saved, stopped, self.handler.started_apps, states)
                table = spec.assign_wakers(saved, stopped, edge.settings, waking)
                wanted = waker_states(table)
                if wanted != waker_states(saved):
                    return True
                held = states()
        except ProviderError:
            return False  # HAProxy cannot say now (a reload): the saved table agrees
        return any(
            enabled != wanted.get(key, enabled)
            for key, enabled in haproxy_waker_states(saved, held).items()
        )


class HAProxyHealth:
    """:class:`hostagent.edgehealth.EdgeHealth` from HAProxy's stats socket.

    The proxy is healthy while its admin socket answers; an app's healthy
    backends are its machine servers HAProxy's health checks find UP (local
    or, over the mesh, remote), draining ones not counted.

    A question HAProxy leaves unanswered (its socket's timeout: a loaded
    host) keeps the last answer, until ``fall`` in a row: the gate asks every
    supervisor pass, and one slow answer used to withdraw every app of the
    host at once, moving every client's flows (and again when it
    re-announced). A proxy that is gone (its socket refuses or is missing) is
    unhealthy at once: every second it stays announced, its clients' packets
    are lost.
    """

    def __init__(self, edge: Edge, timeout_s: float = 1.0, fall: int = FALL) -> None:
        self.edge = edge
        self.timeout_s = timeout_s
        self._proxy = _Kept[bool](fall, False)
        self._backends = _Kept[Mapping[str, int]](fall, {})

    def _session(self) -> runtime.AdminSession:
        return runtime.AdminSession(self.edge.paths.options().admin_socket, self.timeout_s)

    def proxy_healthy(self) -> bool:
        def ask() -> bool:
            with self._session() as session:
                return "Pid:" in session.execute("show info")

        return self._proxy.ask(ask, gone=False)

    def healthy_backends(self) -> Mapping[str, int]:
        table = self.edge.saved()
        if table is None:
            return {}

        def ask() -> Mapping[str, int]:
            with self._session() as session:
                return count_up(table, session.stat())

        return self._backends.ask(ask, gone=count_up(table, []))


class _Kept(Generic[T]):
    """HAProxy's last answer to one question, kept while up to ``fall`` - 1 in a row time out."""

    def __init__(self, fall: int, first: T) -> None:
        self.fall = fall
        self.last = first
        self.missed = 0  # questions in a row without an answer (``fall`` once HAProxy is gone)

    def ask(self, question: Callable[[], T], *, gone: T) -> T:
        """``question()``'s answer; on a timeout the last one, else (or ``fall`` times) ``gone``."""
        try:
            answer = question()
        except ProviderError as exc:
            # a timeout: HAProxy took the question but is busy; anything else: it is gone
            self.missed = self.missed + 1 if isinstance(exc.__cause__, TimeoutError) else self.fall
            return self.last if self.missed < self.fall else gone
        self.last, self.missed = answer, 0
        return answer


def count_up(table: t.RoutingTable, stats: Collection[runtime.ServerStat]) -> dict[str, int]:
    """Per app: distinct machines with an UP, non-draining server in any of its routes. Pure.

    An enabled waker counts as one: this host has a stopped machine of the app
    that the next request starts, so the host can serve it (without this, an
    app whose machines all autostopped would be withdrawn everywhere and no
    request could ever reach a waker).
    """
    up = {(s.backend, s.name) for s in stats if s.status.startswith("UP")}
    machines: dict[str, set[str]] = {r.app: set() for r in table.routes}
    for r in table.routes:
        for s in r.servers:
            if s.role is t.Role.WAKER and s.enabled:
                machines[r.app].add(f"{r.name}/{s.name}")
            if s.role is not t.Role.WAKER and not s.draining and (r.name, s.name) in up:
                machines[r.app].add(s.machine)
    return {app: len(found) for app, found in machines.items()}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
