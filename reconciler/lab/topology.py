"""The local lab's shape, computed from the fleet: namespaces, links and addresses.

Pure: the fleet's Regions and Hosts in, a :class:`Topology` out. Nothing here
touches the machine; :mod:`reconciler.lab.lab` builds what this describes.

Every address is a documentation or ULA range and exists only inside the
lab's namespaces; the machine's own namespace gets nothing:

- management network ``192.0.2.0/25``: the operator's side is ``192.0.2.1`` in
  the management namespace (the reconciler opens its sockets there), the
  lab's registry ``192.0.2.2``; each host's ``spec.ssh.address`` must lie in it;
- region fabric: the /26 around the region's first upstream peer address
  (e.g. ``203.0.113.1`` -> ``203.0.113.0/26``), hosts from ``.10`` on; and a
  ULA /64 ``fd00:fab:N::/64`` for IPv6 sessions;
- client links ``192.0.2.128/25`` cut into /30s, one per region, plus
  ``fd00:c1:N::/64``.

No namespace gets a default route.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from fleet import model
from fleet.errors import FleetError


def _prefix() -> str:
    """Names of the lab's namespaces start with this (``$FLEET_LAB_PREFIX``, default flab).

    Labs with different prefixes (the operator's, a test run's) live side by
    side; ``lab down`` removes only its own prefix.
    """
    value = os.environ.get("FLEET_LAB_PREFIX", "flab")
    if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", value):
        raise FleetError(
            f"FLEET_LAB_PREFIX={value!r}: want 1-8 lowercase letters and digits, a letter first"
        )
    return value


PREFIX = _prefix()
MGMT_NET = ipaddress.IPv4Network("192.0.2.0/25")
MGMT_GATEWAY = ipaddress.IPv4Interface("192.0.2.1/25")
CLIENT_LINKS = ipaddress.IPv4Network("192.0.2.128/25")
ROOT_LINK = f"{PREFIX}-mgmt0"  # older labs linked the machine here; down still removes it
MGMT_NS = f"{PREFIX}-mgmt"
CLIENT_NS = f"{PREFIX}-client"
REGISTRY_NS = f"{PREFIX}-registry"
REGISTRY_ADDR = ipaddress.IPv4Interface("192.0.2.2/25")


@dataclass(frozen=True, slots=True)
class LabHost:
    name: str
    region: str
    index: int
    netns: str
    mgmt: ipaddress.IPv4Interface
    fabric4: ipaddress.IPv4Interface
    fabric6: ipaddress.IPv6Interface
    ssh_port: int


@dataclass(frozen=True, slots=True)
class LabRegion:
    name: str
    index: int
    netns: str
    fabric4: ipaddress.IPv4Interface
    fabric6: ipaddress.IPv6Interface
    client4: ipaddress.IPv4Interface  # the upstream's side of the client link
    client6: ipaddress.IPv6Interface
    peer_client4: ipaddress.IPv4Interface  # the client's side
    peer_client6: ipaddress.IPv6Interface
    asn: int
    edge_asn: int  # the ASN the region's hosts speak (Region.asn, else the Network's)


@dataclass(frozen=True, slots=True)
class Topology:
    hosts: tuple[LabHost, ...]
    regions: tuple[LabRegion, ...]
    anycast_pools: tuple[model.IPNetwork, ...]

    def namespaces(self) -> list[str]:
        return [
            MGMT_NS,
            CLIENT_NS,
            REGISTRY_NS,
            *(r.netns for r in self.regions),
            *(h.netns for h in self.hosts),
        ]

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise FleetError(f"no lab host named {name!r}")

    def region(self, name: str) -> LabRegion:
        for r in self.regions:
            if r.name == name:
                return r
        raise FleetError(f"no lab region named {name!r}")


def build(fleet: model.Fleet) -> Topology:
    """The lab for a fleet's regions and hosts; refuses addresses outside the lab's ranges."""
    regions: list[LabRegion] = []
    client_subnets = list(CLIENT_LINKS.subnets(new_prefix=30))
    for i, region in enumerate(sorted(fleet.regions.values(), key=lambda r: r.name)):
        v4_peers = [p for p in region.upstream_peers if p.address.version == 4]
        if not v4_peers:
            raise FleetError(
                f"region {region.name}: the lab needs an IPv4 upstream peer "
                "(spec.upstream_peers) to build the region's router"
            )
        peer = v4_peers[0]
        fabric = ipaddress.IPv4Network((peer.address, 26), strict=False)
        if not fabric.subnet_of(ipaddress.IPv4Network("203.0.113.0/24")):
            raise FleetError(
                f"region {region.name}: upstream peer {peer.address} is outside 203.0.113.0/24, "
                "the lab's fabric range"
            )
        link = client_subnets[i]
        ends = list(link.hosts())
        regions.append(
            LabRegion(
                name=region.name,
                index=i,
                netns=f"{PREFIX}-up-{region.name}",
                fabric4=ipaddress.IPv4Interface(f"{peer.address}/26"),
                fabric6=ipaddress.IPv6Interface(f"fd00:fab:{i}::1/64"),
                client4=ipaddress.IPv4Interface(f"{ends[0]}/30"),
                client6=ipaddress.IPv6Interface(f"fd00:c1:{i}::1/64"),
                peer_client4=ipaddress.IPv4Interface(f"{ends[1]}/30"),
                peer_client6=ipaddress.IPv6Interface(f"fd00:c1:{i}::2/64"),
                asn=peer.asn,
                edge_asn=region.asn if region.asn is not None else fleet.network.asn,
            )
        )
    by_region = {r.name: r for r in regions}
    hosts: list[LabHost] = []
    counters: dict[str, int] = {}
    for index, host in enumerate(sorted(fleet.hosts.values(), key=lambda h: h.name)):
        try:
            address = ipaddress.IPv4Address(host.ssh.address)
        except ValueError:
            raise FleetError(
                f"host {host.name}: the lab needs spec.ssh.address to be an IPv4 address "
                f"in {MGMT_NET}; got {host.ssh.address!r}"
            ) from None
        if address not in MGMT_NET or address in (MGMT_GATEWAY.ip, REGISTRY_ADDR.ip):
            raise FleetError(
                f"host {host.name}: spec.ssh.address {address} is outside the lab's "
                f"management network {MGMT_NET} (or is {MGMT_GATEWAY.ip} or {REGISTRY_ADDR.ip}, "
                "which the lab keeps for itself)"
            )
        lab_region = by_region[host.region]
        n = counters.get(host.region, 0)
        counters[host.region] = n + 1
        fabric_net = lab_region.fabric4.network
        hosts.append(
            LabHost(
                name=host.name,
                region=host.region,
                index=index,
                netns=f"{PREFIX}-h-{host.name}",
                mgmt=ipaddress.IPv4Interface(f"{address}/{MGMT_NET.prefixlen}"),
                fabric4=ipaddress.IPv4Interface(
                    f"{fabric_net.network_address + 10 + n}/{fabric_net.prefixlen}"
                ),
                fabric6=ipaddress.IPv6Interface(f"fd00:fab:{lab_region.index}::{10 + n:x}/64"),
                ssh_port=host.ssh.port,
            )
        )
    return Topology(tuple(hosts), tuple(regions), fleet.network.anycast_pools)
