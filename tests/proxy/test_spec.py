"""The route resource's spec: routes -> JSON -> routes, and the host's table from specs (pure)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fleet import model
from fleet.errors import ProviderError
from providers.proxy import spec
from providers.proxy import table as t
from tests.proxy.test_table import m, world


def _routes(host: str = "sea-1") -> tuple[t.Route, ...]:
    w = world(auto_start=True)
    machines = [
        m("hello", "sea", 1, "sea-1"),
        m("hello", "sea", 2, "sea-2", t.MachineState.DRAINING),
        m("hello", "nrt", 1, "sea-1"),
        m("hello", "ams", 1, "ams-1"),
        m("echo", "ams", 1, "ams-1"),  # another app: not in hello's routes
    ]
    return spec.app_routes(w, "hello", host, machines)


def test_round_trip_keeps_every_server_field_and_the_backup_order() -> None:
    routes = _routes()
    text = json.dumps(spec.to_json("hello", "sea", routes), sort_keys=True)
    back = spec.from_json(json.loads(text))
    assert [r.name for r in back] == ["be_hello_0"]
    (route,) = routes
    (parsed,) = back
    machines = [s for s in route.servers if s.role is not t.Role.WAKER]
    assert [s for s in parsed.servers if s.role is not t.Role.WAKER] == machines
    assert [s.name for s in parsed.servers] == ["sea.1", "sea.2", "waker", "nrt.1", "ams.1"]
    assert dataclasses.replace(parsed, servers=()) == dataclasses.replace(route, servers=())


def test_replay_off_travels_and_the_default_leaves_specs_as_they_were() -> None:
    (route,) = _routes()
    assert (
        route.replay
        and "replay" not in spec.to_json("hello", "sea", (route,))["routes"]["be_hello_0"]
    )
    off = dataclasses.replace(route, replay=False)
    raw = json.loads(json.dumps(spec.to_json("hello", "sea", (off,))))
    assert raw["routes"]["be_hello_0"]["replay"] is False
    (back,) = spec.from_json(raw)
    assert not back.replay


def test_an_app_routes_do_not_depend_on_other_apps() -> None:
    (route,) = _routes()
    assert all(s.machine.startswith("hello/") for s in route.servers if s.machine)


def test_backups_are_capped_nearest_first() -> None:
    w = world()
    many = [m("hello", "ams", i, "ams-1") for i in range(1, 6)]
    (route,) = spec.app_routes(w, "hello", "sea-1", many, t.Settings(max_backups=2))
    assert [s.name for s in route.servers if s.backup] == ["ams.1", "ams.2"]


def test_the_host_assigns_waker_ports_and_enables_them_for_stopped_apps() -> None:
    w = world(auto_start=True)
    routes = spec.app_routes(w, "hello", "sea-1", [m("hello", "sea", 1, "sea-1")])
    echo = spec.app_routes(w, "echo", "sea-1", [m("echo", "sea", 1, "sea-1")])
    settings = t.Settings(waker_port=21000)
    table = spec.assemble(
        "sea-1", "sea", [*routes, *echo], stopped_apps=frozenset({"hello"}), settings=settings
    )
    assert [r.name for r in table.routes] == ["be_echo_0_tcp", "be_hello_0"]
    wakers = {r.name: r.server(t.WAKER_NAME) for r in table.routes}
    assert all(w is not None for w in wakers.values())
    echo_w, hello_w = wakers["be_echo_0_tcp"], wakers["be_hello_0"]
    assert echo_w is not None and hello_w is not None
    assert (echo_w.port, echo_w.enabled) == (21000, False)
    assert (hello_w.port, hello_w.enabled) == (21001, True)
    t.check(table)


@pytest.mark.parametrize(
    "broken",
    [
        {"routes": {}},  # no app
        {"app": "hello", "routes": {"be_hello_0": {"service": 0}}},
        {"app": "hello", "routes": {"be_other_0": None}},
    ],
)
def test_malformed_specs_raise_one_clear_error(broken: dict[str, object]) -> None:
    with pytest.raises(ProviderError, match="route"):
        spec.from_json(broken)


def test_a_spec_naming_the_wrong_backend_is_refused() -> None:
    data = spec.to_json("hello", "sea", _routes())
    data["routes"] = {"be_other_0": data["routes"]["be_hello_0"]}
    with pytest.raises(ProviderError, match="describes be_hello_0"):
        spec.from_json(data)


def test_slot_of_a_server_follows_from_its_name() -> None:
    (route,) = spec.from_json(spec.to_json("hello", "sea", _routes()))
    server = route.server("nrt.1")
    assert server is not None
    assert (server.region, server.machine) == ("nrt", "hello/nrt#1")
    assert model.MachineSlot("hello", "nrt", 1).id == server.machine
