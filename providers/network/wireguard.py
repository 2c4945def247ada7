"""The WireGuard mesh as data: desired peer sets, the observed interface, the diff between.

Pure: frozen values in, frozen values out; nothing here runs a command (the
shell is :mod:`providers.network.wgdriver`).

- :func:`peer_sets` computes, for every host, one peer per *other* host
  (public key, endpoint, allowed IPs = that host's /64, keepalive). Each
  host's :class:`Peer` is built once and shared by every set, so 500 hosts
  cost 500 peers and 500 dicts, not 250,000 objects.
- :func:`parse_dump` reads ``wg show IFACE dump`` and drops the private key
  on the first line at once: it is never kept, returned or logged.
- :func:`peer_ops` turns (desired, observed, last applied) into the minimal
  list of ``wg set`` operations, one peer each, make-before-break (adds and
  updates before removals); never an interface restart.

Endpoint rule (why roaming survives). WireGuard learns a peer's endpoint from
the last authenticated packet (NAT rebinding, a host that moved). Writing the
configured endpoint back over it would cut such a peer off, so the endpoint
is written only when

1. the peer is new on this interface, or
2. the interface has no endpoint for it at all, or
3. the *desired* endpoint changed since the last apply (the operator moved
   the host: their word wins over a learned one).

An endpoint that differs from the desired one but whose desired value did
not change is a roam and is left alone. Without a last-applied record (lost
inventory) rule 3 cannot fire: we stay conservative and keep the observed one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from fleet import model
from fleet.errors import ProviderError

DEFAULT_KEEPALIVE = 25  # seconds; keeps NAT mappings open and lets roams be learned


@dataclass(frozen=True, slots=True)
class Peer:
    """One host as the other hosts' WireGuard sees it."""

    host: str
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]  # canonical (ipaddress) text, sorted
    keepalive: int = DEFAULT_KEEPALIVE  # 0: off


@dataclass(frozen=True, slots=True)
class PeerSet:
    """The peers one host's interface should have, by public key."""

    host: str
    peers: Mapping[str, Peer]

    def hosts(self) -> frozenset[str]:
        return frozenset(p.host for p in self.peers.values())


@dataclass(frozen=True, slots=True)
class ObservedPeer:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix seconds, 0: never
    rx_bytes: int
    tx_bytes: int
    keepalive: int  # 0: off


@dataclass(frozen=True, slots=True)
class ObservedInterface:
    """``wg show IFACE dump`` without its secret: the interface's public side only."""

    name: str
    public_key: str
    listen_port: int
    fwmark: int  # 0: off
    peers: Mapping[str, ObservedPeer]


class OpKind(StrEnum):
    ADD = "add"
    UPDATE = "update"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class PeerOp:
    """One ``wg set IFACE peer KEY ...``: only the fields that are not None are written."""

    kind: OpKind
    host: str
    public_key: str
    endpoint: str | None = None
    allowed_ips: tuple[str, ...] | None = None
    keepalive: int | None = None
    reason: str = ""

    def wg_args(self) -> tuple[str, ...]:
        """The arguments after ``wg set IFACE``."""
        args: list[str] = ["peer", self.public_key]
        if self.kind is OpKind.REMOVE:
            return (*args, "remove")
        if self.endpoint is not None:
            args += ["endpoint", self.endpoint]
        if self.allowed_ips is not None:
            args += ["allowed-ips", ",".join(self.allowed_ips)]
        if self.keepalive is not None:
            args += ["persistent-keepalive", str(self.keepalive) if self.keepalive else "off"]
        return tuple(args)


# ------------------------------------------------------------------ desired


def endpoint_of(host: model.Host, network: model.Network) -> str:
    """``spec.wireguard.endpoint``, else the SSH address on the Network's port."""
    if host.wireguard_endpoint:
        return host.wireguard_endpoint
    address = host.ssh.address
    if ":" in address:  # an IPv6 literal needs brackets before the port
        address = f"[{address}]"
    return f"{address}:{network.wireguard_port}"


def canonical_ips(networks: Iterable[str | model.IPNetwork]) -> tuple[str, ...]:
    """Allowed IPs as wg prints them, sorted: comparable between desired and observed."""
    nets = {ipaddress.ip_network(n, strict=False) for n in networks}
    return tuple(str(n) for n in sorted(nets, key=lambda n: (n.version, n)))


def host_peer(
    world: model.DesiredWorld, host: str, public_key: str, *, keepalive: int = DEFAULT_KEEPALIVE
) -> Peer:
    """``host`` as a peer: its key, endpoint and its /64 as allowed IPs.

    The host's mesh address (``::1``) lies inside its /64, so the /64 alone
    routes both the host and its machines.
    """
    spec = world.fleet.hosts[host]
    return Peer(
        host=host,
        public_key=public_key,
        endpoint=endpoint_of(spec, world.fleet.network),
        allowed_ips=(str(world.host_prefixes[host]),),
        keepalive=keepalive,
    )


