"""Checks across documents that a schema cannot express.

Unique names, references that resolve, prefixes that do not overlap, anycast
addresses inside their pools, no two services on one address:port, and
placement that can be satisfied (jurisdiction, labels, capacity with the
numbers). Pure: documents in, errors out; every error points at a field.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from fleet import model, schema
from fleet.errors import ModelError
from fleet.model import Kind
from fleet.yamlsrc import Document

_T = TypeVar("_T")

ULA = ipaddress.IPv6Network("fc00::/7")
MAX_KILL_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Entry:
    """A built model object and the document it came from (for error locations)."""

    kind: Kind
    name: str
    obj: object
    doc: Document


def check(
    entries: Sequence[Entry], broken: frozenset[Kind] = frozenset()
) -> tuple[model.Fleet | None, list[ModelError]]:
    """Assemble the fleet from its documents; return it (if consistent) and all errors.

    ``broken`` names the kinds of which some document already failed its schema:
    checks that would only repeat that failure in other words (an "unknown"
    region that is merely invalid, pools missing because the Network is) are
    skipped, so every error printed is a real one.
    """
    errors: list[ModelError] = []
    by_kind: dict[Kind, dict[str, Entry]] = {k: {} for k in Kind}
    for entry in entries:
        seen = by_kind[entry.kind]
        if entry.name in seen:
            first = seen[entry.name].doc
            where = f"{first.file}:{first.locate(['metadata', 'name'])[0]}"
            errors.append(
                schema.error_at(
                    entry.doc,
                    ["metadata", "name"],
                    f"duplicate {entry.kind} name {entry.name!r} (first defined at {where})",
                )
            )
            continue
        seen[entry.name] = entry
    networks = list(by_kind[Kind.NETWORK].values())
    for extra in networks[1:]:
        errors.append(
            schema.error_at(
                extra.doc,
                ["kind"],
                f"only one Network document is allowed (first is {networks[0].name!r})",
            )
        )
    network = networks[0].obj if networks else model.DEFAULT_NETWORK
    assert isinstance(network, model.Network)
    regions = {n: _as(e, model.Region) for n, e in by_kind[Kind.REGION].items()}
    hosts = {n: _as(e, model.Host) for n, e in by_kind[Kind.HOST].items()}
    apps = {n: _as(e, model.App) for n, e in by_kind[Kind.APP].items()}
    fleet = model.Fleet(network=network, regions=regions, hosts=hosts, apps=apps)

    if networks:
        errors += _network(network, networks[0].doc)
    region_broken = Kind.REGION in broken
    errors += _regions(fleet, by_kind[Kind.REGION], region_broken)
    errors += _hosts(fleet, by_kind[Kind.HOST], region_broken)
    errors += _apps(fleet, by_kind[Kind.APP], region_broken, Kind.NETWORK in broken)
    errors += _ports(fleet, by_kind[Kind.APP])
    complete = not broken and not any(e.location.path.startswith("spec.region") for e in errors)
    if complete:
        errors += _capacity(fleet, by_kind)
    return (None if errors else fleet), errors


def _as(entry: Entry, cls: type[_T]) -> _T:
    assert isinstance(entry.obj, cls)
    return entry.obj


def _network(net: model.Network, doc: Document) -> list[ModelError]:
    errors = []
    prefix = net.private_prefix
    if prefix.prefixlen != 48 or not prefix.subnet_of(ULA):
        errors.append(
            schema.error_at(
                doc,
                ["spec", "private_prefix"],
                f"must be a ULA /48 inside fc00::/7 (e.g. fdf1:ee70::/48); got {prefix}",
            )
        )
    pools = net.anycast_pools
    for i, pool in enumerate(pools):
        path: list[str | int] = ["spec", "anycast_pools", i]
        if pool.version == 6 and pool.overlaps(prefix):
            errors.append(
                schema.error_at(doc, path, f"{pool} overlaps the private prefix {prefix}")
            )
        for j in range(i):
            other = pools[j]
            if other.version == pool.version and pool.overlaps(other):
                errors.append(schema.error_at(doc, path, f"{pool} overlaps anycast pool {other}"))
    return errors


def _regions(
    fleet: model.Fleet, entries: dict[str, Entry], region_broken: bool
) -> list[ModelError]:
    errors = []
    for name, entry in entries.items():
        region = fleet.regions[name]
        for other in region.latency_ms:
            if other not in fleet.regions and not region_broken:
                errors.append(
                    schema.error_at(
                        entry.doc,
                        ["spec", "latency_ms", other],
                        f"unknown region {other!r}",
                        at_key=True,
                    )
                )
    return errors


def _hosts(fleet: model.Fleet, entries: dict[str, Entry], region_broken: bool) -> list[ModelError]:
    errors = []
    endpoints: dict[tuple[str, int], str] = {}
    pins: dict[ipaddress.IPv6Network, str] = {}
    private = fleet.network.private_prefix
    for name, entry in entries.items():
        host = fleet.hosts[name]
        doc = entry.doc
        if host.region not in fleet.regions and not region_broken:
            errors.append(
                schema.error_at(
                    doc,
                    ["spec", "region"],
                    f"unknown region {host.region!r}{_known(fleet.regions)}",
                )
            )
        key = (host.ssh.address, host.ssh.port)
        if key in endpoints:
            errors.append(
                schema.error_at(
                    doc,
                    ["spec", "ssh", "address"],
                    f"{key[0]}:{key[1]} is already the SSH address of host {endpoints[key]!r}",
                )
            )
        endpoints.setdefault(key, name)
        pin = host.private_prefix
        if pin is not None:
            path: list[str | int] = ["spec", "private_prefix"]
            if pin.prefixlen != 64 or not pin.subnet_of(private):
                errors.append(
                    schema.error_at(doc, path, f"must be a /64 inside {private}; got {pin}")
                )
            elif pin in pins:
                errors.append(
                    schema.error_at(doc, path, f"{pin} is already pinned by host {pins[pin]!r}")
                )
            pins.setdefault(pin, name)
    return errors


def _known(names: Mapping[str, object]) -> str:
    if not names:
        return " (no Region documents are defined)"
    listed = ", ".join(sorted(names)[:8])
    return f" (known: {listed}{', ...' if len(names) > 8 else ''})"


def _apps(
    fleet: model.Fleet, entries: dict[str, Entry], region_broken: bool, network_broken: bool
) -> list[ModelError]:
    errors = []
    pools = fleet.network.anycast_pools
    for name, entry in entries.items():
        app = fleet.apps[name]
        doc = entry.doc
        want = app.placement.jurisdiction
        for region_name in app.regions:
            path: list[str | int] = ["spec", "regions", region_name]
            region = fleet.regions.get(region_name)
            if region is None and region_broken:
                continue
            if region is None:
                errors.append(
                    schema.error_at(
                        doc,
                        path,
                        f"unknown region {region_name!r}{_known(fleet.regions)}",
                        at_key=True,
                    )
                )
            elif want is not None and region.jurisdiction != want:
                errors.append(
                    schema.error_at(
                        doc,
                        path,
                        f"region {region_name!r} is in jurisdiction {region.jurisdiction!r}, "
                        f"but the app is pinned to {want!r}",
                        at_key=True,
                    )
                )
        if app.kill_timeout_s > MAX_KILL_TIMEOUT_S:
            errors.append(
                schema.error_at(
                    doc,
                    ["spec", "kill_timeout"],
                    f"must be at most {MAX_KILL_TIMEOUT_S:.0f}s; got {app.kill_timeout_s:g}s",
                )
            )
        mu = app.deploy.max_unavailable
        if mu >= 1 and mu != int(mu):
            errors.append(
                schema.error_at(
                    doc,
                    ["spec", "deploy", "max_unavailable"],
                    f"must be a fraction below 1 or a whole number of machines; got {mu:g}",
                )
            )
        for i, service in enumerate(app.services):
            conc = service.concurrency
            if conc.hard_limit is not None and conc.soft_limit > conc.hard_limit:
                errors.append(
                    schema.error_at(
                        doc,
                        ["spec", "services", i, "concurrency", "soft_limit"],
                        f"soft_limit {conc.soft_limit} exceeds hard_limit {conc.hard_limit}",
                    )
                )
        if not network_broken:
            errors += _anycast(app, doc, pools)
    return errors


def _anycast(app: model.App, doc: Document, pools: tuple[model.IPNetwork, ...]) -> list[ModelError]:
    errors = []
    public = any(s.ports for s in app.services)
    requested = {"ipv4": app.anycast.ipv4, "ipv6": app.anycast.ipv6}
    usable = False
    for family, value in requested.items():
        version = 4 if family == "ipv4" else 6
        family_pools = [p for p in pools if p.version == version]
        if value == "none":
            continue
        if value == "auto":
            usable = usable or bool(family_pools)
            continue
        address = ipaddress.ip_address(value)
        usable = True
        if not any(address in p for p in family_pools):
            names = ", ".join(str(p) for p in family_pools) or "none defined"
            errors.append(
                schema.error_at(
                    doc,
                    ["spec", "anycast", family],
                    f"{address} is not inside an anycast pool of the Network ({names})",
                )
            )
    if public and not usable:
        errors.append(
            schema.error_at(
                doc,
                ["spec", "services"],
                "the app has public ports but no anycast address: add anycast_pools to the "
                "Network or set spec.anycast",
            )
        )
    return errors


def _ports(fleet: model.Fleet, entries: dict[str, Entry]) -> list[ModelError]:
    """No two services claim the same explicit address and port."""
    errors = []
    claims: dict[tuple[str, str, int], str] = {}
    for name, entry in entries.items():
        app = fleet.apps[name]
        addresses = [a for a in (app.anycast.ipv4, app.anycast.ipv6) if a not in ("auto", "none")]
        # An app's own auto addresses are unique to it; only its port list can clash.
        scope = addresses or [f"app:{name}"]
        for i, service in enumerate(app.services):
            for j, port in enumerate(service.ports):
                for address in scope:
                    key = (address, service.protocol.value, port.port)
                    owner = f"App/{name} spec.services[{i}].ports[{j}]"
                    if key in claims:
                        shown = address if not address.startswith("app:") else "its address"
                        errors.append(
                            schema.error_at(
                                entry.doc,
                                ["spec", "services", i, "ports", j, "port"],
                                f"{shown} port {port.port}/{key[1]} is already claimed by "
                                f"{claims[key]}",
                            )
                        )
                    else:
                        claims[key] = owner
    return errors


def _capacity(fleet: model.Fleet, by_kind: dict[Kind, dict[str, Entry]]) -> list[ModelError]:
    """Requested resources per region fit the region's eligible hosts, with the numbers."""
    errors: list[ModelError] = []
    overcommit = fleet.network.shared_cpu_overcommit
    hosts_by_region: dict[str, list[model.Host]] = defaultdict(list)
    for host in fleet.hosts.values():
        if not host.cordoned:
            hosts_by_region[host.region].append(host)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    gpu_totals: dict[tuple[str, str], int] = defaultdict(int)
    for name, entry in by_kind[Kind.APP].items():
        app = fleet.apps[name]
        vm = app.vm
        cpu_cost = vm.cpus if vm.cpu_kind is model.CpuKind.PERFORMANCE else vm.cpus / overcommit
        for region_name, count in app.regions.items():
            if count == 0 or region_name not in fleet.regions:
                continue
            path: list[str | int] = ["spec", "regions", region_name]
            eligible = [
                h
                for h in hosts_by_region.get(region_name, [])
                if all(h.labels.get(k) == v for k, v in app.placement.host_labels.items())
            ]
            problem = _fit_one(app, region_name, eligible)
            if problem:
                errors.append(schema.error_at(entry.doc, path, problem, at_key=True))
                continue
            if vm.gpus:
                have = sum(h.capacity.gpu_count(vm.gpus.model) for h in eligible)
                need = vm.gpus.count * count
                if need > have:
                    errors.append(
                        schema.error_at(
                            entry.doc,
                            path,
                            f"region {region_name}: needs {need} x {vm.gpus.model}, "
                            f"{have} available",
                            at_key=True,
                        )
                    )
                    continue
            label, have_cpus, have_mem = _sums(eligible)
            need_cpus = cpu_cost * count
            need_mem = vm.memory_mb * count
            if need_cpus > have_cpus or need_mem > have_mem:
                errors.append(
                    schema.error_at(
                        entry.doc,
                        path,
                        f"region {region_name}: {count} machines need "
                        f"{_num(need_cpus)} cpus and {need_mem} MiB, {label} hosts offer "
                        f"{_num(have_cpus)} cpus and {have_mem} MiB",
                        at_key=True,
                    )
                )
                continue
            totals[region_name][0] += cpu_cost * count
            totals[region_name][1] += vm.memory_mb * count
            if vm.gpus:
                gpu_totals[(region_name, vm.gpus.model)] += vm.gpus.count * count
    for region_name, (cpus, mem) in sorted(totals.items()):
        have_label, have_cpus, have_mem = _sums(hosts_by_region.get(region_name, []))
        entry = by_kind[Kind.REGION][region_name]
        if cpus > have_cpus + 1e-9 or mem > have_mem:
            errors.append(
                schema.error_at(
                    entry.doc,
                    ["metadata", "name"],
                    f"region {region_name}: apps need {_num(cpus)} cpus and {_num(mem)} MiB "
                    f"in all, its {have_label} hosts offer {have_cpus} cpus and {have_mem} MiB",
                )
            )
    for (region_name, gpu_model), need in sorted(gpu_totals.items()):
        have = sum(h.capacity.gpu_count(gpu_model) for h in hosts_by_region.get(region_name, []))
        if need > have:
            entry = by_kind[Kind.REGION][region_name]
            errors.append(
                schema.error_at(
                    entry.doc,
                    ["metadata", "name"],
                    f"region {region_name}: apps need {need} x {gpu_model} in all, "
                    f"{have} available",
                )
            )
    return errors


