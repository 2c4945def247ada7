"""BIRD 2 configuration for a host's anycast announcements, rendered from validated values.

Pure: :func:`bird_config` gathers what one host announces (from the desired
world and the announcement decisions of :mod:`providers.network.announce`),
:func:`render_bird` validates it and renders ``templates/bird.conf.j2``.

Safety rule: the BGP export filter is *built from the Network's anycast
pools* and accepts only static routes inside them; and a config whose
announcements are not all inside those pools, or whose pools are the whole
address space, is refused before anything is rendered (``ProviderError``).
The template only ever sees typed, validated values (``ipaddress`` objects,
ints, names made into BIRD symbols here), so nothing from YAML can add a
statement to the config.

Each upstream peer gets one session carrying the channel of its address's
family (IPv4 anycast over IPv4 peers, IPv6 over IPv6 peers).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING

from fleet import model
from fleet.errors import ProviderError

if TYPE_CHECKING:  # jinja2 is imported when a config is rendered (see _environment)
    import jinja2

GRACEFUL_SHUTDOWN = (65535, 0)  # RFC 8326 well-known community
MAX_ASN = 4_294_967_295
_APP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class Export(StrEnum):
    """How one app's addresses are exported right now."""

    ANNOUNCE = "announce"
    GRACEFUL = "graceful"  # still announced, tagged 65535:0 before a planned withdraw


@dataclass(frozen=True, slots=True)
class BgpTimers:
    """BGP session timers in seconds (BIRD's defaults; lower them in labs and tests)."""

    hold: int = 240
    keepalive: int = 80
    connect_delay: int = 5
    connect_retry: int = 120
    error_wait: tuple[int, int] = (60, 300)


LAB_TIMERS = BgpTimers(hold=9, keepalive=3, connect_delay=1, connect_retry=5, error_wait=(1, 5))


@dataclass(frozen=True, slots=True)
class Neighbor:
    """One BGP session; ``name`` is already a BIRD symbol."""

    name: str
    address: model.IPAddress
    asn: int
    source: model.IPAddress | None = None

    @property
    def version(self) -> int:
        return self.address.version


@dataclass(frozen=True, slots=True, order=True)
class Announcement:
    prefix: model.IPNetwork
    app: str
    export: Export = Export.ANNOUNCE


@dataclass(frozen=True, slots=True)
class BirdConfig:
    host: str
    router_id: ipaddress.IPv4Address
    local_asn: int
    neighbors: tuple[Neighbor, ...]
    pools: tuple[model.IPNetwork, ...]
    announcements: tuple[Announcement, ...]
    timers: BgpTimers = field(default_factory=BgpTimers)

    def prefixes(self) -> frozenset[model.IPNetwork]:
        return frozenset(a.prefix for a in self.announcements)


def symbol(name: str, prefix: str = "up") -> str:
    """A BIRD symbol for a peer name: ``ams-upstream`` -> ``up_ams_upstream``."""
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"[:64]


def host_prefix(address: model.IPAddress) -> model.IPNetwork:
    """An anycast address as the single-address route that announces it."""
    return ipaddress.ip_network(address)


def neighbors_of(
    region: model.Region, sources: Mapping[int, model.IPAddress] | None = None
) -> tuple[Neighbor, ...]:
    out = []
    for index, peer in enumerate(region.upstream_peers, start=1):
        name = symbol(peer.name or f"{region.name}_{index}")
        source = sources.get(peer.address.version) if sources else None
        out.append(Neighbor(name, peer.address, peer.asn, source))
    return tuple(out)


def bird_config(
    world: model.DesiredWorld,
    host: str,
    exports: Mapping[str, Export],
    *,
    router_id: ipaddress.IPv4Address | None = None,
    timers: BgpTimers | None = None,
    neighbors: tuple[Neighbor, ...] | None = None,
) -> BirdConfig:
    """What ``host`` announces: every anycast address of each app in ``exports``.

    ``exports`` comes from the health gate and hold-down state machine: an app
    absent from it is withdrawn. ``router_id`` defaults to the host's SSH
    address when it is IPv4; ``neighbors`` to the Region's upstream peers.
    """
    spec = world.fleet.hosts.get(host)
    if spec is None:
        raise ProviderError(f"bird config: no host {host!r} in the fleet")
    region = world.fleet.regions[spec.region]
    if router_id is None:
        try:
            router_id = ipaddress.IPv4Address(spec.ssh.address)
        except ValueError as exc:
            raise ProviderError(f"bird config: host {host} needs an IPv4 router id") from exc
    announcements: list[Announcement] = []
    for app, export in sorted(exports.items()):
        addresses = world.anycast.get(app)
        if addresses is None:
            raise ProviderError(f"bird config: app {app!r} has no anycast addresses")
        announcements.extend(Announcement(host_prefix(a), app, export) for a in addresses.all())
    return BirdConfig(
        host=host,
        router_id=router_id,
        local_asn=region.asn if region.asn is not None else world.fleet.network.asn,
        neighbors=neighbors if neighbors is not None else neighbors_of(region),
        pools=world.fleet.network.anycast_pools,
        announcements=tuple(sorted(announcements, key=lambda a: (a.prefix.version, a.prefix))),
        timers=timers or BgpTimers(),
    )


def _inside(prefix: model.IPNetwork, pool: model.IPNetwork) -> bool:
    if isinstance(prefix, ipaddress.IPv4Network) and isinstance(pool, ipaddress.IPv4Network):
        return prefix.subnet_of(pool)
    if isinstance(prefix, ipaddress.IPv6Network) and isinstance(pool, ipaddress.IPv6Network):
        return prefix.subnet_of(pool)
    return False


