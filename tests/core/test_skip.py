"""Hosts skipped wholesale by the plan: recorded inputs digests, settled hosts, saved files.

Every plan made through the skip is compared, byte for byte, with the plan the
full per-resource path makes from the same observations without digests.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from fleet import compile as fleet_compile
from fleet import model
from fleet.errors import FleetError, ProtocolError
from reconciler import apply
from reconciler.core import observed, planfile, planner, snapfile
from reconciler.core import plan as P
from reconciler.hosts import memory
from reconciler.state import sqlite
from tests.core import support

EDGES = ("ams-1", "sea-1")


def _edges(d: dict[str, Any]) -> None:
    """ams-1 and sea-1 are the edges: the other two hosts only run machines."""
    if d["kind"] == "Host":
        d["spec"]["edge"] = d["metadata"]["name"] in EDGES


def _applied(tmp_path: Path) -> tuple[model.Fleet, memory.MemoryFleet]:
    fleet = support.load(support.fleet_dir(tmp_path, _edges))
    hosts = support.hosts_for(fleet)
    report = support.run(
        support.plan(fleet, hosts), hosts, sqlite.SqliteBackend(str(tmp_path / "s.db"))
    )
    assert report.ok
    return fleet, hosts


Applied = tuple[model.Fleet, memory.MemoryFleet]


@pytest.fixture
def applied(tmp_path: Path) -> Applied:
    return _applied(tmp_path)


def _make(fleet: model.Fleet, snap: observed.Snapshot) -> P.Plan:
    return planner.make(fleet, snap, origin=P.FleetRef(None, False))


def _without_digests(snap: observed.Snapshot) -> observed.Snapshot:
    """The same observations from agents that keep no digest now: the full path."""
    hosts = {n: dataclasses.replace(o, inputs="") for n, o in snap.hosts.items()}
    return dataclasses.replace(snap, hosts=MappingProxyType(hosts))


def _with(
    snap: observed.Snapshot, host: str, resources: tuple[observed.Resource, ...]
) -> observed.Snapshot:
    """``snap`` with ``host`` holding ``resources`` (its digest unchanged)."""
    obs = dataclasses.replace(snap.hosts[host], resources=resources)
    return dataclasses.replace(snap, hosts=MappingProxyType({**snap.hosts, host: obs}))


def _planned_through_skip(
    fleet: model.Fleet, snap: observed.Snapshot, monkeypatch: pytest.MonkeyPatch
) -> tuple[P.Plan, list[str]]:
    """The plan from ``snap`` saved and read as ``plan --observed`` does, and the hosts
    whose resources it had to parse."""
    lazy = snapfile.loads(snapfile.dumps(snap), lazy=True)
    parsed: list[str] = []
    real = observed.decoded

    def decoded(o: observed.HostObservation) -> observed.HostObservation:
        parsed.append(o.host)
        return real(o)

    with monkeypatch.context() as m:
        m.setattr(observed, "decoded", decoded)
        plan = _make(fleet, lazy)
    full = _make(fleet, _without_digests(snap))
    assert planfile.dumps(plan) == planfile.dumps(full), "the skip planned differently"
    return plan, sorted(set(parsed))


def test_after_an_apply_every_host_is_skipped_and_the_plan_is_the_full_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, hosts = _applied(tmp_path)
    snap = hosts.observe_all()
    assert all(o.inputs and o.inputs.startswith("inputs:") for o in snap.hosts.values())
    plan, parsed = _planned_through_skip(fleet, snap, monkeypatch)
    assert not plan.changes and len(plan.noops) > 10
    assert parsed == []  # no host's resources were even parsed
    assert plan.inputs == {n: o.inputs for n, o in snap.hosts.items()}


def test_a_host_with_a_drifted_resource_is_planned_in_full(
    applied: Applied, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, snap = applied[0], applied[1].observe_all()
    # The digest still matches, but one machine stopped: the host is not settled.
    obs = snap.hosts["sea-2"]
    machine = next(r for r in obs.resources if r.kind == "machine")
    stopped = dataclasses.replace(
        machine, status=observed.Status(observed.RunState.FAILED, observed.Health.CRITICAL)
    )
    snap = _with(snap, "sea-2", tuple(stopped if r is machine else r for r in obs.resources))
    plan, parsed = _planned_through_skip(fleet, snap, monkeypatch)
    assert parsed == ["sea-2"]
    assert [(c.action, c.host) for c in plan.changes] == [(P.Action.START, "sea-2")]


def test_an_unmanaged_resource_is_listed_though_the_digest_matches(
    applied: Applied, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, snap = applied[0], applied[1].observe_all()
    obs = snap.hosts["ams-2"]
    stray = observed.Resource(observed.resources.Kind.IMAGE, "stray:1", "someone", "x", {})
    snap = _with(snap, "ams-2", (*obs.resources, stray))
    plan, parsed = _planned_through_skip(fleet, snap, monkeypatch)
    assert parsed == ["ams-2"] and [u.id for u in plan.unmanaged] == ["stray:1"]


def test_an_app_change_changes_the_digest_of_exactly_its_hosts_and_the_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, hosts = _applied(tmp_path)
    before = support.plan(fleet, hosts).inputs
    app = "ledger"
    on = {h for h, a, _, _ in support.machines(hosts) if a == app}
    assert on and not set(EDGES) <= on and on | set(EDGES) != set(before)
    changed = support.load(
        support.fleet_dir(
            tmp_path, lambda d: (_edges(d), support.app_edit(app, image="ledger:next")(d))
        )
    )
    after = support.plan(changed, hosts).inputs
    assert {h for h in before if before[h] != after[h]} == on | set(EDGES)
    # ...and the plan of the change skips the other hosts, saying what the full path says.
    plan, parsed = _planned_through_skip(changed, hosts.observe_all(), monkeypatch)
    assert parsed == sorted(on | set(EDGES))
    assert plan.changes and {c.app for c in plan.changes} == {app, None}  # None: its image


class _Spy:
    """A host client that notes which steps carried a digest and every separate record."""

    def __init__(self, host: memory.MemoryHost, log: list[tuple[str, str, str | None]]) -> None:
        self.host, self.log = host, log
        self.name = host.name

    def observe(self) -> observed.HostObservation:
        return self.host.observe()

    def apply(self, actions: Any, on_event: Any, record: str | None = None) -> Any:
        self.log.append(("apply", actions[0].id, record))
        return self.host.apply(actions, on_event, record)

    def record_inputs(self, digest: str, generation: int) -> bool:
        self.log.append(("record", self.name, digest))
        return self.host.record_inputs(digest, generation)


def test_the_digest_goes_with_each_hosts_last_step_not_in_a_round_trip_of_its_own(
    tmp_path: Path,
) -> None:
    fleet = support.load(support.fleet_dir(tmp_path, _edges))
    hosts = support.hosts_for(fleet)
    plan = support.plan(fleet, hosts)
    log: list[tuple[str, str, str | None]] = []
    clients = {name: _Spy(host, log) for name, host in hosts.hosts.items()}
    report = apply.apply(
        plan,
        "t",
        clients=clients.__getitem__,
        state=sqlite.SqliteBackend(str(tmp_path / "s.db")),
        per_host=1,  # (a host's last step sent while another of its is in flight takes none)
    )
    assert report.ok
    by_id = {s.id: s for s in plan.steps}
    with_steps = {s.host for s in plan.steps}
    separate = {host for kind, host, _ in log if kind == "record"}
    assert with_steps and not separate & with_steps  # no extra round trip where a step went
    assert separate == set(plan.inputs) - with_steps  # (a host without steps: one of its own)
    for host, digest in plan.inputs.items():
        sent = [(sid, d) for kind, sid, d in log if kind == "apply" and by_id[sid].host == host]
        if not sent:
            continue
        # only the host's last step carried it (steps earlier on the host: none)
        assert [d for _, d in sent] == [None] * (len(sent) - 1) + [digest], host
    assert all(o.inputs == plan.inputs[n] for n, o in hosts.observe_all().hosts.items())


def test_no_digest_is_recorded_where_a_step_failed(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path, _edges))
    hosts = support.hosts_for(fleet)
    plan = support.plan(fleet, hosts)
    step = next(s for s in plan.steps if s.host == "ams-2")
    hosts.hosts["ams-2"].behaviour.fail_actions[step.id] = "disk full"
    support.run(plan, hosts, sqlite.SqliteBackend(str(tmp_path / "s.db")))
    snap = hosts.observe_all()
    assert snap.hosts["ams-2"].inputs == ""
    assert snap.hosts["sea-2"].inputs == plan.inputs["sea-2"]


def test_the_in_process_host_keeps_the_digest_until_its_resources_change(
    tmp_path: Path,
) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet, tmp_path / "hosts.json")
    host = hosts.hosts["ams-1"]
    assert host.observe().inputs == ""
    assert not host.record_inputs("inputs:x", host.generation + 1)
    assert host.record_inputs("inputs:x", host.generation)
    assert host.observe().inputs == "inputs:x"
    again = memory.MemoryFleet(tmp_path / "hosts.json")  # persisted
    assert again.hosts["ams-1"].observe().inputs == "inputs:x"
    host.put(observed.Resource(observed.resources.Kind.IMAGE, "i", "fleet", "e", {}))
    assert host.observe().inputs == ""


def test_a_saved_snapshot_keeps_bodies_unparsed_until_asked(tmp_path: Path) -> None:
    _, hosts = _applied(tmp_path)
    snap = hosts.observe_all()
    text = snapfile.dumps(snap)
    lazy = snapfile.loads(text, lazy=True)
    eager = snapfile.loads(text)
    for name, obs in snap.hosts.items():
        kept = lazy.hosts[name]
        assert kept.resources == () and kept.lazy is not None
        assert kept.lazy.summary == observed.summarize(obs)
        assert observed.decoded(kept).resources == eager.hosts[name].resources
        assert [observed.resource_to_json(r) for r in eager.hosts[name].resources] == [
            observed.resource_to_json(r) for r in obs.resources
        ]
    raw = json.loads(text)
    raw["hosts"][0]["summary"]["machines"] = ["web/ams#1"]  # no etag
    with pytest.raises(ProtocolError, match=r"\$\.summary\.machines"):
        snapfile.loads(json.dumps(raw), lazy=True)
    # A damaged body is found when the plan reads it: format 3 (a string) ...
    raw = json.loads(snapfile.dumps(snap, 3))
    raw["hosts"][0]["body"] = "[{"
    first = raw["hosts"][0]["host"]
    with pytest.raises(ProtocolError, match=r"\$\.body: not JSON"):
        observed.decoded(snapfile.loads(json.dumps(raw), lazy=True).hosts[first])
    # ... and format 4, read by position: the line of the first host's resources
    lines = text.split("\n")
    at = lines.index('],"bodies":[') + 1
    lines[at] = "[{,"
    damaged = snapfile.loads("\n".join(lines), lazy=True)
    assert damaged.hosts[first].lazy is not None
    with pytest.raises(ProtocolError, match=r"\$\.body: not JSON"):
        observed.decoded(damaged.hosts[first])
    # A damaged pool in that layout is an error naming the file when a spec is first read.
    lines = text.split("\n")
    lines[-2] = '"spec_values":[1,}'
    damaged = snapfile.loads("\n".join(lines), "obs.json", lazy=True)
    with pytest.raises(FleetError, match=r"obs\.json: spec pool .*not JSON"):
        observed.decoded(damaged.hosts[first])


def test_a_saved_snapshot_in_another_layout_reads_the_same(tmp_path: Path) -> None:
    """Format 4 read by position and the same document re-laid-out (read as plain
    JSON) give the same snapshot; a broken host line is a JSON error with its line."""
    _, hosts = _applied(tmp_path)
    snap = hosts.observe_all()
    text = snapfile.dumps(snap)
    pretty = json.dumps(json.loads(text), indent=2)
    assert pretty.count("\n") > text.count("\n")
    want = observed.snapshot_to_json(snap)
    for t in (text, pretty):
        assert observed.snapshot_to_json(snapfile.loads(t)) == want
        lazy = snapfile.loads(t, lazy=True)
        decoded = {n: observed.decoded(o) for n, o in lazy.hosts.items()}
        assert observed.snapshot_to_json(dataclasses.replace(lazy, hosts=decoded)) == want
    lines = text.split("\n")
    lines[2] = "x" + lines[2]
    with pytest.raises(FleetError, match=r"obs\.json: not JSON: .*line 3 column 1"):
        snapfile.loads("\n".join(lines), "obs.json")


def test_every_host_keeps_a_different_digest(tmp_path: Path) -> None:
    fleet, hosts = _applied(tmp_path)
    world = fleet_compile.compile_world(fleet)
    digests = support.plan(fleet, hosts).inputs
    assert sorted(digests) == sorted(world.fleet.hosts) and len(set(digests.values())) == 4


def test_a_machine_replaced_in_place_drains_the_skipped_edges_too(
    applied: Applied, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, hosts = applied
    # Changed on sea-2 by hand (its digest is void): replaced in place, so every
    # edge routing to it gets a drain step first, though the edges' inputs are the same.
    host = hosts.hosts["sea-2"]
    machine = next(r for r in host.items.values() if r.kind == "machine")
    spec = {**machine.spec, "image": "by-hand:1"}
    host.put(dataclasses.replace(machine, etag=observed.etag(spec), spec=spec))
    snap = hosts.observe_all()
    assert [n for n, o in snap.hosts.items() if not o.inputs] == ["sea-2"]
    plan, parsed = _planned_through_skip(fleet, snap, monkeypatch)
    assert parsed == sorted(["sea-2", *EDGES])
    assert any(c.action is P.Action.REPLACE and c.host == "sea-2" for c in plan.changes)
    drains = [s for s in plan.steps if s.kind == "route"]
    assert drains and {s.host for s in drains} <= set(EDGES)
