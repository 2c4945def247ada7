"""The routing table: policy from the desired world and observed machines (pure)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from types import MappingProxyType

import pytest

from fleet import compile as fc
from fleet import load, model
from fleet.errors import ProviderError
from providers.proxy import table as t

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
H = t.MachineState.HEALTHY


def world(auto_start: bool = False) -> model.DesiredWorld:
    f = load.load_dir(EXAMPLES)
    sea = f.regions["sea"]
    # a third region, nearer to sea than ams is: backups must come nearest first
    nrt = dataclasses.replace(sea, name="nrt", latency_ms=MappingProxyType({"sea": 90}))
    sea = dataclasses.replace(sea, latency_ms=MappingProxyType({"ams": 140, "nrt": 90}))
    hello = f.apps["hello"]
    svc = dataclasses.replace(hello.services[0], auto_start_machines=auto_start)
    hello = dataclasses.replace(hello, services=(svc,))
    f = dataclasses.replace(
        f,
        regions=MappingProxyType({**f.regions, "sea": sea, "nrt": nrt}),
        apps=MappingProxyType({**f.apps, "hello": hello}),
    )
    return fc.compile_world(f)


def m(app: str, region: str, index: int, host: str, state: t.MachineState = H) -> t.MachineView:
    return t.MachineView(model.MachineSlot(app, region, index), host, state)


def hello_route(tab: t.RoutingTable) -> t.Route:
    r = tab.route("be_hello_0")
    assert r is not None
    return r


def test_local_machines_are_active_and_remote_ones_backups_nearest_first() -> None:
    machines = [
        m("hello", "ams", 1, "ams-1"),
        m("hello", "nrt", 1, "sea-1"),  # host does not matter for ordering, region does
        m("hello", "sea", 2, "sea-1"),
        m("hello", "sea", 1, "sea-1"),
    ]
    r = hello_route(t.build(world(), "sea-1", machines))
    assert [(s.name, s.backup) for s in r.servers] == [
        ("sea.1", False),
        ("sea.2", False),
        ("nrt.1", True),
        ("ams.1", True),
    ]
    assert all(s.maxconn == 25 for s in r.servers)  # hard_limit -> maxconn
    assert r.soft_limit == 20
    w = world()
    sea1 = next(s for s in r.servers if s.name == "sea.1")
    assert sea1.address == str(fc.machine_address(w.host_prefixes["sea-1"], "hello/sea#1"))
    assert sea1.port == 8080


def test_only_healthy_machines_enter_and_draining_ones_get_no_new_requests() -> None:
    machines = [
        m("hello", "sea", 1, "sea-1", t.MachineState.STARTING),
        m("hello", "sea", 2, "sea-1", t.MachineState.UNHEALTHY),
        m("hello", "sea", 3, "sea-1", t.MachineState.DRAINING),
        m("hello", "sea", 4, "sea-1", t.MachineState.STOPPED),
        m("hello", "sea", 5, "sea-1"),
    ]
    r = hello_route(t.build(world(), "sea-1", machines))
    assert [(s.name, s.weight) for s in r.servers] == [("sea.3", 0), ("sea.5", t.ACTIVE_WEIGHT)]


def test_listeners_follow_ports_handlers_and_anycast() -> None:
    tab = t.build(world(), "sea-1", [])
    r = hello_route(tab)
    got = {(lst.address, lst.port, lst.tls, lst.http) for lst in r.listeners}
    assert got == {
        ("198.51.100.10", 80, False, True),
        ("2001:db8:100::10", 80, False, True),
        ("198.51.100.10", 443, True, True),
        ("2001:db8:100::10", 443, True, True),
    }
    echo = tab.route("be_echo_0_tcp")
    assert echo is not None and echo.mode is t.Mode.TCP
    assert r.hostnames == ("hello.fleet.internal",)


def test_waker_is_first_backup_and_enabled_only_with_a_stopped_local_machine() -> None:
    w = world(auto_start=True)
    stopped = [m("hello", "sea", 1, "sea-1", t.MachineState.STOPPED), m("hello", "ams", 1, "ams-1")]
    r = hello_route(t.build(w, "sea-1", stopped))
    assert [(s.name, s.role, s.enabled) for s in r.servers] == [
        ("waker", t.Role.WAKER, True),
        ("ams.1", t.Role.REMOTE, True),
    ]
    running = [m("hello", "sea", 1, "sea-1"), m("hello", "ams", 1, "ams-1")]
    r = hello_route(t.build(w, "sea-1", running))
    assert [(s.name, s.enabled) for s in r.servers] == [
        ("sea.1", True),
        ("waker", False),
        ("ams.1", True),
    ]
    # a stopped machine on another host of the region is not this host's to start
    other = [m("hello", "sea", 1, "sea-2", t.MachineState.STOPPED)]
    assert not hello_route(t.build(w, "sea-1", other)).servers[0].enabled


def test_build_is_deterministic() -> None:
    machines = [m("hello", "sea", 1, "sea-1"), m("ledger", "ams", 1, "ams-1")]
    assert t.build(world(), "sea-1", machines) == t.build(world(), "sea-1", machines[::-1])


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda s: dataclasses.replace(s, address="not-an-ip"), "invalid address"),
        (lambda s: dataclasses.replace(s, port=0), "out of range"),
        (lambda s: dataclasses.replace(s, name="bad name"), "invalid server name"),
        (lambda s: dataclasses.replace(s, maxconn=0), "maxconn"),
    ],
)
def test_malformed_tables_are_refused_with_the_problem(mutate: object, needle: str) -> None:
    tab = t.build(world(), "sea-1", [m("hello", "sea", 1, "sea-1")])
    r = hello_route(tab)
    bad_server = mutate(r.servers[0])  # type: ignore[operator]
    bad = dataclasses.replace(
        tab,
        routes=tuple(
            dataclasses.replace(x, servers=(bad_server,)) if x is r else x for x in tab.routes
        ),
    )
    with pytest.raises(ProviderError, match=needle):
        t.check(bad)


def test_two_tcp_routes_on_one_address_and_port_are_refused() -> None:
    tab = t.build(world(), "sea-1", [])
    echo = tab.route("be_echo_0_tcp")
    assert echo is not None
    twin = dataclasses.replace(echo, app="echo2")
    with pytest.raises(ProviderError, match="already bound"):
        t.check(dataclasses.replace(tab, routes=(*tab.routes, twin)))


def test_fly_replay_is_read_from_yaml_per_service(tmp_path: Path) -> None:
    fleet_dir = tmp_path / "fleet"
    shutil.copytree(EXAMPLES, fleet_dir)
    app = fleet_dir / "apps" / "hello.yaml"
    app.write_text(
        app.read_text().replace(
            "      concurrency:", "      fly_replay: false\n      concurrency:", 1
        )
    )
    f = load.load_dir(fleet_dir)
    assert not f.apps["hello"].services[0].fly_replay
    assert load.load_dir(EXAMPLES).apps["hello"].services[0].fly_replay  # the default
    tab = t.build(fc.compile_world(f), "sea-1", [m("hello", "sea", 1, "sea-1")])
    assert not hello_route(tab).replay
