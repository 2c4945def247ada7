"""Compile a validated fleet into the desired world: stable allocations and machine slots.

Pure and deterministic. Allocations must be *stable*: adding or removing a
host must not move another host's private prefix, and adding an app must not
move another app's anycast address. Each thing is placed at a slot derived
from a hash of its name; a collision probes onward. Because probing alone could
let a newcomer take a slot an existing host already uses, callers pass the
allocations they *observed* (``previous``): those are honoured first, then
explicit pins from the YAML, then hashing for the rest.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from fleet import model
from fleet.errors import Location, ModelError, ModelErrors

HOST_SUBNET_BITS = 64  # each host owns a /64 of the fleet's /48
RESERVED_HOST_INDEX = 0  # subnet 0 of the /48 is kept for fleet infrastructure


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _probe(name: str, size: int, taken: set[int], reserved: Iterable[int] = ()) -> int | None:
    blocked = taken | set(reserved)
    if len(blocked) >= size:
        return None
    start = _hash(name) % size
    for step in range(size):
        index = (start + step) % size
        if index not in blocked:
            return index
    return None  # pragma: no cover - excluded by the size check above


def host_prefixes(
    fleet: model.Fleet, previous: Mapping[str, ipaddress.IPv6Network] | None = None
) -> dict[str, ipaddress.IPv6Network]:
    """Each host's private /64: observed first, then pinned, then by hash of its name."""
    base = fleet.network.private_prefix
    subnets = 1 << (HOST_SUBNET_BITS - base.prefixlen)
    step = 1 << (128 - HOST_SUBNET_BITS)
    result: dict[str, ipaddress.IPv6Network] = {}
    taken: set[int] = {RESERVED_HOST_INDEX}

    base_int, outside = int(base.network_address), 128 - base.prefixlen

    def index_of(prefix: ipaddress.IPv6Network) -> int | None:
        at = int(prefix.network_address)  # subnet_of(base), without its generic checks
        if prefix.prefixlen != HOST_SUBNET_BITS or at >> outside != base_int >> outside:
            return None
        return (at - base_int) // step

    ordered = sorted(fleet.hosts.values(), key=lambda h: h.name)
    for host in ordered:
        if host.private_prefix is not None:
            index = index_of(host.private_prefix)
            if index is not None and index not in taken:
                result[host.name] = host.private_prefix
                taken.add(index)
    for host in ordered:
        if host.name in result or previous is None or host.name not in previous:
            continue
        index = index_of(previous[host.name])
        if index is not None and index not in taken:
            result[host.name] = previous[host.name]
            taken.add(index)
    for host in ordered:
        if host.name in result:
            continue
        index = _probe(host.name, subnets, taken)
        if index is None:
            raise ModelErrors([_error(host.source, host.name, "Host", "no private prefix left")])
        taken.add(index)
        address = ipaddress.IPv6Address(int(base.network_address) + index * step)
        result[host.name] = ipaddress.IPv6Network((address, HOST_SUBNET_BITS))
    return result


def anycast(
    fleet: model.Fleet, previous: Mapping[str, model.AppAddresses] | None = None
) -> dict[str, model.AppAddresses]:
    """Each app's anycast addresses: explicit, else observed, else by hash within a pool."""
    apps = sorted(fleet.apps.values(), key=lambda a: a.name)
    used: set[model.IPAddress] = set()
    chosen: dict[tuple[str, int], model.IPAddress | None] = {}
    pending: list[tuple[model.App, int]] = []
    for app in apps:
        public = any(s.ports for s in app.services)
        for version, request in ((4, app.anycast.ipv4), (6, app.anycast.ipv6)):
            if not public or request == "none":
                chosen[(app.name, version)] = None
            elif request != "auto":
                explicit = ipaddress.ip_address(request)
                chosen[(app.name, version)] = explicit
                used.add(explicit)
            else:
                pending.append((app, version))
    for app, version in pending:
        old = previous.get(app.name) if previous else None
        address: model.IPAddress | None = None
        if old is not None:
            address = old.ipv4 if version == 4 else old.ipv6
        if address is not None and address not in used and _in_pools(fleet, address):
            chosen[(app.name, version)] = address
            used.add(address)
    for app, version in pending:
        if (app.name, version) in chosen:
            continue
        pools = [p for p in fleet.network.anycast_pools if p.version == version]
        address = None
        for pool in pools:
            address = _allocate(app.name, pool, used)
            if address is not None:
                break
        if pools and address is None:
            family = f"ipv{version}"
            raise ModelErrors(
                [_error(app.source, app.name, "App", f"spec.anycast.{family}: pool exhausted")]
            )
        chosen[(app.name, version)] = address
        if address is not None:
            used.add(address)
    result = {}
    for app in apps:
        v4 = chosen[(app.name, 4)]
        v6 = chosen[(app.name, 6)]
        assert v4 is None or isinstance(v4, ipaddress.IPv4Address)
        assert v6 is None or isinstance(v6, ipaddress.IPv6Address)
        result[app.name] = model.AppAddresses(ipv4=v4, ipv6=v6)
    return result


