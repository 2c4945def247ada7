"""The desired mesh and BIRD of each host, and how the planner uses them (pure)."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest

from fleet import compile as fleet_compile
from fleet import model
from fleet.errors import GuardError
from providers.resources import Kind
from reconciler.core import guards, hostnet, observed, planner
from reconciler.core import plan as P
from tests.core import support


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def world(tmp_path: Path) -> model.DesiredWorld:
    return fleet_compile.compile_world(support.load(support.fleet_dir(tmp_path)))


def test_each_host_peers_with_every_other_host_with_a_known_key(tmp_path: Path) -> None:
    w = world(tmp_path)
    keys = {h: key(i) for i, h in enumerate(sorted(w.fleet.hosts)) if h != "sea-2"}
    mesh = hostnet.MeshParts(w, keys)
    for host in w.fleet.hosts:
        spec = mesh.spec(host).spec
        peers = {p["host"]: p for p in spec["peers"]}
        assert set(peers) == set(keys) - {host}  # sea-2 has no key yet: nobody's peer
        for h, p in peers.items():
            assert p["allowed_ips"] == [str(w.host_prefixes[h])]
            assert p["public_key"] == keys[h]
        assert spec["routes"] == [str(w.fleet.network.private_prefix)]
        assert spec["address"].endswith("::1") and spec["interface"] == f"wg-{host}"
        assert spec["listen_port"] == 51820


def test_etag_changes_exactly_when_the_peer_set_does(tmp_path: Path) -> None:
    w = world(tmp_path)
    hosts = sorted(w.fleet.hosts)
    three = {h: key(i) for i, h in enumerate(hosts[:3])}
    before = {h: hostnet.MeshParts(w, three).spec(h).etag for h in hosts}
    again = {h: hostnet.MeshParts(w, dict(three)).spec(h).etag for h in hosts}
    assert before == again
    four = {**three, hosts[3]: key(9)}
    after = {h: hostnet.MeshParts(w, four).spec(h).etag for h in hosts}
    # The new host's own set is unchanged (it is not its own peer); everyone else's changed.
    assert after[hosts[3]] == before[hosts[3]]
    assert all(after[h] != before[h] for h in hosts[:3])
    # An etag covers the whole spec: equal specs, equal etags, whatever the key order.
    spec = hostnet.MeshParts(w, four).spec(hosts[0])
    assert spec.etag == hostnet.MeshParts(w, dict(reversed(four.items()))).spec(hosts[0]).etag


def test_a_host_not_observed_keeps_the_key_its_peers_were_given(tmp_path: Path) -> None:
    w = world(tmp_path)
    hosts = sorted(w.fleet.hosts)
    keys = {h: key(i) for i, h in enumerate(hosts)}
    applied = hostnet.MeshParts(w, keys).spec(hosts[0]).spec
    reported = {h: k for h, k in keys.items() if h != hosts[1]}
    assert hostnet.public_keys(w, reported, [applied]) == keys
    assert hostnet.public_keys(w, {**reported, "ghost": key(7)}, []) == reported


def test_bird_spec_has_router_id_asn_upstreams_and_pools(tmp_path: Path) -> None:
    w = world(tmp_path)
    d = hostnet.bird(w, "ams-1")
    assert d is not None
    assert d.spec == {
        "router_id": "192.0.2.11",
        "asn": 65010,
        "neighbors": [{"name": "up_ams_upstream", "address": "203.0.113.1", "asn": 64500}],
        "pools": ["198.51.100.0/24", "2001:db8:100::/48"],
    }
    assert d.etag == observed.etag(d.spec)


def _meshed(fleet: model.Fleet, keys: dict[str, str]) -> observed.Snapshot:
    """Every host observed empty, with an agent that manages the network kinds."""
    kinds = ("announcement", "bgp", "image", "machine", "route", "wireguard")
    w = fleet_compile.compile_world(fleet)
    hosts = {
        h: observed.HostObservation(
            h,
            True,
            facts=observed.Facts(
                private_prefix=str(w.host_prefixes[h]),
                kinds=kinds,
                wireguard_public_key=keys.get(h),
            ),
        )
        for h in fleet.hosts
    }
    return observed.Snapshot(MappingProxyType(hosts))


def test_plan_meshes_every_host_and_warns_about_unknown_keys(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    keys = {h: key(i) for i, h in enumerate(sorted(fleet.hosts)) if h != "sea-2"}
    p = planner.make(fleet, _meshed(fleet, keys), origin=P.FleetRef(None, False))
    meshes = {c.host: c for c in p.changes if c.kind == "wireguard"}
    birds = {c.host for c in p.changes if c.kind == "bgp"}
    assert set(meshes) == set(fleet.hosts) == birds
    assert all(c.action is P.Action.CREATE for c in meshes.values())
    warned = [w for w in p.warnings if "WireGuard public key" in w.message]
    assert [w.address for w in warned] == ["host.sea-2"]


def cordon_ams_1(doc: dict[str, object]) -> None:
    """A fleet_dir edit: host ams-1 cordoned."""
    if doc.get("kind") == "Host" and doc["metadata"]["name"] == "ams-1":  # type: ignore[index]
        doc["spec"]["cordoned"] = True  # type: ignore[index]


def test_cordoned_host_announces_nothing_and_others_announce_every_public_app(
    tmp_path: Path,
) -> None:
    fleet = support.load(support.fleet_dir(tmp_path, cordon_ams_1))
    p = planner.make(fleet, _meshed(fleet, {}), origin=P.FleetRef(None, False))
    announced = {(c.host, c.app) for c in p.changes if c.kind == "announcement"}
    public = {a for a, app in fleet.apps.items() if any(s.ports for s in app.services)}
    others = {h for h in fleet.hosts if h != "ams-1"}
    assert announced == {(h, a) for h in others for a in public}


def test_cordoning_starts_every_graceful_shutdown_of_the_host_in_its_bird_step(
    tmp_path: Path,
) -> None:
    # Each announcement's delete waits out the graceful shutdown (30 s by default) in one of
    # the host's --per-host slots: 100 apps took 25 minutes, 2 at a time. The BIRD step
    # starts them all; the deletes, after it, only wait out what is left.
    fleet = support.load(support.fleet_dir(tmp_path))
    keys = {h: key(i) for i, h in enumerate(sorted(fleet.hosts))}
    empty = _meshed(fleet, keys)
    first = planner.make(fleet, empty, origin=P.FleetRef(None, False))
    kept = ("announcement", "bgp")
    held = {
        h: tuple(
            observed.Resource(s.kind, s.resource_id, observed.OWNER_FLEET, s.etag or "", s.spec)
            for s in first.steps
            if s.host == h and s.kind in kept and s.spec is not None
        )
        for h in fleet.hosts
    }
    applied = observed.Snapshot(
        MappingProxyType(
            {h: dataclasses.replace(o, resources=held[h]) for h, o in empty.hosts.items()}
        )
    )
    assert not [
        c
        for c in planner.make(fleet, applied, origin=P.FleetRef(None, False)).changes
        if c.kind in kept
    ]

    cordoned = support.load(support.fleet_dir(tmp_path, cordon_ams_1, "cordoned"))
    p = planner.make(cordoned, applied, origin=P.FleetRef(None, False))
    bird = [s for s in p.steps if s.kind == "bgp"]
    assert [(s.host, s.verb) for s in bird] == [("ams-1", P.Verb.UPDATE)]
    assert bird[0].spec is not None and bird[0].spec["withdraw_all"] is True
    leaving = [s for s in p.steps if s.kind == "announcement"]
    assert len(leaving) == len(held["ams-1"]) - 1 > 1
    assert all(s.verb is P.Verb.DELETE and s.deps == (bird[0].id,) for s in leaving)
    other = hostnet.bird(fleet_compile.compile_world(cordoned), "ams-2")
    assert other is not None and "withdraw_all" not in other.spec  # etags of others unchanged


def test_an_announcement_waits_for_its_own_hosts_mesh_and_bird(tmp_path: Path) -> None:
    # The agent answers an announcement once the edge announces, which needs the host's
    # mesh (remote machines UP) and BIRD. Queued behind it on the host's apply slots, the
    # mesh was made only after such announcements gave up (ams-1: 77 s in the lab).
    fleet = support.load(support.fleet_dir(tmp_path))
    keys = {h: key(i) for i, h in enumerate(sorted(fleet.hosts))}
    p = planner.make(fleet, _meshed(fleet, keys), origin=P.FleetRef(None, False))
    net: dict[str, set[str]] = {}
    for s in p.steps:
        if s.kind in ("wireguard", "bgp"):
            net.setdefault(s.host, set()).add(s.id)
    announcements = [s for s in p.steps if s.kind == "announcement"]
    assert announcements and all(len(ids) == 2 for ids in net.values())
    for s in announcements:
        assert net[s.host] <= set(s.deps), (s.id, s.deps)
        others = {i for h, ids in net.items() if h != s.host for i in ids}
        assert not others & set(s.deps)
    assert all(not s.deps for s in p.steps if s.kind in ("wireguard", "bgp"))


def test_the_last_announcer_guard_counts_a_cordons_bird_step() -> None:
    # --target host.ams-1/bgp[bird] alone keeps no announcement delete, yet withdraws them all
    bird_step = P.Change(
        "host.ams-1/bgp[bird]",
        Kind.BGP,
        P.Action.UPDATE,
        "cordoned",
        host="ams-1",
        after={"router_id": "192.0.2.11", "withdraw_all": True},
    )
    announced = {"web": {"ams-1"}, "api": {"ams-1", "ams-2"}}
    with pytest.raises(GuardError, match="last host announcing app web's") as refused:
        guards.check([bird_step], {}, announced, P.Options())
    assert "app api" not in str(refused.value)
    guards.check([bird_step], {}, announced, P.Options(allow_anycast_withdraw=True))
    uncordoned = dataclasses.replace(bird_step, after={"router_id": "192.0.2.11"})
    guards.check([uncordoned], {}, announced, P.Options())