def peer_sets(
    world: model.DesiredWorld,
    public_keys: Mapping[str, str],
    *,
    keepalive: int = DEFAULT_KEEPALIVE,
) -> dict[str, PeerSet]:
    """Every host's desired peer set: one peer per other host whose public key is known.

    A host with no known key yet (not bootstrapped) is nobody's peer, but it
    still gets its own set so it can join as soon as it has a key.
    """
    peers = {
        name: host_peer(world, name, key, keepalive=keepalive)
        for name, key in sorted(public_keys.items())
        if name in world.fleet.hosts
    }
    keys = [p.public_key for p in peers.values()]
    if len(set(keys)) != len(keys):
        raise ProviderError("two hosts report the same WireGuard public key")
    everyone = {p.public_key: p for p in peers.values()}
    out: dict[str, PeerSet] = {}
    for name in sorted(world.fleet.hosts):
        own = peers.get(name)
        mine = dict(everyone)
        if own is not None:
            del mine[own.public_key]
        out[name] = PeerSet(name, MappingProxyType(mine))
    return out


# ------------------------------------------------------------------ observed


def _int_or_off(text: str) -> int:
    return 0 if text == "off" else int(text, 0)


def parse_dump(text: str, interface: str) -> ObservedInterface:
    """Parse ``wg show IFACE dump``; the private key in the first line is discarded."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ProviderError(f"wg show {interface} dump: empty output")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise ProviderError(f"wg show {interface} dump: unexpected first line")
    _secret, public_key, port, fwmark = head
    del _secret
    peers: dict[str, ObservedPeer] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 8:
            raise ProviderError(f"wg show {interface} dump: line {number} has {len(fields)} fields")
        key, _psk, endpoint, allowed, handshake, rx, tx, keepalive = fields
        peers[key] = ObservedPeer(
            public_key=key,
            endpoint=None if endpoint == "(none)" else endpoint,
            allowed_ips=() if allowed == "(none)" else canonical_ips(allowed.split(",")),
            latest_handshake=int(handshake),
            rx_bytes=int(rx),
            tx_bytes=int(tx),
            keepalive=_int_or_off(keepalive),
        )
    return ObservedInterface(
        name=interface,
        public_key="" if public_key == "(none)" else public_key,
        listen_port=int(port),
        fwmark=_int_or_off(fwmark),
        peers=MappingProxyType(peers),
    )


# ------------------------------------------------------------------ diff


def peer_ops(
    desired: Mapping[str, Peer],
    observed: Mapping[str, ObservedPeer],
    last_applied: Mapping[str, Peer] | None = None,
) -> tuple[PeerOp, ...]:
    """The minimal ``wg set`` operations from ``observed`` to ``desired`` (by public key).

    ``last_applied`` is the desired set recorded at the previous successful
    apply; it only decides whether an endpoint change is the operator's (see
    the module docstring). Order: adds, then updates, then removals.
    """
    adds: list[PeerOp] = []
    updates: list[PeerOp] = []
    removes: list[PeerOp] = []
    for key, want in desired.items():
        have = observed.get(key)
        if have is None:
            adds.append(
                PeerOp(
                    OpKind.ADD,
                    want.host,
                    key,
                    endpoint=want.endpoint,
                    allowed_ips=want.allowed_ips,
                    keepalive=want.keepalive,
                    reason="new peer",
                )
            )
            continue
        reasons: list[str] = []
        endpoint = None
        if want.endpoint is not None and want.endpoint != have.endpoint:
            before = last_applied.get(key) if last_applied is not None else None
            if have.endpoint is None:
                endpoint = want.endpoint
                reasons.append("endpoint missing")
            elif before is not None and before.endpoint != want.endpoint:
                endpoint = want.endpoint
                reasons.append("endpoint changed in the fleet")
        allowed = None
        if want.allowed_ips != have.allowed_ips:
            allowed = want.allowed_ips
            reasons.append("allowed IPs differ")
        keepalive = None
        if want.keepalive != have.keepalive:
            keepalive = want.keepalive
            reasons.append("keepalive differs")
        if reasons:
            updates.append(
                PeerOp(
                    OpKind.UPDATE,
                    want.host,
                    key,
                    endpoint=endpoint,
                    allowed_ips=allowed,
                    keepalive=keepalive,
                    reason="; ".join(reasons),
                )
            )
    for key in observed:
        if key not in desired:
            removes.append(PeerOp(OpKind.REMOVE, "", key, reason="not a host of the fleet"))

    def order(op: PeerOp) -> tuple[str, str]:
        return (op.host, op.public_key)

    return (*sorted(adds, key=order), *sorted(updates, key=order), *sorted(removes, key=order))
