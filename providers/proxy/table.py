"""The routing table of one host's edge proxy: pure, frozen values.

The reconciler computes it from the desired world and what it observed of
every machine; the host agent hands it to :class:`providers.proxy.proxy.EdgeProxy`.
Everything HAProxy does follows from this table, so it is the one place where
routing *policy* lives:

- one :class:`Route` per app service (and mode): its listeners (anycast
  address, port, handlers) and its servers;
- servers of machines in this host's region are active; machines of other
  regions are ``backup`` servers, nearest region first (Region ``latency_ms``),
  at most ``Settings.max_backups`` of them;
- a machine enters only once healthy; a draining machine stays with weight 0
  (no new requests, in-flight ones finish) until the agent stops it after
  ``kill_timeout``;
- ``hard_limit`` becomes the server's ``maxconn`` (extra requests queue, then
  503 after the queue timeout); above ``soft_limit`` on every local machine a
  route with remote machines spills to them (``providers/proxy/spill.py``
  derives how HAProxy holds that);
- with ``auto_start_machines`` the host's waker is the first backup server,
  enabled while this host has a stopped machine of the app to start;
- ``fly_replay: false`` (per service) drops the per-request work that keeps
  HTTP requests replayable.

Purely computational: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from fleet import compile as fleet_compile
from fleet import model
from fleet.errors import ProviderError

ACTIVE_WEIGHT = 100
WAKER_NAME = "waker"
UNKNOWN_LATENCY_MS = 1_000_000
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_EMPTY_PORTS: Mapping[int, int] = MappingProxyType({})


class Mode(StrEnum):
    """How HAProxy handles a route: HTTP (Host maps, replay, redirects) or raw TCP."""

    HTTP = "http"
    TCP = "tcp"


class Role(StrEnum):
    LOCAL = "local"
    REMOTE = "remote"
    WAKER = "waker"


class MachineState(StrEnum):
    """What the reconciler observed of a machine, as far as routing cares."""

    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class MachineView:
    """One observed machine: where it runs, its private address, its state.

    ``published`` maps an internal port to the port the machine is really
    reachable on (as ``fleet-agent machine run --publish`` does); empty means
    the internal port itself. ``address`` defaults to the machine's stable
    private address inside its host's prefix.
    """

    slot: model.MachineSlot
    host: str
    state: MachineState
    address: str | None = None
    published: Mapping[int, int] = field(default_factory=lambda: _EMPTY_PORTS)


@dataclass(frozen=True, slots=True)
class Listener:
    """One bound address:port and what to do there."""

    address: str
    port: int
    tls: bool
    http: bool
    force_https: bool = False


@dataclass(frozen=True, slots=True)
class Server:
    """One HAProxy server line: a machine (or the waker) behind a route."""

    name: str
    role: Role
    address: str
    port: int
    region: str = ""
    machine: str = ""
    maxconn: int | None = None
    draining: bool = False
    enabled: bool = True
    # HAProxy id of this machine's server in the route's spill backend (providers/proxy/spill.py):
    # bookkeeping of what HAProxy holds, not routing policy, so equality ignores it
    spill_id: int | None = field(default=None, compare=False)

    @property
    def backup(self) -> bool:
        return self.role is not Role.LOCAL

    @property
    def weight(self) -> int:
        return 0 if self.draining else ACTIVE_WEIGHT


@dataclass(frozen=True, slots=True)
class Route:
    """One app service in one mode: HAProxy backend ``name`` and its servers."""

    app: str
    service: int
    mode: Mode
    listeners: tuple[Listener, ...]
    servers: tuple[Server, ...]
    hostnames: tuple[str, ...] = ()
    soft_limit: int = 20
    hard_limit: int | None = None
    kill_timeout_s: float = 5.0
    replay: bool = True  # HTTP: keep requests replayable and act on `fly-replay` answers

    @property
    def name(self) -> str:
        suffix = "" if self.mode is Mode.HTTP else "_tcp"
        return f"be_{self.app}_{self.service}{suffix}"

    @property
    def auto_start(self) -> bool:
        return any(s.role is Role.WAKER for s in self.servers)

    def server(self, name: str) -> Server | None:
        return next((s for s in self.servers if s.name == name), None)

    def shape(self) -> Route:
        """The route without its servers' runtime-changeable fields: what a reload changes."""
        kept = tuple(Server(s.name, s.role, "", 0) for s in self.servers if s.role is Role.WAKER)
        # hard_limit lives in each server's maxconn (`set maxconn server`) and
        # kill_timeout in the agent: neither is in HAProxy's configuration
        return Route(
            self.app,
            self.service,
            self.mode,
            self.listeners,
            kept,
            self.hostnames,
            self.soft_limit,
            replay=self.replay,
        )


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Every route of one host's proxy."""

    host: str
    region: str
    routes: tuple[Route, ...]

    def route(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)


