"""Machines replaced in place are drained from every edge before their old VM stops.

The plan's order (reconciler.core.drain + rollout): drain on every route that
holds the batch's servers -> old instance deleted -> new instance created
behind its gate -> the next batch's drain (restoring this one) -> ... -> each
route's last step restores the spec it had. Moves keep create-before-destroy.
"""

from __future__ import annotations

from pathlib import Path

from fleet import model
from providers import resources
from providers.proxy import spec
from reconciler.hosts import memory
from reconciler.state import sqlite
from tests.core import support

Kind = resources.Kind
V2 = "192.0.2.2:5000/examples/hello:2.0"
EDGES = ("ams-1", "ams-2", "sea-1", "sea-2")


def _deployed(tmp_path: Path) -> tuple[memory.MemoryFleet, model.Fleet, sqlite.SqliteBackend]:
    """Hosts running examples/ (hello: 1 in ams, 1 in sea) and the fleet with hello 2.0."""
    before = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(before)
    state = sqlite.SqliteBackend(str(tmp_path / "state.db"))
    assert support.run(support.plan(before, hosts), hosts, state, "base").ok
    after = support.load(support.fleet_dir(tmp_path, support.app_edit("hello", image=V2), "v2"))
    return hosts, after, state


def test_each_batch_is_drained_from_every_edge_before_its_old_machine_goes(
    tmp_path: Path,
) -> None:
    hosts, after, _ = _deployed(tmp_path)
    held = {name: h.items[(Kind.ROUTE, "hello")].etag for name, h in hosts.hosts.items()}
    plan = support.plan(after, hosts)
    steps = plan.step_index()
    machines = {c.address: c for c in plan.changes if c.kind is Kind.MACHINE}
    assert {a: c.symbol for a, c in machines.items()} == {
        "app.hello/machine[ams#1]": "-/+",
        "app.hello/machine[sea#1]": "-/+",
    }
    for number, slot, server in ((1, "ams#1", "ams.1"), (2, "sea#1", "sea.1")):
        drains = [steps[f"host.{h}/route[hello]:drain{number}"] for h in EDGES]
        for d in drains:
            for route in d.spec["routes"].values():  # type: ignore[index]
                assert route["servers"][server]["draining"] is True
                assert not any(
                    s.get("draining") for n, s in route["servers"].items() if n != server
                )
        delete, create = (steps[f"app.hello/machine[{slot}]:{v}"] for v in ("delete", "create"))
        assert {d.id for d in drains} <= set(delete.deps)
        assert delete.id in create.deps and create.gate is not None
        assert delete.batch == create.batch == number
    # the second batch's drain (which restores ams.1) waits for ams.1's replacement
    assert "app.hello/machine[ams#1]:create" in steps["host.ams-1/route[hello]:drain2"].deps
    for h in EDGES:
        last = steps[f"host.{h}/route[hello]:update"]
        assert {"app.hello/machine[ams#1]:create", "app.hello/machine[sea#1]:create"} <= set(
            last.deps
        )
        first = steps[f"host.{h}/route[hello]:drain1"]
        assert first.expect == last.etag == held[h]  # from what the host holds, back to it
        assert steps[f"host.{h}/route[hello]:drain2"].expect == first.etag
        assert last.expect == steps[f"host.{h}/route[hello]:drain2"].etag
    routes = [c for c in plan.changes if c.kind is Kind.ROUTE]
    assert len(routes) == 4 and all("drains ams.1, then sea.1" in c.reason for c in routes)
    assert not any(n.address.endswith("/route[hello]") for n in plan.noops)


