"""Compiling the desired world: stable allocations and machine slots."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from types import MappingProxyType

from fleet import compile as fc
from fleet import load, model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def fleet() -> model.Fleet:
    return load.load_dir(EXAMPLES)


def with_hosts(f: model.Fleet, names: list[str]) -> model.Fleet:
    template = f.hosts["sea-1"]
    hosts = {n: dataclasses.replace(template, name=n) for n in names}
    return dataclasses.replace(f, hosts=MappingProxyType(hosts))


def test_slots_are_stable_ids() -> None:
    world = fc.compile_world(fleet())
    ids = [s.id for s in world.slots]
    assert "hello/ams#1" in ids
    assert "ledger/ams#2" in ids
    assert len(ids) == len(set(ids)) == sum(a.machine_count for a in fleet().apps.values())


def test_host_prefixes_are_distinct_64s_inside_the_48() -> None:
    f = with_hosts(fleet(), [f"h{i}" for i in range(300)])
    prefixes = fc.host_prefixes(f)
    assert len(set(prefixes.values())) == 300
    for p in prefixes.values():
        assert p.prefixlen == 64
        assert p.subnet_of(f.network.private_prefix)
        assert p.network_address != f.network.private_prefix.network_address  # subnet 0 reserved


def test_adding_and_removing_hosts_keeps_other_prefixes() -> None:
    base = fleet()
    names = [f"h{i}" for i in range(200)]
    before = fc.host_prefixes(with_hosts(base, names))
    grown = fc.host_prefixes(with_hosts(base, [*names, *(f"new{i}" for i in range(50))]), before)
    assert all(grown[n] == before[n] for n in names)
    shrunk = fc.host_prefixes(with_hosts(base, names[::2]), grown)
    assert all(shrunk[n] == before[n] for n in names[::2])


def test_observed_prefix_wins_over_hash() -> None:
    f = fleet()
    moved = ipaddress.IPv6Network("fdf1:ee70:0:abcd::/64")
    prefixes = fc.host_prefixes(f, {"ams-1": moved})
    assert prefixes["ams-1"] == moved


def test_anycast_explicit_and_auto_are_stable() -> None:
    f = fleet()
    hello = f.apps["hello"]
    auto = dataclasses.replace(
        hello, name="auto", anycast=model.AnycastRequest(ipv4="auto", ipv6="auto")
    )
    apps = dict(f.apps, auto=auto)
    g = dataclasses.replace(f, apps=MappingProxyType(apps))
    first = fc.anycast(g)
    assert first["hello"].ipv4 == ipaddress.IPv4Address("198.51.100.10")
    assert first["ledger"].ipv6 is None
    assigned = first["auto"]
    assert assigned.ipv4 is not None and assigned.ipv4 in g.network.anycast_pools[0]
    explicit = {a.ipv4 for n, a in first.items() if n != "auto"}
    assert assigned.ipv4 not in explicit
    # Another app arriving later never moves an address already handed out.
    more = dict(apps)
    for i in range(40):
        more[f"x{i}"] = dataclasses.replace(auto, name=f"x{i}")
    h = dataclasses.replace(f, apps=MappingProxyType(more))
    again = fc.anycast(h, first)
    assert again["auto"] == assigned
    v4 = [a.ipv4 for a in again.values() if a.ipv4 is not None]
    assert len(v4) == len(set(v4))


def test_machine_address_is_stable_and_inside_the_host_prefix() -> None:
    prefix = ipaddress.IPv6Network("fdf1:ee70:0:1::/64")
    a = fc.machine_address(prefix, "hello/ams#1")
    assert a in prefix
    assert a == fc.machine_address(prefix, "hello/ams#1")
    assert a != fc.machine_address(prefix, "hello/ams#2")
    assert int(a) - int(prefix.network_address) >= 2
