"""After the steps, apply waits until the edges announce what it created (reconciler.settle)."""

from __future__ import annotations

import time
from pathlib import Path

from fleet.errors import HostUnreachable
from providers import resources
from reconciler import apply, settle
from reconciler.core import observed
from reconciler.hosts import memory, protocol
from reconciler.state import sqlite
from tests.core import support


class _Later:
    """A host whose announcements are exported only from the ``after``-th observe on."""

    def __init__(self, host: memory.MemoryHost, after: int, fail_first: bool = False) -> None:
        self.host, self.after, self.fail_first = host, after, fail_first
        self.name = host.name
        self.observed = 0

    def observe(self) -> observed.HostObservation:
        self.observed += 1
        if self.fail_first and self.observed == 1:
            raise HostUnreachable(self.name, "connection refused")
        obs = self.host.observe()
        if self.observed >= self.after:
            return obs
        pending = observed.Status(health=observed.Health.CRITICAL)
        held = tuple(
            r
            if r.kind is not resources.Kind.ANNOUNCEMENT
            else observed.Resource(r.kind, r.id, r.owner, r.etag, r.spec, pending)
            for r in obs.resources
        )
        return observed.HostObservation(
            obs.host, True, obs.generation, obs.facts, held, inputs=obs.inputs
        )


def test_only_announcements_created_or_changed_are_waited_for(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    plan = support.plan(fleet, hosts)
    want = settle.wanted(plan.steps)
    assert want and set(want) == set(fleet.hosts)  # every host is an edge of every app
    kinds = {s.kind for s in plan.steps if s.resource_id in want[s.host] and s.host in want}
    assert resources.Kind.ANNOUNCEMENT in kinds
    assert settle.wanted(s for s in plan.steps if s.kind is not resources.Kind.ANNOUNCEMENT) == {}


def _applied(tmp_path: Path) -> tuple[memory.MemoryFleet, dict[str, set[str]]]:
    """The examples applied to in-process hosts, and the announcements that apply made."""
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    plan = support.plan(fleet, hosts)
    support.run(plan, hosts, sqlite.SqliteBackend(str(tmp_path / "s.db")))
    return hosts, settle.wanted(plan.steps)


def test_the_wait_lasts_until_every_host_exports_them_all_at_once(tmp_path: Path) -> None:
    hosts, want = _applied(tmp_path)
    slow = {n: _Later(h, after=3, fail_first=(n == "ams-1")) for n, h in hosts.hosts.items()}
    seen: list[tuple[str, str]] = []
    slept: list[float] = []
    left = settle.wait(
        want,
        slow.__getitem__,
        parallelism=4,
        timeout=60,
        on_announced=lambda h, r: seen.append((h, r)),
        sleep=slept.append,
    )
    assert left == {}
    assert sorted(seen) == sorted((h, r) for h, ids in want.items() for r in ids)
    # all hosts polled side by side: one pause per round, not per host or announcement
    assert slept == [settle.POLL_S, settle.POLL_S]
    assert all(c.observed == 3 for c in slow.values())


def test_an_edge_that_never_announces_is_reported_not_failed(tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    hosts.hosts["sea-2"].behaviour.unannounced.add("hello")
    plan = support.plan(fleet, hosts)
    events: list[tuple[str, protocol.Event]] = []
    began = time.monotonic()
    report = apply.apply(
        plan,
        "t",
        clients=hosts.hosts.__getitem__,
        state=sqlite.SqliteBackend(str(tmp_path / "s.db")),
        on_event=lambda h, e: events.append((h, e)),
        settle_s=0.6,
    )
    assert time.monotonic() - began >= 0.6  # it did wait for it
    assert report.ok
    assert {h: r.unannounced for h, r in report.hosts.items() if r.unannounced} == {
        "sea-2": ["hello"]
    }
    assert report.to_json()["hosts"]["sea-2"]["unannounced"] == ["hello"]
    line = next(x for x in apply.summary_lines(report) if "not announced yet" in x)
    assert "hello" in line and "health gate" in line
    announced = {(h, e.action) for h, e in events if e.type == "announced"}
    assert ("ams-1", "announcement[hello]") in announced
    assert ("sea-2", "announcement[hello]") not in announced
    assert any(h == "sea-2" and e.type == "waiting" and "hello" in e.message for h, e in events)


def test_a_shutdown_ends_the_wait_and_reports_what_is_left(tmp_path: Path) -> None:
    hosts, want = _applied(tmp_path)
    never = {n: _Later(h, after=10**6) for n, h in hosts.hosts.items()}
    polls: list[float] = []
    left = settle.wait(
        want,
        never.__getitem__,
        parallelism=4,
        timeout=600,
        stopped=lambda: len(polls) >= 1,  # asked to stop after the first pause
        sleep=polls.append,
    )
    assert len(polls) == 1
    assert left == {h: sorted(ids) for h, ids in want.items()}