def test_the_deploy_applies_and_leaves_the_routes_as_they_were(tmp_path: Path) -> None:
    hosts, after, state = _deployed(tmp_path)
    routes_before = {
        name: {r.id: r.etag for r in h.items.values() if r.kind == "route"}
        for name, h in hosts.hosts.items()
    }
    assert all(routes_before.values())
    report = support.run(support.plan(after, hosts), hosts, state, "deploy")
    assert report.ok
    assert {img for _, app, _, img in support.machines(hosts) if app == "hello"} == {V2}
    routes_after = {
        name: {r.id: r.etag for r in h.items.values() if r.kind == "route"}
        for name, h in hosts.hosts.items()
    }
    assert routes_after == routes_before
    assert not support.plan(after, hosts).changes


def test_a_machine_moving_to_another_host_keeps_create_before_destroy(tmp_path: Path) -> None:
    hosts, _, _ = _deployed(tmp_path)

    def cordon(d: dict[str, object]) -> None:
        if d["kind"] == "Host" and d["metadata"]["name"] in ("ams-1", "ams-2"):  # type: ignore[index]
            placed = {h for h, app, *_ in support.machines(hosts) if app == "hello"}
            if d["metadata"]["name"] in placed:  # type: ignore[index]
                d["spec"]["cordoned"] = True  # type: ignore[index]

    moved = support.load(support.fleet_dir(tmp_path, cordon, "cordoned"))
    plan = support.plan(moved, hosts)
    change = next(c for c in plan.changes if c.address == "app.hello/machine[ams#1]")
    assert change.from_host and change.symbol == "+/-"
    assert not any(":drain" in s.id for s in plan.steps)


def test_with_draining_marks_only_the_named_servers_of_routes_that_hold_them() -> None:
    base = {
        "app": "web",
        "routes": {
            "be_web_0": {"servers": {"ams.1": {"rank": 0}, "ams.2": {"rank": 1}}},
            "be_web_1": {"servers": {"ams.2": {"rank": 0}}},
        },
    }
    out = spec.with_draining(base, ["ams.1"])
    assert out["routes"]["be_web_0"]["servers"] == {
        "ams.1": {"rank": 0, "draining": True},
        "ams.2": {"rank": 1},
    }
    assert out["routes"]["be_web_1"] == base["routes"]["be_web_1"]
    assert spec.with_draining(base, ["sea.1"]) == base
    assert "draining" not in base["routes"]["be_web_0"]["servers"]["ams.1"]  # a copy


def test_every_machine_replaced_in_place_at_once_is_warned_about(tmp_path: Path) -> None:
    hosts, _, _ = _deployed(tmp_path)
    blue = support.load(
        support.fleet_dir(
            tmp_path,
            support.app_edit("hello", image=V2, deploy={"strategy": "bluegreen"}),
            "bluegreen",
        )
    )
    plan = support.plan(blue, hosts)
    assert any(
        w.address == "app.hello" and "none serves while the new ones boot" in w.message
        for w in plan.warnings
    )


def test_an_interrupted_deploy_resumes_and_restores_every_route(tmp_path: Path) -> None:
    hosts, after, state = _deployed(tmp_path)
    held = {name: h.items[(Kind.ROUTE, "hello")].etag for name, h in hosts.hosts.items()}
    plan = support.plan(after, hosts)
    # sea#1's old machine cannot be deleted this time: batch 2 stops after its drains
    hosts.hosts["sea-2"].behaviour.fail_actions["app.hello/machine[sea#1]:delete"] = "busy"
    first = support.run(plan, hosts, state, "deploy")
    assert not first.ok
    drained = {name: h.items[(Kind.ROUTE, "hello")].etag for name, h in hosts.hosts.items()}
    assert drained == {h: plan.step_index()[f"host.{h}/route[hello]:drain2"].etag for h in EDGES}
    hosts.hosts["sea-2"].behaviour.fail_actions.clear()
    again = support.run(plan, hosts, state, "deploy")  # the same plan, the same journal
    assert again.ok
    assert {name: h.items[(Kind.ROUTE, "hello")].etag for name, h in hosts.hosts.items()} == held
    assert not support.plan(after, hosts).changes
