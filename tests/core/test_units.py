"""Unit tests of the pure core: observed JSON, diff, placement, selection, rollout batches."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import pytest
import support
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import genfleet
from fleet import compile as fleet_compile
from fleet.errors import FleetError, PlanError, ProtocolError
from providers import resources
from providers.proxy import spec as proxy_spec
from providers.proxy import table as proxy_table
from reconciler.core import (
    desired,
    diff,
    frozen,
    observed,
    planfile,
    planner,
    rollout,
    schedule,
    snapfile,
    specpool,
)
from reconciler.state import sqlite

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "reconciler/core/schemas/observed.json").read_text()
)


def test_snapshot_round_trip_matches_the_published_schema(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    support.run(support.plan(fleet, hosts), hosts, sqlite.SqliteBackend(str(tmp_path / "s.db")))
    hosts.hosts["sea-2"].behaviour.unreachable = "timed out"
    snap = hosts.observe_all()
    raw = observed.snapshot_to_json(snap)
    jsonschema.validate(raw, SCHEMA)
    saved = json.loads(snapfile.dumps(snap))
    jsonschema.validate(saved, SCHEMA)
    again = snapfile.loads(snapfile.dumps(snap))
    assert observed.snapshot_to_json(again) == raw
    assert not again.hosts["sea-2"].reachable and again.hosts["sea-2"].error == "timed out"


def test_a_saved_snapshot_stores_each_spec_value_once(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    support.run(support.plan(fleet, hosts), hosts, sqlite.SqliteBackend(str(tmp_path / "s.db")))
    snap = hosts.observe_all()
    saved = json.loads(snapfile.dumps(snap))
    assert saved["format_version"] == 4
    texts = [observed.canonical(v) for v in saved["spec_values"]]
    assert len(texts) == len(set(texts))
    machines = [r for o in snap.hosts.values() for r in o.resources if r.kind == "machine"]
    images = {r.spec["image"] for r in machines}
    assert len(machines) > len(images) and sorted(images) == sorted(
        v for v in saved["spec_values"] if isinstance(v, str) and v in images
    )
    for raw in (r for body in saved["bodies"] if body for r in body):
        assert "spec" not in raw and raw["spec_ref"]
    # Each spec reads back equal, key order included; one key reads alone.
    again = snapfile.loads(json.dumps(saved))
    for name, obs in snap.hosts.items():
        for before, after in zip(obs.resources, again.hosts[name].resources, strict=True):
            assert isinstance(after.spec, specpool.PooledSpec)
            assert after.spec.get("app") == before.spec.get("app")
            assert list(after.spec.items()) == list(before.spec.items())
            assert after.spec == before.spec and after.etag == observed.etag(after.spec)


def test_a_damaged_saved_snapshot_is_one_clear_error(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    support.run(support.plan(fleet, hosts), hosts, sqlite.SqliteBackend(str(tmp_path / "s.db")))
    saved = json.loads(snapfile.dumps(hosts.observe_all(), 2))  # format 2: still read
    bad_keys = {**saved, "spec_keys": [["app", 3]]}
    with pytest.raises(FleetError, match=r"obs\.json: \$\.spec_keys"):
        snapfile.loads(json.dumps(bad_keys), "obs.json")
    for ref in ("9999", "0 99999 1", "x", "", "0 -1"):
        raw = json.loads(json.dumps(saved))
        raw["hosts"][0]["resources"][0]["spec_ref"] = ref
        spec = snapfile.loads(json.dumps(raw), "obs.json").hosts[raw["hosts"][0]["host"]]
        with pytest.raises(FleetError, match=r"obs\.json: spec_ref .* save it again"):
            dict(spec.resources[0].spec)
    raw = json.loads(json.dumps(saved))
    del raw["hosts"][0]["resources"][0]["spec_ref"]
    with pytest.raises(ProtocolError, match=r"\$\.resources\[0\]\.spec_ref: missing"):
        snapfile.loads(json.dumps(raw), "obs.json")


def test_malformed_observe_answer_names_host_and_path() -> None:
    bad = {
        "protocol_version": 1,
        "host": "ams-1",
        "generation": 3,
        "resources": [{"kind": "machine", "id": "x"}],
    }
    with pytest.raises(
        ProtocolError, match=r"host ams-1: observe answer: \$\.resources\[0\]\.owner: missing"
    ):
        observed.host_from_json(bad)
    with pytest.raises(ProtocolError, match="re-bootstrap"):
        observed.host_from_json({"protocol_version": 9, "host": "ams-1"})
    with pytest.raises(FleetError, match="format_version"):
        snapfile.loads('{"format_version": 7, "hosts": []}')


_GOOD = {
    "kind": "machine",
    "id": "web/ams#1@ab",
    "owner": "fleet",
    "etag": "sha256:00",
    "spec": {"app": "web"},
    "status": {"state": "running", "health": "passing", "runtime": {"pid": 1}},
    "actual": {"app": "web"},
}


@pytest.mark.parametrize(
    "edit",
    [
        {},
        {"status": None},
        {"status": {}},
        {"status": {"state": None, "health": None, "runtime": None}},
        {"actual": None},
        {"kind": "route", "owner": "someone"},
    ],
)
def test_fast_resource_parse_equals_the_checked_one(edit: dict) -> None:  # type: ignore[type-arg]
    raw = {k: v for k, v in {**_GOOD, **edit}.items() if v is not None or k == "status"}
    fast = observed._resource_fast(raw)
    assert fast is not None
    assert fast == observed._resource(observed._Reader("ams-1"), raw, "$.resources[0]")


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        ({"kind": "vm"}, r"\$\.resources\[0\]\.kind: unknown kind"),
        ({"etag": 3}, r"\$\.resources\[0\]\.etag: expected a string"),
        ({"spec": []}, r"\$\.resources\[0\]\.spec: expected an object"),
        ({"status": []}, r"\$\.resources\[0\]\.status: expected an object"),
        ({"status": {"state": "dancing"}}, r"\$\.resources\[0\]\.status: "),
        ({"status": {"runtime": 1}}, r"\$\.resources\[0\]\.status\.runtime: expected"),
        ({"actual": "x"}, r"\$\.resources\[0\]\.actual: expected an object"),
    ],
)
def test_malformed_resource_still_names_its_path(edit: dict, where: str) -> None:  # type: ignore[type-arg]
    answer = {
        "protocol_version": 1,
        "host": "ams-1",
        "generation": 1,
        "resources": [{**_GOOD, **edit}],
    }
    with pytest.raises(ProtocolError, match=where):
        observed.host_from_json(answer)


def test_diff_reports_leaves_with_their_effect() -> None:
    items = diff.diff(
        {"image": "a", "env": {"A": "1"}, "restart": {"policy": "always"}},
        {"image": "b", "env": {"A": "1", "B": "2"}, "restart": {"policy": "never"}},
        resources.Kind.MACHINE,
    )
    assert [(i.dotted, i.before, i.after, i.effect.value) for i in items] == [
        ("env.B", diff.MISSING, "2", "replace"),
        ("image", "a", "b", "replace"),
        ("restart.policy", "always", "never", "update"),
    ]
    assert diff.forces_replace(items)
    route = diff.diff({"backends": ["a"]}, {"backends": ["a", "b"]}, resources.Kind.ROUTE)
    assert not diff.forces_replace(route)


_LEAVES = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([0.0, 1.0, 2.5])
_JSON = st.recursive(
    _LEAVES | st.text("ab", max_size=2),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text("xyz", max_size=1), inner, max_size=3)
    ),
    max_leaves=8,
)
_SPECS = st.dictionaries(st.sampled_from(["image", "env", "vm", "restart", "services"]), _JSON)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_SPECS, _SPECS)
def test_diff_of_changed_keys_only_equals_deepdiff_of_whole_specs(
    before: dict[str, object], after: dict[str, object]
) -> None:
    kind = resources.Kind.MACHINE
    rules = resources.rules(kind)
    whole = [
        diff.DiffItem(p, b, a, rules.effect(p))
        for p, b, a in diff._deepdiff((), before, after, kind)
    ]
    expected = sorted(whole, key=lambda i: [str(p) for p in i.path])
    assert list(diff.diff(before, after, kind)) == expected


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_fast_ipv6_text_equals_ipaddress(value: int) -> None:
    assert desired.v6_text(value) == str(ipaddress.IPv6Address(value))


def test_fast_etags_equal_the_canonical_etag(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    world = fleet_compile.compile_world(fleet)
    for slot in world.slots:
        parts = desired.AppParts(fleet.apps[slot.app], world.anycast[slot.app])
        spec, tag = parts.machine(slot, world.host_prefixes["ams-1"])
        assert tag == observed.etag(spec)
        address = fleet_compile.machine_address(world.host_prefixes["ams-1"], slot.id)
        assert spec["address"] == str(address)
    on_host = {"ams-1": {"hello": ["ams#1"]}, "sea-1": {"hello": ["sea#1"]}}
    routes = desired.RouteSpecs.of_keys(world, on_host)
    for host in ("ams-1", "ams-2", "sea-1"):
        route = routes.route(host, "hello")
        assert route.etag == observed.etag(route.spec)


def test_route_specs_are_per_region_local_first_then_backups_over_the_mesh(
    tmp_path: Path,
) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    world = fleet_compile.compile_world(fleet)
    on_host = {"ams-1": {"hello": ["ams#1"]}, "sea-1": {"hello": ["sea#1"]}}
    routes = desired.RouteSpecs.of_keys(world, on_host)
    ams1, ams2, sea2 = (routes.route(h, "hello") for h in ("ams-1", "ams-2", "sea-2"))
    assert ams1.spec is ams2.spec and ams1.etag == ams2.etag  # shared by the region's hosts
    assert sea2.etag != ams1.etag
    http = ams2.spec["routes"]["be_hello_0"]
    machines = [(n, s["role"]) for n, s in http["servers"].items() if s["role"] != "waker"]
    assert machines == [("ams.1", "local"), ("sea.1", "remote")]
    ams_machine = http["servers"]["ams.1"]
    prefix = world.host_prefixes["ams-1"]
    assert ams_machine["address"] == str(fleet_compile.machine_address(prefix, "hello/ams#1"))
    sea_http = sea2.spec["routes"]["be_hello_0"]
    assert [n for n, s in sea_http["servers"].items() if s["role"] == "local"] == ["sea.1"]


def _place(tmp_path: Path, edit=None, running=None, unmanaged=None, down=()):  # type: ignore[no-untyped-def]
    fleet = support.load(support.fleet_dir(tmp_path, edit))
    world = fleet_compile.compile_world(fleet)
    return world, schedule.place(world, running or {}, unmanaged or {}, down)


def test_placement_is_deterministic_spread_and_sticky(tmp_path: Path) -> None:
    _, first = _place(tmp_path, support.app_edit("hello", regions={"ams": 4, "sea": 2}))
    _, second = _place(tmp_path, support.app_edit("hello", regions={"ams": 4, "sea": 2}))
    assert first.hosts == second.hosts
    ams = [first.hosts[f"hello/ams#{i}"] for i in range(1, 5)]
    assert sorted(ams) == ["ams-1", "ams-1", "ams-2", "ams-2"]  # spread
    assert first.hosts["infer/sea#1"] == "sea-2"  # the only L4 host
    # Stickiness: a slot running on ams-2 stays there even if spread would choose otherwise.
    _, sticky = _place(tmp_path, running={"echo/ams#1": ["ams-2"]})
    assert sticky.hosts["echo/ams#1"] == "ams-2"


def test_cordoned_host_takes_nothing_and_moves_its_machines(tmp_path: Path) -> None:
    def cordon(d):  # type: ignore[no-untyped-def]
        if d["kind"] == "Host" and d["metadata"]["name"] == "ams-2":
            d["spec"]["cordoned"] = True

    _, p = _place(tmp_path, cordon, running={"hello/ams#1": ["ams-2"]})
    assert all(h != "ams-2" for h in p.hosts.values())
    assert p.moved["hello/ams#1"] == "host ams-2 is cordoned"


def test_performance_cpus_never_overcommit_shared_may(tmp_path: Path) -> None:
    # Unmanaged machines leave each ams host less than one whole cpu: a performance
    # machine (1 dedicated cpu) fits nowhere, even though fractions add up.
    big = {"image": "x", "vm": {"cpus": 3, "memory_mb": 128, "cpu_kind": "performance"}}
    with pytest.raises(
        PlanError, match=r"region ams: app ledger needs 2 more machine\(s\) of 1 performance cpus"
    ):
        _place(
            tmp_path,
            support.app_edit("ledger", regions={"ams": 2}),
            unmanaged={
                "ams-1": [big],
                "ams-2": [
                    big,
                    {"image": "y", "vm": {"cpus": 1, "memory_mb": 1, "cpu_kind": "performance"}},
                ],
            },
        )
    # shared cpus count 1/4 each (overcommit 4): 8 shared 1-cpu machines use 2 cpus of 4
    shared = {"image": "x", "vm": {"cpus": 1, "memory_mb": 128, "cpu_kind": "shared"}}
    _, ok = _place(tmp_path, unmanaged={"ams-1": [shared] * 8, "ams-2": [shared] * 8})
    assert ok.hosts


def test_unobserved_region_host_defers_unseen_slots(tmp_path: Path) -> None:
    _, p = _place(tmp_path, running={"echo/sea#1": ["sea-1"]}, down=("sea-2",))
    assert p.hosts["echo/sea#1"] == "sea-1"  # seen elsewhere: known
    assert p.deferred["hello/sea#1"] == "may run on unobserved host sea-2"
    assert "hello/ams#1" in p.hosts  # other regions unaffected


@pytest.mark.parametrize(
    "case",
    [
        ("rolling", 3, 1, 0.33, 1, ([1, 1, 1], True)),
        ("rolling", 10, 2, 0.33, 1, ([2, 2, 2, 2, 2], True)),
        ("rolling", 10, 0, 0.33, 1, ([3, 3, 3, 1], False)),
        ("canary", 5, 1, 0.5, 2, ([2, 1, 1, 1], True)),
        ("bluegreen", 4, 1, 0.33, 1, ([4], True)),
        ("immediate", 4, 0, 0.33, 1, ([4], True)),
    ],
)
def test_batch_sizes(tmp_path: Path, case: tuple) -> None:  # type: ignore[type-arg]
    strategy, count, surge, unavail, canary, expected = case
    deploy = {
        "strategy": strategy,
        "max_surge": surge,
        "max_unavailable": unavail,
        "canary_count": canary,
    }
    fleet = support.load(
        support.fleet_dir(
            tmp_path, support.app_edit("hello", regions={"ams": count}, deploy=deploy)
        )
    )
    assert rollout.batch_plan(fleet.apps["hello"], count) == expected


def test_targets_keep_dependencies_and_excludes_drop_dependents(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    targeted = support.plan(fleet, hosts, targets=("host.ams-1/announcement[echo]",))
    assert {c.address for c in targeted.changes} == {
        "host.ams-1/announcement[echo]",
        "host.ams-1/route[echo]",
        "app.echo/machine[ams#1]",
        "host.ams-1/image[192.0.2.2:5000/examples/echo:1.0]",
        # the route of every edge waits for all of the app's new machines
        "app.echo/machine[sea#1]",
        "host.sea-1/image[192.0.2.2:5000/examples/echo:1.0]",
    }
    excluded = support.plan(
        fleet, hosts, excludes=("host.ams-1/image[192.0.2.2:5000/examples/echo:1.0]",)
    )
    gone = set(excluded.excluded)
    assert "app.echo/machine[ams#1]" in gone and "host.ams-1/announcement[echo]" in gone
    assert "app.echo/machine[sea#1]" not in gone
    ids = {s.id for s in excluded.steps}
    assert all(d in ids for s in excluded.steps for d in s.deps)


def test_saved_plan_of_another_format_is_refused() -> None:
    with pytest.raises(FleetError, match="format_version 1"):
        planfile.loads('{"format_version": 99}')


def test_revert_steps_undo_in_reverse(tmp_path: Path) -> None:
    before = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(before)
    support.run(support.plan(before, hosts), hosts, sqlite.SqliteBackend(str(tmp_path / "s.db")))
    after = support.load(
        support.fleet_dir(tmp_path, support.app_edit("echo", image="echo:2"), "v2")
    )
    plan = support.plan(after, hosts)
    done = [s.id for s in plan.steps if s.app == "echo" and s.kind == "machine"]
    steps = rollout.revert_steps(plan, "echo", done)
    verbs = [(s.verb.value, s.expect is None) for s in steps]
    assert verbs.count(("create", True)) == 2 and verbs.count(("delete", False)) == 2
    assert all(s.id.endswith(":revert") for s in steps)


def _mark_edge(doc: dict[str, Any]) -> None:
    if doc.get("kind") == "Host" and doc["metadata"]["name"] == "ams-1":
        doc["spec"]["edge"] = True


def test_edge_hosts_default_to_every_host_and_marking_narrows_a_region(tmp_path: Path) -> None:
    everyone = support.load(support.fleet_dir(tmp_path))
    assert fleet_compile.edge_hosts(everyone) == frozenset(everyone.hosts)
    marked = support.load(support.fleet_dir(tmp_path, _mark_edge, name="marked"))
    sea = {h for h, host in marked.hosts.items() if host.region == "sea"}
    # ams has a marked edge, so only it; sea marked none, so all of its hosts
    assert fleet_compile.edge_hosts(marked) == frozenset({"ams-1", *sea})


def test_only_edge_hosts_get_routes_announcements_and_bird(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path, _mark_edge))
    p = support.plan(fleet, support.hosts_for(fleet))
    kinds_on: dict[str, set[str]] = {}
    for c in p.changes:
        if c.host is not None:
            kinds_on.setdefault(c.host, set()).add(c.kind.value)
    assert {"route", "announcement"} <= kinds_on["ams-1"]
    assert not kinds_on["ams-2"] & {"route", "announcement", "bgp"}
    assert "machine" in kinds_on["ams-2"]  # still runs machines, reached over the mesh


def test_route_specs_from_candidates_equal_the_table_of_every_machine(tmp_path: Path) -> None:
    """RouteSpecs hands each table build only the machines it can pick; the specs must not change.

    Latencies with ties, a region missing from a latency map (unknown: last)
    and regions with fewer machines than ``max_backups`` all occur here.
    """
    fleet = support.load(genfleet.generate(tmp_path / "fleet", 40, 12, 130, 1))
    names = sorted(fleet.regions)
    regions = {
        name: dataclasses.replace(
            region,
            latency_ms={o: (7 * i + 3 * j) % 4 * 10 for j, o in enumerate(names) if j % 5 != 1},
        )
        for i, (name, region) in enumerate(sorted(fleet.regions.items()))
    }
    fleet = dataclasses.replace(fleet, regions=regions)
    world = fleet_compile.compile_world(fleet)
    placement = schedule.place(world, {}, {}, [])
    on_host: dict[str, dict[str, list[str]]] = {}
    for slot in world.slots:
        on_host.setdefault(placement.hosts[slot.id], {}).setdefault(slot.app, []).append(slot.key)
    routes = desired.RouteSpecs.of_keys(world, on_host)
    every = [
        proxy_table.MachineView(
            slot,
            placement.hosts[slot.id],
            proxy_table.MachineState.HEALTHY,
            str(
                fleet_compile.machine_address(
                    world.host_prefixes[placement.hosts[slot.id]], slot.id
                )
            ),
        )
        for slot in world.slots
    ]
    compared = 0
    for app in sorted(fleet.apps):
        for region in names:
            host = next(h.name for h in fleet.hosts.values() if h.region == region)
            mine = [m for m in every if m.slot.app == app]
            table = proxy_spec.app_routes(world, app, host, mine, checked=False)
            expected = proxy_spec.to_json(app, region, table)
            spec, tag = routes.spec(app, host)
            assert spec == expected, (app, region)
            assert tag == observed.etag(expected)
            compared += sum(len(r["servers"]) for r in expected["routes"].values())
    assert compared > 12 * len(names) * 3  # backups were really chosen


def test_fast_makers_build_the_same_frozen_objects() -> None:
    make = frozen.maker(desired.Desired)
    spec = {"ref": "x"}
    fast = make("host.h/image[x]", resources.Kind.IMAGE, "h", "x", spec, "sha256:1", None)
    assert fast == desired.Desired(
        "host.h/image[x]", resources.Kind.IMAGE, "h", "x", spec, "sha256:1", None
    )
    assert desired.on_host("h", resources.Kind.IMAGE, "x", spec, "sha256:1") == fast
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.etag = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="not a frozen"):
        frozen.maker(schedule._Free)


def test_deepdiff_is_loaded_without_pydantic() -> None:
    # deepdiff imports pydantic only to compare pydantic models; the diff never
    # passes any, and the import was half of deepdiff's (reconciler/imports.py).
    code = (
        "import sys; from reconciler.core import diff; "
        "diff.diff({'a': [1, 2]}, {'a': [1, 3]}, 'route'); "
        "print('deepdiff' in sys.modules, 'pydantic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_a_change_outside_lists_is_found_without_importing_deepdiff() -> None:
    # a one-route change (hard_limit -> each server's maxconn) is nested mappings only
    code = (
        "import sys; from reconciler.core import diff; "
        "items = diff.diff({'r': {'s': {'maxconn': 25, 'w': [1]}}}, "
        "{'r': {'s': {'maxconn': 26, 'w': [1]}}}, 'route'); "
        "print([i.dotted for i in items], 'deepdiff' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['r.s.maxconn'] False"


def test_lists_of_objects_are_pooled_item_by_item() -> None:
    """Every host's WireGuard peers are the other hosts: the file keeps each peer once."""
    peers = [
        {"host": f"h{i}", "public_key": f"k{i}", "allowed_ips": [f"fd00::{i}/128"]}
        for i in range(6)
    ]

    def host(i: int) -> observed.HostObservation:
        spec = {"interface": "wg0", "peers": peers[:i] + peers[i + 1 :]}
        mesh = observed.Resource(
            observed.resources.Kind.WIREGUARD, "mesh", "fleet", observed.etag(spec), spec
        )
        return observed.HostObservation(f"h{i}", True, 1, resources=(mesh,))

    snap = observed.Snapshot(MappingProxyType({f"h{i}": host(i) for i in range(6)}))
    text = snapfile.dumps(snap)
    saved = json.loads(text)
    assert len(saved["spec_lists"]) == 6
    assert sum(v in peers for v in saved["spec_values"]) == 6  # each peer once
    again = snapfile.loads(text, "obs.json")
    for name, obs in snap.hosts.items():
        spec = again.hosts[name].resources[0].spec
        assert spec.get("peers") == obs.resources[0].spec["peers"]
        assert observed.etag(dict(spec)) == obs.resources[0].etag
    for ref in ("*99", "*x", "*"):
        raw = json.loads(text)
        raw["bodies"][0][0]["spec_ref"] = (
            raw["bodies"][0][0]["spec_ref"].rsplit(" ", 1)[0] + f" {ref}"
        )
        spec = snapfile.loads(json.dumps(raw), "obs.json").hosts["h0"].resources[0].spec
        with pytest.raises(FleetError, match=r"obs\.json: spec_ref .* save it again"):
            spec.get("peers")
    raw = json.loads(text)
    raw["spec_lists"][0] = "*0 1"  # a list's items are values, never lists
    spec = snapfile.loads(json.dumps(raw), "obs.json").hosts["h0"].resources[0].spec
    with pytest.raises(FleetError, match=r"obs\.json: spec_ref .* save it again"):
        dict(spec)


@pytest.mark.parametrize(
    "text",
    ["198.51.100.10/32", "2001:db8:100::a/128", "192.0.2.4/33", "192.0.2.4/255.255.255.0",
     "192.0.2.04/32", "192.0.2.4", "::1/129", "fd00::1%e/64", "192.0.2.4/08",
     "::ffff:192.0.2.4/128", "fd00::/64", "fd00::1/64", "FD00:0:0:1::/064", "fd00::/ 64",
     "x/64", "fd00::/-1"],
)  # fmt: skip
def test_the_planners_address_parsers_agree_with_ipaddress(text: str) -> None:
    """The planner parses reported prefixes with inet_pton: same results, same refusals."""

    def outcome(parse: Any) -> str:
        try:
            return repr(parse(text))
        except ValueError:
            return "ValueError"

    assert outcome(planner._interface_address) == outcome(lambda t: ipaddress.ip_interface(t).ip)
    assert outcome(planner._v6_network) == outcome(ipaddress.IPv6Network)