def _sums(hosts: Sequence[model.Host]) -> tuple[str, int, int]:
    label = f"{len(hosts)} eligible"
    return (
        label,
        sum(h.capacity.cpus for h in hosts),
        sum(h.capacity.memory_mb for h in hosts),
    )


def _fit_one(app: model.App, region: str, eligible: Sequence[model.Host]) -> str:
    """Why not even one machine of the app fits any eligible host, or ''."""
    vm = app.vm
    if not eligible:
        labels = ", ".join(f"{k}={v}" for k, v in app.placement.host_labels.items())
        extra = f" with labels {labels}" if labels else ""
        return f"region {region}: no uncordoned host{extra} to place machines on"
    for h in eligible:
        fits = h.capacity.cpus >= vm.cpus and h.capacity.memory_mb >= vm.memory_mb
        if fits and (vm.gpus is None or h.capacity.gpu_count(vm.gpus.model) >= vm.gpus.count):
            return ""
    biggest = max(eligible, key=lambda h: (h.capacity.cpus, h.capacity.memory_mb))
    gpu = f", {vm.gpus.count} x {vm.gpus.model}" if vm.gpus else ""
    return (
        f"region {region}: no host fits one machine of {vm.cpus} cpus, {vm.memory_mb} MiB{gpu} "
        f"(largest: {biggest.name} with {biggest.capacity.cpus} cpus, "
        f"{biggest.capacity.memory_mb} MiB)"
    )


def _num(value: float) -> str:
    return f"{value:g}"
