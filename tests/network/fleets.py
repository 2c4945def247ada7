"""Small fleets built directly as model objects, for the network provider's tests."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from types import MappingProxyType

from fleet import compile as fc
from fleet import model

NETWORK = model.Network(
    name="t",
    private_prefix=ipaddress.IPv6Network("fdf1:ee70::/48"),
    anycast_pools=(
        ipaddress.IPv4Network("198.51.100.0/24"),
        ipaddress.IPv6Network("2001:db8:100::/48"),
    ),
    wireguard_port=51820,
    asn=65000,
    shared_cpu_overcommit=4.0,
)


def fake_key(name: str) -> str:
    """A syntactically valid WireGuard key derived from ``name`` (unit tests only)."""
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def host(name: str, region: str = "ams", index: int = 1, endpoint: str | None = None) -> model.Host:
    return model.Host(
        name=name,
        region=region,
        ssh=model.SSHTarget(f"192.0.2.{index}", 22, "root", None),
        capacity=model.Capacity(cpus=4, memory_mb=4096),
        hypervisor=model.Hypervisor.QEMU,
        labels=MappingProxyType({}),
        cordoned=False,
        wireguard_endpoint=endpoint,
        private_prefix=None,
    )


def region(
    name: str = "ams", peers: tuple[model.UpstreamPeer, ...] = (), asn: int | None = 65010
) -> model.Region:
    return model.Region(
        name=name,
        jurisdiction="eu",
        asn=asn,
        upstream_peers=peers,
        latency_ms=MappingProxyType({}),
    )


def world(
    hosts: int = 3,
    *,
    regions: dict[str, model.Region] | None = None,
    apps: dict[str, model.App] | None = None,
    network: model.Network = NETWORK,
) -> model.DesiredWorld:
    names = [f"h{i}" for i in range(1, hosts + 1)]
    fleet = model.Fleet(
        network=network,
        regions=MappingProxyType(regions or {"ams": region()}),
        hosts=MappingProxyType({n: host(n, index=i + 1) for i, n in enumerate(names)}),
        apps=MappingProxyType(apps or {}),
    )
    return fc.compile_world(fleet)


def keys_of(w: model.DesiredWorld) -> dict[str, str]:
    return {name: fake_key(name) for name in w.fleet.hosts}