def validate(config: BirdConfig) -> None:
    """Refuse anything that could export outside the pools or break the config's syntax."""
    problems: list[str] = []
    for pool in config.pools:
        if pool.prefixlen == 0:
            problems.append(f"anycast pool {pool} is the whole address space")
    for item in config.announcements:
        if not any(_inside(item.prefix, pool) for pool in config.pools):
            problems.append(f"{item.prefix} ({item.app}) is outside the anycast pools")
    problems += [
        f"app name {a.app!r} cannot appear in a config"
        for a in config.announcements
        if not _APP.fullmatch(a.app)
    ]
    asns = [config.local_asn, *(n.asn for n in config.neighbors)]
    problems += [f"ASN {a} out of range" for a in asns if not 1 <= a <= MAX_ASN]
    names = [n.name for n in config.neighbors]
    problems += [f"peer name {n!r} is not a BIRD symbol" for n in names if not _SYMBOL.fullmatch(n)]
    if len(set(names)) != len(names):
        problems.append("two upstream peers share a name")
    for n in config.neighbors:
        if n.source is not None and n.source.version != n.version:
            problems.append(f"peer {n.name}: source address family differs from the peer's")
    t = config.timers
    values = (t.hold, t.keepalive, t.connect_delay, t.connect_retry, *t.error_wait)
    if any(v <= 0 for v in values) or t.keepalive >= t.hold or t.hold < 3:
        problems.append(f"invalid BGP timers {t}")
    if problems:
        raise ProviderError(f"bird config for {config.host}: " + "; ".join(problems))


@cache
def _environment() -> jinja2.Environment:
    # Imported here: the planner imports this module for its pure parts (specs,
    # checks) on every `reconcile plan`/`apply`, which render no BIRD config.
    import jinja2  # noqa: PLC0415

    return jinja2.Environment(
        loader=jinja2.PackageLoader("providers.network", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - BIRD config, not HTML; values are typed and validated
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _by_version(items: Iterable[model.IPNetwork], version: int) -> list[model.IPNetwork]:
    return [i for i in items if i.version == version]


def render_bird(config: BirdConfig) -> str:
    """The host's complete ``bird.conf``; raises ProviderError for an unsafe config."""
    validate(config)
    families = {}
    for version in (4, 6):
        families[version] = {
            "pools": _by_version(config.pools, version),
            "routes": [a for a in config.announcements if a.prefix.version == version],
            "graceful": [
                a.prefix
                for a in config.announcements
                if a.prefix.version == version and a.export is Export.GRACEFUL
            ],
        }
    return (
        _environment()
        .get_template("bird.conf.j2")
        .render(c=config, families=families, gshut=GRACEFUL_SHUTDOWN)
    )


@dataclass(frozen=True, slots=True)
class Downstream:
    """An edge host as the upstream router peers with it (lab and tests)."""

    name: str
    address: model.IPAddress
    asn: int


def render_upstream(
    *,
    router_id: ipaddress.IPv4Address,
    asn: int,
    downstreams: Iterable[Downstream],
    timers: BgpTimers = LAB_TIMERS,
    clients: Iterable[Downstream] = (),
) -> str:
    """An upstream router's ``bird.conf`` for the lab: ECMP into the kernel, RFC 8326 honoured.

    Not used on fleet hosts: it stands in for a region's provider router.
    ``clients`` are sessions to which it passes on what the edges announce
    (the lab's client network), graceful-shutdown community included.
    """
    peers = _symbols(downstreams)
    return (
        _environment()
        .get_template("bird-upstream.conf.j2")
        .render(
            router_id=router_id,
            asn=asn,
            peers=peers,
            clients=_symbols(clients),
            t=timers,
            gshut=GRACEFUL_SHUTDOWN,
        )
    )


def _symbols(peers: Iterable[Downstream]) -> list[Downstream]:
    out = list(peers)
    for p in out:
        if not _SYMBOL.fullmatch(p.name):
            raise ProviderError(f"peer name {p.name!r} is not a BIRD symbol")
    return out


@dataclass(frozen=True, slots=True)
class Preferred:
    """One upstream as the lab's client network sees it; higher ``preference`` wins."""

    peer: Downstream
    preference: int


def render_client(
    *,
    router_id: ipaddress.IPv4Address,
    asn: int,
    upstreams: Iterable[Preferred],
    pools: Iterable[model.IPNetwork],
    timers: BgpTimers = LAB_TIMERS,
) -> str:
    """The lab client network's ``bird.conf``: learn the anycast pools from every upstream.

    One best route per prefix goes into the kernel: the upstream with the
    highest preference, unless its route carries 65535:0; when an upstream
    withdraws, the next one's route takes over (a real failover, no default
    route). Only prefixes inside ``pools`` are accepted.
    """
    ups = list(upstreams)
    _symbols(u.peer for u in ups)
    nets = list(pools)
    if any(n.prefixlen == 0 for n in nets):
        raise ProviderError("client: an anycast pool is the whole address space")
    return (
        _environment()
        .get_template("bird-client.conf.j2")
        .render(
            router_id=router_id,
            asn=asn,
            upstreams=ups,
            pools={v: _by_version(nets, v) for v in (4, 6)},
            t=timers,
            gshut=GRACEFUL_SHUTDOWN,
        )
    )
