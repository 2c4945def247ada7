"""The agent's apply rules: preconditions, idempotency, interrupted actions, gates.

The handler here is a recording test double of one resource kind; the agent,
its inventory on disk and the rules are the real ones.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pytest

from hostagent import handlers as H
from hostagent.agent import Agent, AgentError, Facts
from hostagent.inventory import Inventory

FACTS = Facts("ams-1", 4, 4096, {}, "qemu", "0.1.0", "fdf1:ee70:0:1::/64")


class Recorder:
    kind = "machine"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_with: BaseException | None = None
        self.health: list[bool] = []
        self.extra: list[tuple[str, H.Observed]] = []

    def _call(self, verb: str, rid: str) -> None:
        self.calls.append((verb, rid))
        if self.fail_with is not None:
            raise self.fail_with

    def create(self, rid: str, spec: Mapping[str, Any], emit: H.Emit) -> None:
        emit("booting", rid)
        self._call("create", rid)

    def update(
        self, rid: str, old: Mapping[str, Any], spec: Mapping[str, Any], emit: H.Emit
    ) -> None:
        self._call("update", rid)

    def delete(self, rid: str, spec: Mapping[str, Any], emit: H.Emit) -> None:
        self._call("delete", rid)

    def start(self, rid: str, spec: Mapping[str, Any], emit: H.Emit) -> None:
        self._call("start", rid)

    def observe(self, rid: str, spec: Mapping[str, Any]) -> H.Observed:
        return H.Observed(state="running", health="passing", runtime={"pid": 42})

    def healthy(self, rid: str, spec: Mapping[str, Any]) -> bool:
        return self.health.pop(0) if self.health else False

    def unmanaged(self, managed: Collection[str]) -> list[tuple[str, H.Observed]]:
        return [(rid, o) for rid, o in self.extra if rid not in managed]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Agent, Recorder, Clock]:
    rec = Recorder()
    clock = Clock()
    agent = Agent(Inventory(tmp_path), {"machine": rec}, FACTS, clock=clock, sleep=clock.sleep)
    return agent, rec, clock


def action(
    aid: str, verb: str, etag: str | None, expect: str | None, **extra: Any
) -> dict[str, Any]:
    return {
        "id": aid,
        "kind": "machine",
        "resource_id": "web/ams#1",
        "verb": verb,
        "spec": {"image": "x"},
        "etag": etag,
        "expect": expect,
        **extra,
    }


def apply(
    agent: Agent, *actions: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    out = agent.apply(
        {"protocol_version": 1, "host": "ams-1", "actions": list(actions)}, events.append
    )
    return out["result"]["results"], events


def test_create_twice_has_one_effect(setup: tuple[Agent, Recorder, Clock]) -> None:
    agent, rec, _ = setup
    first, events = apply(agent, action("a1", "create", "e1", None))
    assert first[0]["outcome"] == "ok" and first[0]["etag"] == "e1"
    assert events == [{"event": {"action": "a1", "type": "booting", "message": "web/ams#1"}}]
    again, _ = apply(agent, action("a1", "create", "e1", None))
    assert again[0]["outcome"] == "already"
    assert rec.calls == [("create", "web/ams#1")]


def test_stale_precondition_is_refused_with_the_current_etag(
    setup: tuple[Agent, Recorder, Clock],
) -> None:
    agent, rec, _ = setup
    apply(agent, action("a1", "create", "e1", None))
    results, _ = apply(agent, action("a2", "update", "e3", "e2"))
    assert results[0]["outcome"] == "refused"
    assert results[0]["etag"] == "e1"
    assert "expected e2, found e1" in results[0]["message"]
    assert rec.calls == [("create", "web/ams#1")]


def test_delete_is_idempotent(setup: tuple[Agent, Recorder, Clock]) -> None:
    agent, rec, _ = setup
    apply(agent, action("a1", "create", "e1", None))
    first, _ = apply(agent, action("a2", "delete", None, "e1"))
    second, _ = apply(agent, action("a2", "delete", None, "e1"))
    assert [first[0]["outcome"], second[0]["outcome"]] == ["ok", "already"]
    assert rec.calls.count(("delete", "web/ams#1")) == 1
    assert agent.inventory.read().get("machine", "web/ams#1") is None


def test_interrupted_action_is_finished_by_its_retry_and_blocks_others(
    setup: tuple[Agent, Recorder, Clock],
) -> None:
    agent, rec, _ = setup
    rec.fail_with = KeyboardInterrupt()  # the process dies mid-action
    with pytest.raises(KeyboardInterrupt):
        apply(agent, action("a1", "create", "e1", None))
    rec.fail_with = None
    other, _ = apply(agent, action("b1", "create", "e9", None))
    assert other[0]["outcome"] == "refused"
    assert "in progress" in other[0]["message"]
    retry, _ = apply(agent, action("a1", "create", "e1", None))
    assert retry[0]["outcome"] == "ok"
    entry = agent.inventory.read().get("machine", "web/ams#1")
    assert entry is not None and entry.etag == "e1" and "pending" not in entry.status


def test_handler_failure_fails_only_that_action(setup: tuple[Agent, Recorder, Clock]) -> None:
    agent, rec, _ = setup
    rec.fail_with = RuntimeError("qemu exploded")
    results, _ = apply(agent, action("a1", "create", "e1", None))
    assert results[0]["outcome"] == "failed"
    assert results[0]["message"] == "qemu exploded"
    # A failed create leaves nothing behind: the handler undid it, the inventory forgot it.
    assert agent.inventory.read().get("machine", "web/ams#1") is None
    assert rec.calls == [("create", "web/ams#1"), ("delete", "web/ams#1")]
    rec.fail_with = None
    # Not created: the same create may be tried again.
    assert apply(agent, action("a1", "create", "e1", None))[0][0]["outcome"] == "ok"


def test_gate_waits_for_min_healthy_time(setup: tuple[Agent, Recorder, Clock]) -> None:
    agent, rec, clock = setup
    rec.health = [False, False, *([True] * 100)]
    gate = {"min_healthy_s": 1.0, "deadline_s": 30}
    results, events = apply(agent, action("a1", "create", "e1", None, gate=gate))
    assert results[0]["outcome"] == "ok"
    assert 1.0 <= clock.now < 2.0
    assert any(e["event"]["type"] == "healthy" for e in events)


def test_gate_fails_at_the_deadline(setup: tuple[Agent, Recorder, Clock]) -> None:
    agent, _, clock = setup
    results, _ = apply(
        agent, action("a1", "create", "e1", None, gate={"min_healthy_s": 0, "deadline_s": 5})
    )
    assert results[0]["outcome"] == "gate_failed"
    assert clock.now >= 5


def test_a_drift_start_runs_the_start_every_time_its_etag_matches(
    setup: tuple[Agent, Recorder, Clock],
) -> None:
    # The reconciler's drift start keeps the etag (etag == expect == the entry's): it
    # must reach the handler, not be answered "already applied" with the machine
    # still stopped (its gate then waited out the deadline: issue 8).
    agent, rec, _ = setup
    apply(agent, action("a1", "create", "e1", None))
    rec.health = [True] * 10
    gate = {"min_healthy_s": 0, "deadline_s": 5}
    first, _ = apply(agent, action("a2", "start", "e1", "e1", gate=gate))
    again, _ = apply(agent, action("a3", "start", "e1", "e1", gate=gate))
    assert [first[0]["outcome"], again[0]["outcome"]] == ["ok", "ok"]
    assert rec.calls == [("create", "web/ams#1"), ("start", "web/ams#1"), ("start", "web/ams#1")]
    entry = agent.inventory.read().get("machine", "web/ams#1")
    assert entry is not None and entry.etag == "e1" and "pending" not in entry.status


def test_a_start_planned_against_another_spec_is_refused(
    setup: tuple[Agent, Recorder, Clock],
) -> None:
    agent, rec, _ = setup
    apply(agent, action("a1", "create", "e1", None))
    stale, _ = apply(agent, action("a2", "start", "e0", "e0"))
    missing, _ = apply(agent, {**action("a3", "start", "e1", "e1"), "resource_id": "web/ams#9"})
    assert (stale[0]["outcome"], stale[0]["etag"]) == ("refused", "e1")
    assert "expected e0, found e1" in stale[0]["message"]
    assert (missing[0]["outcome"], missing[0]["message"]) == ("refused", "does not exist")
    assert rec.calls == [("create", "web/ams#1")]


def test_protocol_mismatch_says_to_rebootstrap(setup: tuple[Agent, Recorder, Clock]) -> None:
    agent, _, _ = setup
    with pytest.raises(AgentError, match="re-bootstrap"):
        agent.observe({"protocol_version": 99, "host": "ams-1"})
    with pytest.raises(AgentError, match="this is host 'ams-1'"):
        agent.observe({"protocol_version": 1, "host": "sea-1"})


def test_observe_reports_managed_and_unmanaged(setup: tuple[Agent, Recorder, Clock]) -> None:
    agent, rec, _ = setup
    apply(agent, action("a1", "create", "e1", None))
    rec.extra = [("handmade", H.Observed(state="running"))]
    answer = agent.observe({"protocol_version": 1, "host": "ams-1"})
    assert answer["generation"] >= 1
    owners = {r["id"]: r["owner"] for r in answer["resources"]}
    assert owners == {"web/ams#1": "fleet", "handmade": "unmanaged"}
    managed = next(r for r in answer["resources"] if r["id"] == "web/ams#1")
    assert managed["etag"] == "e1"
    assert managed["status"] == {"state": "running", "health": "passing", "runtime": {"pid": 42}}


def _record(agent: Agent, digest: str, generation: int) -> dict[str, Any]:
    out = agent.apply(
        {
            "protocol_version": 1,
            "host": "ams-1",
            "actions": [],
            "record_inputs": {"digest": digest, "generation": generation},
        },
        lambda _e: None,
    )
    result: dict[str, Any] = out["result"]
    return result


def test_a_digest_sent_with_actions_is_kept_once_they_all_succeed(
    setup: tuple[Agent, Recorder, Clock],
) -> None:
    agent, rec, _ = setup
    observe = {"protocol_version": 1, "host": "ams-1"}

    def with_digest(digest: str, *actions: dict[str, Any]) -> dict[str, Any]:
        request = {
            "protocol_version": 1,
            "host": "ams-1",
            "actions": list(actions),
            "record_inputs": {"digest": digest},
        }
        result: dict[str, Any] = agent.apply(request, lambda _e: None)["result"]
        return result

    # kept at the generation the actions left: no second request needed
    answer = with_digest("inputs:one", action("a1", "create", "e1", None))
    assert answer["results"][0]["outcome"] == "ok" and answer["inputs_recorded"] is True
    now = agent.observe(observe)
    assert now["inputs_digest"] == "inputs:one" and now["generation"] == answer["generation"]
    # an action that fails keeps none (and voids none it did not change)
    rec.fail_with = RuntimeError("disk full")
    answer = with_digest("inputs:two", action("a2", "update", "e2", "e1"))
    assert answer["results"][0]["outcome"] == "failed" and answer["inputs_recorded"] is False
    assert agent.observe(observe)["inputs_digest"] != "inputs:two"
    with pytest.raises(AgentError, match="record_inputs needs a digest"):
        agent.apply(
            {"protocol_version": 1, "host": "ams-1", "actions": [], "record_inputs": {"x": 1}},
            lambda _e: None,
        )


def test_the_inputs_digest_is_kept_until_anything_changes_the_inventory(
    setup: tuple[Agent, Recorder, Clock],
) -> None:
    agent, _, _ = setup
    observe = {"protocol_version": 1, "host": "ams-1"}
    assert agent.observe(observe)["inputs_digest"] == ""  # kept none yet
    apply(agent, action("a1", "create", "e1", None))
    generation = agent.observe(observe)["generation"]
    # A digest for a generation the inventory has moved past is refused.
    assert _record(agent, "inputs:old", generation - 1)["inputs_recorded"] is False
    assert agent.observe(observe)["inputs_digest"] == ""
    recorded = _record(agent, "inputs:abc", generation)
    assert recorded["inputs_recorded"] is True and recorded["generation"] == generation
    assert agent.observe(observe)["inputs_digest"] == "inputs:abc"
    # It survives a restart of the agent (it is in the inventory file)...
    again = Agent(agent.inventory, agent.handlers, FACTS)
    assert again.observe(observe)["inputs_digest"] == "inputs:abc"
    # ...and a status the supervisor records (plans check statuses themselves)...
    with agent.inventory.transaction() as state:
        entry = state.get("machine", "web/ams#1")
        assert entry is not None
        entry.status = {**entry.status, "health": "critical"}
    answer = agent.observe(observe)
    assert answer["generation"] == generation + 1 and answer["inputs_digest"] == "inputs:abc"
    # (and does not stop a record for the generation before it)
    assert _record(agent, "inputs:abc", generation)["inputs_recorded"] is True
    # ...but any change to a resource, by an action or anything else, voids it.
    apply(agent, action("a2", "update", "e2", "e1"))
    assert agent.observe(observe)["inputs_digest"] == ""
    assert _record(agent, "inputs:abc", generation + 1)["inputs_recorded"] is False
    recorded = _record(agent, "inputs:def", agent.observe(observe)["generation"])
    assert recorded["inputs_recorded"] is True
    with agent.inventory.transaction() as state:
        entry = state.get("machine", "web/ams#1")
        assert entry is not None
        entry.spec = {"image": "changed by hand"}
    assert agent.observe(observe)["inputs_digest"] == ""
    assert _record(agent, "inputs:abc", generation)["inputs_recorded"] is False
