"""Autostop decisions (pure): idle machines above the floor stop, many per cycle."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fleet import load, model
from providers.proxy import autostop, runtime
from providers.proxy import table as t

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def apps(
    min_running: int, mode: model.AutoStop = model.AutoStop.STOP
) -> dict[str, autostop.Policy]:
    hello = load.load_dir(EXAMPLES).apps["hello"]
    svc = dataclasses.replace(
        hello.services[0], auto_stop_machines=mode, min_machines_running=min_running
    )
    return {"hello": autostop.policy(dataclasses.replace(hello, services=(svc,)))}


def table(n: int) -> t.RoutingTable:
    servers = tuple(
        t.Server(f"sea.{i}", t.Role.LOCAL, "192.0.2.51", 8000 + i, "sea", f"hello/sea#{i}")
        for i in range(1, n + 1)
    )
    lst = (t.Listener("198.51.100.10", 80, False, True),)
    return t.RoutingTable("sea-1", "sea", (t.Route("hello", 0, t.Mode.HTTP, lst, servers),))


def stat(i: int, current: int = 0, last: int = 600, changed: int = 3600) -> runtime.ServerStat:
    return runtime.ServerStat("be_hello_0", f"sea.{i}", current, 0, 10, last, changed, "UP")


def test_idle_machines_above_the_floor_stop_longest_idle_first() -> None:
    stats = [
        stat(1, last=400),
        stat(2, last=900),
        stat(3, current=2),
        stat(4, last=700),
        stat(5, last=10),
    ]
    got = autostop.decide(apps(min_running=2), table(5), stats, idle_after_s=300)
    # 5 running, floor 2: three may stop; sea.3 is busy and sea.5 recently used
    assert [d.machine for d in got] == ["hello/sea#2", "hello/sea#4", "hello/sea#1"]
    assert all(d.action is model.AutoStop.STOP for d in got)


def test_floor_is_kept() -> None:
    stats = [stat(i) for i in range(1, 4)]
    got = autostop.decide(apps(min_running=2), table(3), stats, idle_after_s=300)
    assert len(got) == 1


def test_never_used_machine_is_idle_since_it_came_up() -> None:
    got = autostop.decide(apps(0), table(1), [stat(1, last=-1, changed=500)], idle_after_s=300)
    assert [d.machine for d in got] == ["hello/sea#1"]
    young = autostop.decide(apps(0), table(1), [stat(1, last=-1, changed=5)], idle_after_s=300)
    assert young == ()


def test_off_means_never_and_suspend_is_passed_on() -> None:
    stats = [stat(1), stat(2)]
    assert autostop.decide(apps(0, model.AutoStop.OFF), table(2), stats, idle_after_s=300) == ()
    got = autostop.decide(apps(0, model.AutoStop.SUSPEND), table(2), stats, idle_after_s=300)
    assert {d.action for d in got} == {model.AutoStop.SUSPEND} and len(got) == 2


def test_pinned_machines_never_stop_and_a_down_server_is_not_idle() -> None:
    rules = {"hello": autostop.Policy(model.AutoStop.STOP, pinned=frozenset({"hello/sea#1"}))}
    stats = [stat(1), stat(2), dataclasses.replace(stat(3), status="DOWN")]
    got = autostop.decide(rules, table(3), stats, idle_after_s=300)
    # sea#1 is the region's floor; sea#3 is already down (stopped, or failing its checks)
    assert [d.machine for d in got] == ["hello/sea#2"]


def test_the_first_slots_of_a_region_are_its_floor() -> None:
    assert autostop.pinned_slot("ams#1", 1) and autostop.pinned_slot("hello/ams#2", 2)
    assert not autostop.pinned_slot("ams#2", 1)
    assert not autostop.pinned_slot("ams#1", 0)


def test_an_app_may_set_its_own_idle_time() -> None:
    quick = {"hello": autostop.Policy(model.AutoStop.STOP, idle_after_s=30)}
    got = autostop.decide(quick, table(2), [stat(1, last=40), stat(2, last=20)], idle_after_s=300)
    assert [(d.machine, d.reason) for d in got] == [("hello/sea#1", "idle 40s >= 30s")]
