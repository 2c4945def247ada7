"""Private addressing of the mesh: who owns which prefix, and which address means what.

Pure. The allocation itself lives in :mod:`fleet.compile` (each host gets a
stable /64 of the Network's ULA /48, machines a stable address inside it);
this module names the conventions the network layer builds on, so that the
WireGuard driver, the host agent and the docs agree:

- ``prefix::/64``  the host's private prefix (``DesiredWorld.host_prefixes``);
- ``prefix::1``    the host's *mesh address*, on its WireGuard interface; the
  host's own traffic to other hosts (agent, proxy) leaves from it;
- ``prefix::2..``  machine addresses, ``fleet.compile.machine_address``
  (never ``::0`` or ``::1``);
- the whole fleet ``/48`` is routed into the WireGuard interface; WireGuard's
  allowed IPs (one /64 per peer) pick the peer, so adding a host changes no
  route anywhere.

Interface names must be unique on the *machine*, not just the namespace:
wireguard-go's control socket ``/var/run/wireguard/<name>.sock`` is shared by
every namespace. :func:`interface_name` derives a short, stable name.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from fleet import compile as fleet_compile
from fleet import model

MESH_HOST_SUFFIX = 1
IFNAMSIZ = 15  # Linux interface names are at most 15 bytes
_SAFE = re.compile(r"[^a-z0-9]")


@dataclass(frozen=True, slots=True)
class HostAddressing:
    """A host's place in the private network."""

    host: str
    prefix: ipaddress.IPv6Network
    mesh_address: ipaddress.IPv6Address


def mesh_address(prefix: ipaddress.IPv6Network) -> ipaddress.IPv6Address:
    """The host's own address on the mesh: ``::1`` of its prefix."""
    return ipaddress.IPv6Address(int(prefix.network_address) + MESH_HOST_SUFFIX)


def machine_address(prefix: ipaddress.IPv6Network, slot_id: str) -> ipaddress.IPv6Address:
    """A machine's stable private address (delegates to the fleet's allocation)."""
    return fleet_compile.machine_address(prefix, slot_id)


def host_addressing(world: model.DesiredWorld) -> dict[str, HostAddressing]:
    """Every host's prefix and mesh address, by host name."""
    return {
        name: HostAddressing(name, prefix, mesh_address(prefix))
        for name, prefix in world.host_prefixes.items()
    }


def fleet_prefix(world: model.DesiredWorld) -> ipaddress.IPv6Network:
    """The one route every host points into its WireGuard interface."""
    return world.fleet.network.private_prefix


def interface_name(host: str, *, prefix: str = "wg") -> str:
    """A stable interface name for ``host``, unique machine-wide, at most 15 bytes.

    Short names stay readable (``wg-ams-1``); longer ones keep a readable head
    and a hash of the full name so two hosts never share a socket.
    """
    plain = f"{prefix}-{host}"
    if len(plain) <= IFNAMSIZ and re.fullmatch(r"[A-Za-z0-9_.-]+", plain):
        return plain
    digest = hashlib.sha256(host.encode()).hexdigest()[:6]
    head = _SAFE.sub("", host.lower())[: IFNAMSIZ - len(prefix) - len(digest) - 2]
    return f"{prefix}-{head}-{digest}"[:IFNAMSIZ]


def owner_of(
    address: ipaddress.IPv6Address, prefixes: Mapping[str, ipaddress.IPv6Network]
) -> str | None:
    """Which host's prefix holds ``address`` (None: not a host's address)."""
    for name, prefix in prefixes.items():
        if address in prefix:
            return name
    return None