@dataclass(frozen=True, slots=True)
class Settings:
    """Host-level proxy settings the table needs."""

    domain: str = "fleet.internal"
    waker_address: str = "127.0.0.1"
    waker_port: int = 20000
    # HAProxy sends to the first usable backup only; a few spares cover health-check
    # failover, and every host carrying every remote machine of every app would make
    # the table (and each host's inventory) grow with the whole fleet.
    max_backups: int = 3


def server_name(slot: model.MachineSlot) -> str:
    """HAProxy server name (and fly-replay instance id) of a machine: ``ams.1``."""
    return f"{slot.region}.{slot.index}"


def build(
    world: model.DesiredWorld,
    host: str,
    machines: Iterable[MachineView],
    settings: Settings = Settings(),
    *,
    checked: bool = True,
) -> RoutingTable:
    """The routing table of ``host`` given every observed machine of the fleet.

    ``checked=False`` skips :func:`check`: for the reconciler, whose input is a
    validated fleet and whose tables the agent checks again before HAProxy
    sees them (a plan of a large fleet builds thousands of them).
    """
    fleet = world.fleet
    region = fleet.hosts[host].region
    latency = fleet.regions[region].latency_ms if region in fleet.regions else {}
    by_app: dict[str, list[MachineView]] = {}
    for m in machines:
        by_app.setdefault(m.slot.app, []).append(m)
    routes: list[Route] = []
    waker_port = settings.waker_port
    for app in sorted(fleet.apps.values(), key=lambda a: a.name):
        addresses = world.anycast.get(app.name)
        if addresses is None or not addresses.all():
            continue
        seen = by_app.get(app.name, [])
        for index, service in enumerate(app.services):
            for mode in (Mode.HTTP, Mode.TCP):
                ports = [p for p in service.ports if _mode_of(p) is mode]
                if not ports:
                    continue
                listeners = tuple(
                    Listener(
                        str(a),
                        p.port,
                        model.Handler.TLS in p.handlers,
                        model.Handler.HTTP in p.handlers,
                        p.force_https,
                    )
                    for p in ports
                    for a in addresses.all()
                )
                servers = _servers(
                    world,
                    service,
                    machines=seen,
                    region=region,
                    latency=latency,
                    max_backups=settings.max_backups,
                )
                if service.auto_start_machines:
                    stopped = any(m.host == host and m.state is MachineState.STOPPED for m in seen)
                    waker = Server(
                        WAKER_NAME,
                        Role.WAKER,
                        settings.waker_address,
                        waker_port,
                        enabled=stopped,
                    )
                    waker_port += 1
                    servers = _insert_waker(servers, waker)
                routes.append(
                    Route(
                        app=app.name,
                        service=index,
                        mode=mode,
                        listeners=listeners,
                        servers=servers,
                        hostnames=(f"{app.name}.{settings.domain}",),
                        soft_limit=service.concurrency.soft_limit,
                        hard_limit=service.concurrency.hard_limit,
                        kill_timeout_s=app.kill_timeout_s,
                        replay=service.fly_replay,
                    )
                )
    table = RoutingTable(host, region, tuple(routes))
    if checked:
        check(table)
    return table


def _mode_of(port: model.Port) -> Mode:
    return Mode.HTTP if model.Handler.HTTP in port.handlers else Mode.TCP


