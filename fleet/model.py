"""The desired-state model: frozen, typed objects built from validated fleet documents.

Nothing past the loader sees raw dicts: the loader validates a document with its
JSON Schema, then :mod:`fleet.build` turns it into these objects, applying
fly.toml-compatible defaults. Durations are seconds (float), memory is MiB (int).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

API_VERSION = "fleet/v1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_EMPTY: Mapping[str, str] = MappingProxyType({})


class Kind(StrEnum):
    NETWORK = "Network"
    REGION = "Region"
    HOST = "Host"
    APP = "App"


class Hypervisor(StrEnum):
    QEMU = "qemu"
    FIRECRACKER = "firecracker"
    CLOUD_HYPERVISOR = "cloud-hypervisor"


class CpuKind(StrEnum):
    SHARED = "shared"
    PERFORMANCE = "performance"


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Handler(StrEnum):
    HTTP = "http"
    TLS = "tls"


class ConcurrencyType(StrEnum):
    CONNECTIONS = "connections"
    REQUESTS = "requests"


class AutoStop(StrEnum):
    OFF = "off"
    STOP = "stop"
    SUSPEND = "suspend"


class CheckType(StrEnum):
    HTTP = "http"
    TCP = "tcp"


class Strategy(StrEnum):
    ROLLING = "rolling"
    CANARY = "canary"
    BLUEGREEN = "bluegreen"
    IMMEDIATE = "immediate"


class RestartPolicy(StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a document was defined: file (relative to the fleet root) and 1-based line."""

    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Network:
    """Fleet-wide network settings (at most one document; defaults otherwise)."""

    name: str
    private_prefix: ipaddress.IPv6Network
    anycast_pools: tuple[IPNetwork, ...]
    wireguard_port: int
    asn: int
    shared_cpu_overcommit: float
    source: Source | None = None


DEFAULT_NETWORK = Network(
    name="default",
    private_prefix=ipaddress.IPv6Network("fdf1:ee70::/48"),
    anycast_pools=(),
    wireguard_port=51820,
    asn=65000,
    shared_cpu_overcommit=4.0,
)


@dataclass(frozen=True, slots=True)
class UpstreamPeer:
    address: IPAddress
    asn: int
    name: str


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    jurisdiction: str
    asn: int | None
    upstream_peers: tuple[UpstreamPeer, ...]
    latency_ms: Mapping[str, int]
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class Gpus:
    model: str
    count: int


@dataclass(frozen=True, slots=True)
class Capacity:
    cpus: int
    memory_mb: int
    gpus: tuple[Gpus, ...] = ()

    def gpu_count(self, model: str) -> int:
        return sum(g.count for g in self.gpus if g.model == model)


@dataclass(frozen=True, slots=True)
class SSHTarget:
    address: str
    port: int
    user: str
    host_key: str | None


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    region: str
    ssh: SSHTarget
    capacity: Capacity
    hypervisor: Hypervisor
    labels: Mapping[str, str]
    cordoned: bool
    wireguard_endpoint: str | None
    private_prefix: ipaddress.IPv6Network | None
    source: Source | None = None
    # None: not said; see fleet.compile.edge_hosts for what that means
    edge: bool | None = None


@dataclass(frozen=True, slots=True)
class VMSize:
    cpus: int
    memory_mb: int
    cpu_kind: CpuKind
    gpus: Gpus | None


@dataclass(frozen=True, slots=True)
class Port:
    port: int
    handlers: tuple[Handler, ...]
    force_https: bool


@dataclass(frozen=True, slots=True)
class Concurrency:
    type: ConcurrencyType
    soft_limit: int
    hard_limit: int | None


@dataclass(frozen=True, slots=True)
class Service:
    internal_port: int
    protocol: Protocol
    ports: tuple[Port, ...]
    concurrency: Concurrency
    auto_stop_machines: AutoStop
    auto_start_machines: bool
    min_machines_running: int
    # the edge keeps each HTTP request replayable (a `fly-replay` answer re-sends it);
    # false saves that per-request work for apps that never answer with fly-replay
    fly_replay: bool = True
    # idle time before autostop; None: the host agent's default (autostop_idle_s)
    auto_stop_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    type: CheckType
    port: int
    path: str
    method: str
    interval_s: float
    timeout_s: float
    grace_period_s: float
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class Deploy:
    strategy: Strategy
    max_unavailable: float
    max_surge: int
    wait_timeout_s: float
    min_healthy_s: float
    canary_count: int
    auto_revert: bool


@dataclass(frozen=True, slots=True)
class Restart:
    policy: RestartPolicy
    max_retries: int


@dataclass(frozen=True, slots=True)
class Placement:
    jurisdiction: str | None
    host_labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class AnycastRequest:
    """What the App asks for per family: ``auto``, ``none`` or an explicit address."""

    ipv4: str
    ipv6: str


@dataclass(frozen=True, slots=True)
class App:
    name: str
    image: str
    regions: Mapping[str, int]
    vm: VMSize
    env: Mapping[str, str]
    cmd: tuple[str, ...] | None
    entrypoint: tuple[str, ...] | None
    services: tuple[Service, ...]
    checks: tuple[Check, ...]
    deploy: Deploy
    kill_signal: str
    kill_timeout_s: float
    restart: Restart
    placement: Placement
    anycast: AnycastRequest
    source: Source | None = None

    @property
    def machine_count(self) -> int:
        return sum(self.regions.values())


@dataclass(frozen=True, slots=True)
class Fleet:
    """Every validated document of a fleet, by name."""

    network: Network
    regions: Mapping[str, Region]
    hosts: Mapping[str, Host]
    apps: Mapping[str, App]
    commit: str | None = None

    def hosts_in(self, region: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts.values() if h.region == region)


# ---------------------------------------------------------------- desired world


@dataclass(frozen=True, slots=True, order=True)
class MachineSlot:
    """One desired machine of an app in a region: ``web`` / ``ams`` / 1.

    Its id ``web/ams#1`` is stable: the planner's address for it is
    ``app.web/machine[ams#1]``. Indexes start at 1.
    """

    app: str
    region: str
    index: int

    @property
    def id(self) -> str:
        return f"{self.app}/{self.region}#{self.index}"

    @property
    def key(self) -> str:
        return f"{self.region}#{self.index}"


@dataclass(frozen=True, slots=True)
class AppAddresses:
    """An app's anycast addresses (one per family at most)."""

    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None

    def all(self) -> tuple[IPAddress, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)


@dataclass(frozen=True, slots=True)
class DesiredWorld:
    """The fleet compiled: allocations that later stages need, computed once.

    ``host_prefixes`` are each host's private /64 inside the Network's ULA /48;
    ``anycast`` the addresses each app serves on; ``slots`` every machine slot.
    """

    fleet: Fleet
    host_prefixes: Mapping[str, ipaddress.IPv6Network]
    anycast: Mapping[str, AppAddresses]
    slots: tuple[MachineSlot, ...]
