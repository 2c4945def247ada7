"""Apply against in-process hosts: preconditions, health gates and revert, parallelism, lock."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import support

from fleet.errors import LockError
from providers import resources
from reconciler import apply
from reconciler.core import plan as P
from reconciler.hosts import memory, protocol
from reconciler.state import base, sqlite

V2 = "192.0.2.2:5000/examples/hello:2.0"


@pytest.fixture
def state(tmp_path: Path) -> sqlite.SqliteBackend:
    s = sqlite.SqliteBackend(str(tmp_path / "state.db"))
    yield s
    s.close()


def test_apply_from_empty_then_replan_is_noop(tmp_path: Path, state: sqlite.SqliteBackend) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    report = support.run(support.plan(fleet, hosts), hosts, state)
    assert report.ok
    # 7 machines, 5 images, and a route and an announcement of each of 4 apps on each of 4 hosts
    assert sum(len(r.succeeded) for r in report.hosts.values()) == 44
    assert len(support.machines(hosts)) == 7
    again = support.plan(fleet, hosts)
    assert not again.has_changes and not again.steps


def test_stale_precondition_refuses_only_its_action(
    tmp_path: Path, state: sqlite.SqliteBackend
) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    assert support.run(support.plan(fleet, hosts), hosts, state, "first").ok
    edited = support.load(
        support.fleet_dir(
            tmp_path,
            support.app_edit("echo", restart={"policy": "on-failure", "max_retries": 2}),
            "v2",
        )
    )
    p = support.plan(edited, hosts)
    assert {c.address for c in p.changes} == {"app.echo/machine[ams#1]", "app.echo/machine[sea#1]"}
    # Between plan and apply someone else changes echo's machine on ams-1.
    h = hosts.hosts["ams-1"]
    ((key, r),) = [
        (k, r) for k, r in h.items.items() if r.spec.get("app") == "echo" and r.kind == "machine"
    ]
    h.put(dataclasses.replace(r, etag="sha256:someoneelse00000"))
    report = support.run(p, hosts, state, "second")
    assert report.hosts["ams-1"].refused == [
        ("app.echo/machine[ams#1]:update", "sha256:someoneelse00000")
    ]
    assert report.hosts["sea-1"].succeeded == ["app.echo/machine[sea#1]:update"]
    assert not report.ok
    assert h.items[key].etag == "sha256:someoneelse00000"  # left alone
    journal = state.journal("second")
    assert journal["app.echo/machine[ams#1]:update"].status is base.Status.REFUSED
    assert journal["app.echo/machine[ams#1]:update"].etag == "sha256:someoneelse00000"


def _rolling_fleet(tmp_path: Path) -> tuple[object, object]:
    before = support.load(
        support.fleet_dir(tmp_path, support.app_edit("hello", regions={"ams": 3, "sea": 2}))
    )
    after = support.load(
        support.fleet_dir(
            tmp_path, support.app_edit("hello", regions={"ams": 3, "sea": 2}, image=V2), "v2"
        )
    )
    return before, after


def test_failed_gate_on_first_batch_halts_and_removes_the_new_machine(
    tmp_path: Path, state: sqlite.SqliteBackend
) -> None:
    before, after = _rolling_fleet(tmp_path)
    hosts = support.hosts_for(before)
    assert support.run(support.plan(before, hosts), hosts, state, "base").ok
    old = support.machines(hosts)
    for h in hosts.hosts.values():
        h.behaviour.unhealthy_images.add(V2)
    p = support.plan(after, hosts)
    report = support.run(p, hosts, state, "deploy")
    assert "hello" in report.halted
    assert "app.hello/machine[ams#1]:create" in report.halted["hello"]
    assert support.machines(hosts) == old  # the unhealthy new machine is gone, old ones stay
    reverted = sorted(s for r in report.hosts.values() for s in r.reverted)
    # replaced in place (same address): the old one had gone first, so it comes back,
    # and every edge's route that drained it serves it again
    assert reverted == [
        "app.hello/machine[ams#1]:create:revert",
        "app.hello/machine[ams#1]:delete:revert",
        *(f"host.{h}/route[hello]:drain1:revert" for h in ("ams-1", "ams-2", "sea-1", "sea-2")),
    ]
    assert {c.kind for c in support.plan(before, hosts).changes} <= {
        resources.Kind.IMAGE
    }  # routes as they were
    skipped = {s for r in report.hosts.values() for s, _ in r.deferred}
    assert "app.hello/machine[sea#2]:create" in skipped  # later batches never ran


def test_failed_gate_in_a_later_batch_reverts_earlier_batches(
    tmp_path: Path, state: sqlite.SqliteBackend
) -> None:
    before, after = _rolling_fleet(tmp_path)
    hosts = support.hosts_for(before)
    assert support.run(support.plan(before, hosts), hosts, state, "base").ok
    old = support.machines(hosts)
    old_ids = sorted(
        r.id for h in hosts.hosts.values() for r in h.items.values() if r.kind == "machine"
    )
    for name in ("sea-1", "sea-2"):
        hosts.hosts[name].behaviour.unhealthy_images.add(V2)
    report = support.run(support.plan(after, hosts), hosts, state, "deploy")
    assert "app.hello/machine[sea#1]:create" in report.halted["hello"]
    # ams batches had been replaced; the revert brought the old machines back as they were.
    assert support.machines(hosts) == old
    ids = sorted(
        r.id for h in hosts.hosts.values() for r in h.items.values() if r.kind == "machine"
    )
    assert ids == old_ids
    # Only the pulled v2 images are left over; the next plan cleans them up.
    leftovers = support.plan(before, hosts).changes
    assert {(c.kind, c.action) for c in leftovers} == {(resources.Kind.IMAGE, P.Action.DESTROY)}


def test_parallelism_bound_is_never_exceeded(tmp_path: Path, state: sqlite.SqliteBackend) -> None:
    fleet = support.load(
        support.fleet_dir(
            tmp_path,
            lambda d: d["kind"] == "App" and d["spec"].update(deploy={"strategy": "immediate"}),
        )
    )
    hosts = support.hosts_for(fleet)
    for h in hosts.hosts.values():
        h.behaviour.boot_delay_s = 1.0
        h.behaviour.pull_delay_s = 1.0
        h.behaviour.time_scale = 0.03
    report = support.run(support.plan(fleet, hosts), hosts, state, parallelism=3, per_host=1)
    assert report.ok
    assert hosts.meter.peak <= 3
    assert max(hosts.meter.peak_per_host.values()) <= 1
    assert hosts.meter.peak >= 2  # it did run in parallel


def test_per_host_bound_with_wide_global_bound(tmp_path: Path, state: sqlite.SqliteBackend) -> None:
    fleet = support.load(
        support.fleet_dir(tmp_path, support.app_edit("hello", regions={"ams": 6, "sea": 6}))
    )
    hosts = support.hosts_for(fleet)
    for h in hosts.hosts.values():
        h.behaviour.boot_delay_s = 1.0
        h.behaviour.time_scale = 0.02
    report = support.run(support.plan(fleet, hosts), hosts, state, parallelism=10, per_host=2)
    assert report.ok
    assert max(hosts.meter.peak_per_host.values()) == 2
    assert hosts.meter.peak <= 8  # four hosts, two each


def test_second_concurrent_apply_is_refused_with_the_holder(
    tmp_path: Path, state: sqlite.SqliteBackend
) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    started = threading.Event()
    release = threading.Event()

    class Slow(memory.MemoryHost):
        pass

    gate_host = hosts.hosts["ams-1"]
    original = gate_host.apply

    def slow_apply(actions, on_event, record=None):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(10)
        return original(actions, on_event, record)

    gate_host.apply = slow_apply  # type: ignore[method-assign]
    p = support.plan(fleet, hosts)
    first: list[apply.Report] = []
    t = threading.Thread(target=lambda: first.append(support.run(p, hosts, state, "one")))
    t.start()
    assert started.wait(10)
    other = sqlite.SqliteBackend(state.path)
    with pytest.raises(LockError) as err:
        support.run(p, hosts, other, "two")
    release.set()
    t.join(10)
    other.close()
    held = err.value
    assert held.holder and held.nonce and held.since
    assert held.holder in str(held) and "force-unlock" in str(held)
    assert first and first[0].ok
    assert state.current_lock() is None  # released after the first apply


def test_unreachable_host_at_apply_defers_its_steps(
    tmp_path: Path, state: sqlite.SqliteBackend
) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    p = support.plan(fleet, hosts)
    hosts.hosts["sea-2"].behaviour.unreachable = "connection refused"
    report = support.run(p, hosts, state)
    deferred = dict(report.hosts["sea-2"].deferred)
    assert any("unreachable" in why for why in deferred.values())
    assert all(not r.failed for r in report.hosts.values())
    # the other hosts went ahead, except for the routes (and so the announcements) of
    # hello and infer, which wait for those apps' new machines on sea-2
    assert len(report.hosts["ams-1"].succeeded) == 8
    waiting = dict(report.hosts["ams-1"].deferred)
    assert "host.ams-1/route[infer]:create" in waiting
    hosts.hosts["sea-2"].behaviour.unreachable = None
    resumed = support.run(p, hosts, state)  # the same plan again finishes the job
    done = sum(len(r.succeeded) for r in report.hosts.values())
    assert resumed.ok and resumed.resumed == done == 21


def test_failed_action_skips_only_its_dependents(
    tmp_path: Path, state: sqlite.SqliteBackend
) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    p = support.plan(fleet, hosts)
    hosts.hosts["ams-1"].behaviour.fail_actions["app.echo/machine[ams#1]:create"] = "disk full"
    report = support.run(p, hosts, state)
    assert report.hosts["ams-1"].failed == [("app.echo/machine[ams#1]:create", "failed: disk full")]
    skipped = {s for s, _ in report.hosts["ams-1"].deferred}
    assert skipped == {"host.ams-1/route[echo]:create", "host.ams-1/announcement[echo]:create"}
    assert "app.ledger/machine[ams#1]:create" in report.hosts["ams-1"].succeeded


def test_protocol_actions_are_idempotent(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    p = support.plan(fleet, hosts)
    step = next(s for s in p.steps if s.kind is resources.Kind.IMAGE)
    h = hosts.hosts[step.host]
    first = h.apply([protocol.Action.of(step)], lambda e: None)
    again = h.apply([protocol.Action.of(step)], lambda e: None)
    assert [r.outcome for r in first + again] == [protocol.Outcome.OK, protocol.Outcome.ALREADY]
    assert [e[0] for e in h.log].count("create") == 1
    delete = P.Step(
        "x",
        step.address,
        step.host,
        step.kind,
        step.resource_id,
        P.Verb.DELETE,
        None,
        None,
        "sha256:wrong",
    )
    (refused,) = h.apply([protocol.Action.of(delete)], lambda e: None)
    assert refused.outcome is protocol.Outcome.REFUSED and refused.etag == step.etag