def _in_pools(fleet: model.Fleet, address: model.IPAddress) -> bool:
    return any(p.version == address.version and address in p for p in fleet.network.anycast_pools)


def _allocate(
    name: str, pool: model.IPNetwork, used: set[model.IPAddress]
) -> model.IPAddress | None:
    size = pool.num_addresses
    base = int(pool.network_address)
    reserved = {0}
    if pool.version == 4 and size > 2:
        reserved.add(size - 1)  # broadcast of a classic subnet; avoid surprises
    taken = {int(a) - base for a in used if a in pool}
    if size > 1 << 20:  # IPv6: hash straight into a huge space, probe a little
        start = _hash(name) % size
        for step in range(1024):
            index = (start + step) % size
            if index not in taken and index not in reserved:
                return ipaddress.ip_address(base + index)
        return None
    found = _probe(name, size, taken, reserved)
    return None if found is None else ipaddress.ip_address(base + found)


def slots(fleet: model.Fleet) -> tuple[model.MachineSlot, ...]:
    """Every desired machine slot, ordered by app, region and index."""
    out: list[model.MachineSlot] = []
    for app in sorted(fleet.apps.values(), key=lambda a: a.name):
        for region, count in sorted(app.regions.items()):
            out.extend(model.MachineSlot(app.name, region, i) for i in range(1, count + 1))
    return tuple(out)


# The hash that places a machine slot's address inside its host's prefix (public
# for the planner, which formats 100,000 addresses without building IPv6Address).
slot_hash = _hash


def edge_hosts(fleet: model.Fleet) -> frozenset[str]:
    """The hosts that terminate public traffic: route every public app and announce it.

    Per region: the hosts marked ``spec.edge: true`` when any is marked; otherwise
    every host not marked ``spec.edge: false`` (a small fleet needs no marking,
    every host is an edge). Large fleets keep a few edges per region: each edge
    carries a route and an announcement per public app, the other hosts only
    run machines, reached from the edges over the mesh.
    """
    marked: set[str] = {h.region for h in fleet.hosts.values() if h.edge}
    return frozenset(
        h.name
        for h in fleet.hosts.values()
        if (h.edge is True) or (h.region not in marked and h.edge is not False)
    )


def machine_address(prefix: ipaddress.IPv6Network, slot_id: str) -> ipaddress.IPv6Address:
    """A machine's stable private address inside its host's /64 (never ::0 or ::1)."""
    host_bits = 128 - prefix.prefixlen
    suffix = slot_hash(slot_id) % ((1 << host_bits) - 2) + 2
    return ipaddress.IPv6Address(int(prefix.network_address) + suffix)


def compile_world(
    fleet: model.Fleet,
    *,
    previous_prefixes: Mapping[str, ipaddress.IPv6Network] | None = None,
    previous_anycast: Mapping[str, model.AppAddresses] | None = None,
) -> model.DesiredWorld:
    """The desired world of a fleet; ``previous_*`` come from observation when known."""
    return model.DesiredWorld(
        fleet=fleet,
        host_prefixes=MappingProxyType(host_prefixes(fleet, previous_prefixes)),
        anycast=MappingProxyType(anycast(fleet, previous_anycast)),
        slots=slots(fleet),
    )


def _error(source: model.Source | None, name: str, kind: str, message: str) -> ModelError:
    where = Location(source.file if source else "<fleet>", source.line if source else 0)
    return ModelError(Location(where.file, where.line, 1, f"{kind}/{name}"), message)
