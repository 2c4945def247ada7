"""The supervisor's restart policy, backoff and health recording."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from hostagent import autostop
from hostagent import handlers as H
from hostagent.inventory import Entry, Inventory
from hostagent.supervisor import Memory, Supervisor, decide

ON_FAILURE = {"restart": {"policy": "on-failure", "max_retries": 2}}


def test_running_machine_is_left_alone() -> None:
    d = decide(ON_FAILURE, "running", Memory(), 10.0)
    assert not d.restart and d.memory.running_since == 10.0


def test_failed_machine_restarts_with_doubling_backoff_then_gives_up() -> None:
    m = Memory()
    first = decide(ON_FAILURE, "failed", m, 0.0)
    assert first.restart and first.memory.next_try == 1.0
    early = decide(ON_FAILURE, "failed", first.memory, 0.5)
    assert not early.restart and early.reason == "backing off"
    second = decide(ON_FAILURE, "failed", first.memory, 1.0)
    assert second.restart and second.memory.next_try == 3.0
    third = decide(ON_FAILURE, "failed", second.memory, 3.0)
    assert not third.restart and "gave up after 2" in third.reason


def test_policies() -> None:
    assert not decide({"restart": {"policy": "on-failure"}}, "stopped", Memory(), 0).restart
    assert decide({"restart": {"policy": "always"}}, "stopped", Memory(), 0).restart
    assert not decide({"restart": {"policy": "never"}}, "failed", Memory(), 0).restart
    assert not decide({"restart": {"policy": "always"}, "desired_state": "stopped"},
                      "stopped", Memory(), 0).restart  # fmt: skip


def test_restart_count_resets_after_a_stable_minute() -> None:
    m = Memory(restarts=2, running_since=0.0)
    assert decide(ON_FAILURE, "running", m, 30.0).memory.restarts == 2
    assert decide(ON_FAILURE, "running", m, 61.0).memory.restarts == 0


class Machines:
    kind = "machine"

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.health: dict[str, bool] = {}
        self.started: list[str] = []

    def create(self, rid: str, spec: Mapping[str, Any], emit: H.Emit) -> None: ...
    def update(
        self, rid: str, old: Mapping[str, Any], spec: Mapping[str, Any], emit: H.Emit
    ) -> None: ...
    def delete(self, rid: str, spec: Mapping[str, Any], emit: H.Emit) -> None: ...

    def start(self, rid: str, spec: Mapping[str, Any], emit: H.Emit) -> None:
        self.started.append(rid)
        self.states[rid] = "running"

    def observe(self, rid: str, spec: Mapping[str, Any]) -> H.Observed:
        return H.Observed(state=self.states.get(rid))

    def healthy(self, rid: str, spec: Mapping[str, Any]) -> bool:
        return self.health.get(rid, False)

    def unmanaged(self, managed: Collection[str]) -> list[tuple[str, H.Observed]]:
        return []


def test_tick_restarts_the_crashed_and_records_health(tmp_path: Path) -> None:
    inv = Inventory(tmp_path)
    checks = [{"type": "http", "port": 8080, "grace_period_s": 0, "interval_s": 5}]
    with inv.transaction() as state:
        state.put(Entry("machine", "a", "e1", {"checks": checks, **ON_FAILURE}))
        state.put(Entry("machine", "b", "e2", {"checks": checks, **ON_FAILURE}))
    now = [0.0]
    machines = Machines()
    machines.states = {"a": "failed", "b": "running"}
    machines.health = {"b": True}
    sup = Supervisor(inv, machines, clock=lambda: now[0])
    assert sup.tick() == ["restart a (state failed)"]
    assert machines.started == ["a"]
    recorded = inv.read()
    b = recorded.get("machine", "b")
    a = recorded.get("machine", "a")
    assert b is not None and b.status["health"] == "passing"
    assert a is not None and a.status["health"] == "critical"
    # A new supervisor (after a restart of the agent) re-adopts: nothing is restarted twice.
    machines.health = {"a": True, "b": True}
    again = Supervisor(inv, machines, clock=lambda: now[0])
    now[0] = 1.0
    assert again.tick() == []
    a = inv.read().get("machine", "a")
    assert a is not None and a.status["health"] == "passing"


def test_a_machine_autostop_stopped_stays_stopped_until_it_runs_again(tmp_path: Path) -> None:
    inv = Inventory(tmp_path)
    always = {"restart": {"policy": "always"}}
    with inv.transaction() as state:
        state.put(Entry("machine", "a", "e1", always, status={"stopped_by": "autostop"}))
    machines = Machines()
    machines.states = {"a": "stopped"}
    sup = Supervisor(inv, machines, clock=lambda: 0.0)
    assert sup.tick() == [] and machines.started == []
    # the waker starts it: the mark goes, and the restart policy holds again
    machines.states = {"a": "running"}
    sup.tick()
    entry = inv.read().get("machine", "a")
    assert entry is not None and "stopped_by" not in entry.status
    machines.states = {"a": "failed"}
    assert sup.tick() == ["restart a (state failed)"]


def test_autostop_policies_come_from_the_local_machines_specs() -> None:
    spec = {"app": "web", "auto_stop": "stop", "min_machines_running": 1, "auto_stop_after_s": 20}
    local = {
        "web/ams#1": ("web/ams#1@a", {**spec, "slot": "ams#1"}),
        "web/ams#2": ("web/ams#2@b", {**spec, "slot": "ams#2"}),
    }
    rule = autostop.policies(local)["web"]
    assert rule.pinned == frozenset({"web/ams#1"}) and rule.action.value == "stop"
    assert rule.idle_after_s == 20.0