def _servers(
    world: model.DesiredWorld,
    service: model.Service,
    *,
    machines: list[MachineView],
    region: str,
    latency: Mapping[str, int],
    max_backups: int,
) -> tuple[Server, ...]:
    """Local-region machines (all), then the nearest ``max_backups`` of other regions."""
    local: list[Server] = []
    remote: list[tuple[int, str, int, MachineView]] = []
    for m in machines:
        if m.state not in (MachineState.HEALTHY, MachineState.DRAINING):
            continue
        if m.slot.region == region:
            server = _server(world, service, m, Role.LOCAL)
            if server is not None:
                local.append(server)
        else:
            distance = latency.get(m.slot.region, UNKNOWN_LATENCY_MS)
            remote.append((distance, m.slot.region, m.slot.index, m))
    local.sort(key=lambda s: s.name)
    remote.sort(key=lambda r: r[:3])
    backups: list[Server] = []
    for *_, m in remote:
        if len(backups) >= max_backups:
            break  # only the nearest few: a server object per machine per region is costly
        server = _server(world, service, m, Role.REMOTE)
        if server is not None:
            backups.append(server)
    return (*local, *backups)


def _server(
    world: model.DesiredWorld, service: model.Service, m: MachineView, role: Role
) -> Server | None:
    address = m.address
    if address is None:
        prefix = world.host_prefixes.get(m.host)
        if prefix is None:
            return None  # a host the fleet no longer has: nothing to route to
        address = str(fleet_compile.machine_address(prefix, m.slot.id))
    return Server(
        name=server_name(m.slot),
        role=role,
        address=address,
        port=m.published.get(service.internal_port, service.internal_port),
        region=m.slot.region,
        machine=m.slot.id,
        maxconn=service.concurrency.hard_limit,
        draining=m.state is MachineState.DRAINING,
    )


def _insert_waker(servers: tuple[Server, ...], waker: Server) -> tuple[Server, ...]:
    """The waker goes first among backups: a local start beats a trip to another region."""
    local = tuple(s for s in servers if not s.backup)
    return (*local, waker, *(s for s in servers if s.backup))


def check(table: RoutingTable) -> None:
    """Refuse a malformed table with every problem listed, before it reaches HAProxy."""
    problems: list[str] = []
    names: set[str] = set()
    tcp_binds: dict[tuple[str, int], str] = {}
    http_binds: dict[tuple[str, int], bool] = {}
    for route in table.routes:
        where = route.name
        if not _NAME.match(route.name):
            problems.append(f"{where}: invalid route name")
        if route.name in names:
            problems.append(f"{where}: duplicate route")
        names.add(route.name)
        if route.hard_limit is not None and route.hard_limit < 1:
            problems.append(f"{where}: hard_limit must be at least 1")
        for h in route.hostnames:
            if not _HOSTNAME.match(h):
                problems.append(f"{where}: invalid hostname {h!r}")
        for lst in route.listeners:
            problems.extend(f"{where}: listener {p}" for p in _address_problems(lst.address))
            if not 0 < lst.port < 65536:
                problems.append(f"{where}: listener port {lst.port} out of range")
            if lst.http != (route.mode is Mode.HTTP):
                problems.append(f"{where}: listener {lst.port} does not match mode {route.mode}")
            key = (lst.address, lst.port)
            if route.mode is Mode.TCP:
                if key in tcp_binds or key in http_binds:
                    problems.append(f"{where}: {lst.address}:{lst.port} already bound")
                tcp_binds[key] = route.name
            else:
                if key in tcp_binds or http_binds.get(key, lst.tls) != lst.tls:
                    problems.append(f"{where}: {lst.address}:{lst.port} bound twice differently")
                http_binds[key] = lst.tls
        seen: set[str] = set()
        for s in route.servers:
            if not _NAME.match(s.name):
                problems.append(f"{where}: invalid server name {s.name!r}")
            if s.name in seen:
                problems.append(f"{where}: duplicate server {s.name}")
            seen.add(s.name)
            problems.extend(f"{where}/{s.name}: {p}" for p in _address_problems(s.address))
            if not 0 < s.port < 65536:
                problems.append(f"{where}/{s.name}: port {s.port} out of range")
            if s.maxconn is not None and s.maxconn < 1:
                problems.append(f"{where}/{s.name}: maxconn must be at least 1")
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ProviderError(f"proxy: malformed routing table: {shown}{more}")


def _address_problems(address: str) -> list[str]:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return [f"invalid address {address!r}"]
    return []
