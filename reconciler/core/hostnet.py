"""The desired host-level network resources: each host's mesh interface and its BIRD. Pure.

- ``wireguard`` (id ``mesh``): the host's interface, mesh address, the fleet's
  /48 route, and one peer per *other* host whose public key is known
  (:func:`providers.network.wireguard.peer_sets`). A host whose key is not
  known yet is nobody's peer (the plan warns), so a host never gets a peer
  it cannot handshake with.
- ``bgp`` (id ``bird``): router id, ASN, the Region's upstream peers and the
  Network's anycast pools: everything BIRD's config needs except *what* is
  announced, which the host's announcer decides from health; on a cordoned
  host, ``withdraw_all``: every announcement there is leaving.

Keys come from what hosts report (``facts.wireguard_public_key``); a host not
observed in this snapshot keeps the key the others were last given for it
(read from their applied peer lists), so an unreachable host is not dropped
from the mesh by a plan made while it was down.

Cost: each peer's JSON text and digest are made once; a host's etag is the
digest of its own fields plus the *sum* of its peers' digests (the fleet's
sum minus its own), so N hosts cost O(N) digests, not O(N^2) text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleet import model
from providers import resources
from providers.network import addressing, bgp, wireguard
from reconciler.core import desired, observed

Json = Any
MESH_ID = "mesh"
BIRD_ID = "bird"
_MOD = 1 << 256


@dataclass(frozen=True, slots=True)
class _PeerText:
    spec: Mapping[str, Json]
    digest: int


def public_keys(
    world: model.DesiredWorld,
    reported: Mapping[str, str],
    applied_specs: Iterable[Mapping[str, Json]],
) -> dict[str, str]:
    """Every host's known public key: reported now, else as last given to its peers."""
    keys = {h: k for h, k in reported.items() if h in world.fleet.hosts and wgkey_ok(k)}
    missing = set(world.fleet.hosts) - set(keys)
    if not missing:
        return keys
    for spec in applied_specs:
        for p in spec.get("peers") or []:
            host = p.get("host")
            if host in missing and wgkey_ok(str(p.get("public_key", ""))):
                keys[str(host)] = str(p["public_key"])
                missing.discard(str(host))
        if not missing:
            break
    return keys


def wgkey_ok(text: str) -> bool:
    """A WireGuard public key's text: 32 bytes in standard base64."""
    if len(text) != 44:
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except binascii.Error:
        return False


class MeshParts:
    """The fleet-wide pieces of every host's ``wireguard`` spec, built once per plan."""

    def __init__(self, world: model.DesiredWorld, keys: Mapping[str, str]) -> None:
        self.world = world
        self.keys = keys
        self.peers: dict[str, _PeerText] = {}
        total = 0
        for host, key in sorted(keys.items()):
            peer = wireguard.host_peer(world, host, key)
            spec = {
                "host": peer.host,
                "public_key": peer.public_key,
                "endpoint": peer.endpoint,
                "allowed_ips": list(peer.allowed_ips),
                "keepalive": peer.keepalive,
            }
            digest = int(hashlib.sha256(observed.canonical(spec).encode()).hexdigest(), 16)
            self.peers[host] = _PeerText(spec, digest)
            total += digest
        self.total = total % _MOD
        # every peer spec in host order, and each host's place in it: a host's peer list
        # is this list without its own entry (two C slices, not a walk of every peer)
        self.peer_specs = [p.spec for p in self.peers.values()]
        self.place = {h: i for i, h in enumerate(self.peers)}
        self.route = str(addressing.fleet_prefix(world))

    def spec(self, host: str) -> desired.Desired:
        world = self.world
        spec_host = world.fleet.hosts[host]
        prefix = world.host_prefixes[host]
        endpoint = wireguard.endpoint_of(spec_host, world.fleet.network)
        base: dict[str, Json] = {
            "interface": addressing.interface_name(host),
            "listen_port": int(endpoint.rsplit(":", 1)[1]),
            "address": str(addressing.mesh_address(prefix)),
            "prefix": str(prefix),
            "routes": [self.route],
        }
        own = self.peers.get(host)
        digest = (self.total - (own.digest if own else 0)) % _MOD
        etag = observed.digest_text(f"{observed.canonical(base)}|{digest:064x}")
        spec = dict(base)
        specs, at = self.peer_specs, self.place.get(host)
        spec["peers"] = specs.copy() if at is None else specs[:at] + specs[at + 1 :]
        return desired.on_host(host, resources.Kind.WIREGUARD, MESH_ID, spec, etag)


def bird(world: model.DesiredWorld, host: str) -> desired.Desired | None:
    """The host's ``bgp`` resource; None when it cannot have one (no IPv4 router id)."""
    spec_host = world.fleet.hosts[host]
    try:
        router_id = ipaddress.IPv4Address(spec_host.ssh.address)
    except ValueError:
        return None
    region = world.fleet.regions[spec_host.region]
    network = world.fleet.network
    spec = {
        "router_id": str(router_id),
        "asn": region.asn if region.asn is not None else network.asn,
        "neighbors": [
            {"name": n.name, "address": str(n.address), "asn": n.asn}
            for n in bgp.neighbors_of(region)
        ],
        "pools": [str(p) for p in network.anycast_pools],
    }
    if spec_host.cordoned:
        # Every announcement of the host is leaving: the agent starts all their graceful
        # shutdowns at once, and each announcement's delete (which waits for this step)
        # only waits out what is left of it. Absent otherwise: uncordoned hosts' etags are
        # what they were.
        spec["withdraw_all"] = True
    return desired.on_host(host, resources.Kind.BGP, BIRD_ID, spec, observed.etag(spec))
