"""The ``route`` kind's pure parts: the host's table from route entries, drains, edge health."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fleet.errors import ProviderError
from hostagent import edge, wake
from hostagent import handlers as H
from hostagent.inventory import Entry, Inventory
from providers.proxy import runtime, spec
from providers.proxy import table as t
from reconciler.core import observed
from tests.proxy.test_table import m, world


def _spec(app: str, machines: list[t.MachineView], host: str = "sea-1") -> dict[str, object]:
    routes = spec.app_routes(world(auto_start=True), app, host, machines)
    return spec.to_json(app, "sea", routes)


HELLO = _spec("hello", [m("hello", "sea", 1, "sea-1"), m("hello", "ams", 1, "ams-1")])
ECHO = _spec("echo", [m("echo", "sea", 1, "sea-1")])


def _edge(tmp_path: Path) -> edge.Edge:
    return edge.Edge(edge.EdgePaths.of(tmp_path), "sea-1")


def test_the_table_holds_every_served_route_with_the_host_waker_state(tmp_path: Path) -> None:
    e = _edge(tmp_path)
    table = e.table({"hello": HELLO}, frozenset({"hello"}))
    assert [r.name for r in table.routes] == ["be_hello_0"]
    assert (table.host, table.region) == ("sea-1", "sea")
    waker = table.routes[0].server(t.WAKER_NAME)
    assert waker is not None and waker.enabled  # hello has a stopped machine here
    both = e.table({"hello": HELLO, "echo": ECHO}, frozenset())
    assert [r.name for r in both.routes] == ["be_echo_0_tcp", "be_hello_0"]


def test_a_malformed_spec_is_refused_and_raised_as_an_alarm(tmp_path: Path) -> None:
    e = _edge(tmp_path)
    handler = edge.RouteHandler(e)
    broken = {"app": "echo", "routes": {"be_echo_0_tcp": {}}}
    with pytest.raises(ProviderError, match=r"route\[echo\]"):
        handler.create("echo", broken, lambda *_: None)
    assert "malformed route spec" in (e.alarm() or "")
    assert e.specs() == {}  # nothing refused is kept as served
    handler.delete("echo", broken, lambda *_: None)  # the agent cleans up a failed create
    assert "malformed route spec" in (e.alarm() or "")  # ... which changes nothing: alarm stays
    seen = handler.observe("hello", HELLO)
    assert seen.health == "critical" and "malformed" in seen.runtime["alarm"]
    assert seen.state == observed.RunState.STOPPED  # a state the protocol knows


def test_a_refresh_clears_only_an_alarm_it_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A supervisor or autostop refresh serves the same specs, so a failed update's alarm
    # stays (lab: an idle machine stopping cleared it before anyone could read it)
    e = _edge(tmp_path)
    monkeypatch.setattr(e, "_bring", lambda *_: None)  # no HAProxy here: the table is enough
    monkeypatch.setattr(edge, "align_wakers", lambda *_: None)
    e.paths.specs.parent.mkdir(parents=True, exist_ok=True)
    e.paths.specs.write_text(json.dumps({"hello": HELLO}))
    broken = {"app": "echo", "routes": {"be_echo_0_tcp": {}}}
    with pytest.raises(ProviderError):
        edge.RouteHandler(e).create("echo", broken, lambda *_: None)
    e.change({}, frozenset, lambda *_: None)
    assert "malformed route spec" in (e.alarm() or "")
    table = e.table

    def refused(*_: object) -> t.RoutingTable:
        raise ProviderError("proxy: HAProxy refused the configuration")

    monkeypatch.setattr(e, "table", refused)
    with pytest.raises(ProviderError):
        e.change({}, frozenset, lambda *_: None)
    assert e.alarm() == edge.REFRESH + "proxy: HAProxy refused the configuration"
    monkeypatch.setattr(e, "table", table)
    e.change({}, frozenset, lambda *_: None)  # the next refresh succeeds: its own alarm goes
    assert e.alarm() is None


def test_leaving_servers_drain_in_place_before_they_go() -> None:
    w = world()
    live = spec.assemble(
        "sea-1",
        "sea",
        spec.app_routes(
            w,
            "hello",
            "sea-1",
            [
                m("hello", "sea", 1, "sea-1"),
                m("hello", "sea", 2, "sea-1"),
                m("hello", "ams", 1, "ams-1"),
            ],
        ),
    )
    new = spec.assemble(
        "sea-1",
        "sea",
        spec.app_routes(
            w, "hello", "sea-1", [m("hello", "sea", 2, "sea-1"), m("hello", "sea", 3, "sea-2")]
        ),
    )
    mid = edge.with_leavers_draining(live, new)
    servers = [(s.name, s.draining) for s in mid.routes[0].servers]
    assert servers == [("sea.1", True), ("sea.2", False), ("ams.1", True), ("sea.3", False)]
    assert edge.with_leavers_draining(new, new) == new


def test_edge_health_counts_up_machines_per_app_not_wakers_or_draining() -> None:
    w = world(auto_start=True)
    routes = spec.app_routes(
        w,
        "hello",
        "sea-1",
        [
            m("hello", "sea", 1, "sea-1"),
            m("hello", "sea", 2, "sea-1", t.MachineState.DRAINING),
            m("hello", "ams", 1, "ams-1"),
        ],
    )
    table = spec.assemble("sea-1", "sea", routes)

    def stat(name: str, status: str) -> runtime.ServerStat:
        return runtime.ServerStat("be_hello_0", name, 0, 0, 0, -1, 0, status)

    stats = [stat("sea.1", "UP"), stat("sea.2", "UP"), stat("ams.1", "DOWN"), stat("waker", "UP")]
    assert edge.count_up(table, stats) == {"hello": 1}
    assert edge.count_up(table, []) == {"hello": 0}


def test_saved_tables_round_trip_with_their_wakers(tmp_path: Path) -> None:
    routes = spec.app_routes(
        world(auto_start=True), "hello", "sea-1", [m("hello", "sea", 1, "sea-1")]
    )
    table = spec.assemble("sea-1", "sea", routes, stopped_apps=frozenset({"hello"}))
    back = spec.table_from_json(json.loads(json.dumps(spec.table_to_json(table))))
    assert back == table


class _Machines:
    """A machine kind whose one machine 'boots' into a TCP server on loopback when started."""

    kind = "machine"

    def __init__(self, port: int) -> None:
        self.port = port
        self.started: list[str] = []
        self.server: socket.socket | None = None

    def observe(self, rid: str, spec: object) -> H.Observed:
        return H.Observed(state="running" if self.started else "stopped")

    def start(self, rid: str, spec: object, emit: object) -> None:
        self.started.append(rid)
        time.sleep(0.3)  # booting
        srv = socket.socket()
        srv.bind(("127.0.0.1", self.port))
        srv.listen(128)
        self.server = srv

        def serve() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                conn.sendall(b"woken\n")
                conn.close()

        threading.Thread(target=serve, daemon=True).start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wake_service(tmp_path: Path) -> tuple[wake.WakeService, _Machines, int]:
    """The wake service of sea-1, whose one echo machine is stopped; and the waker's port."""
    machine_port, waker_port = _free_port(), _free_port()
    routes = spec.app_routes(
        world(auto_start=True), "echo", "sea-1", [m("echo", "sea", 1, "sea-1")]
    )
    table = spec.assemble(
        "sea-1",
        "sea",
        routes,
        stopped_apps=frozenset({"echo"}),
        settings=t.Settings(waker_port=waker_port),
    )
    paths = edge.EdgePaths.of(tmp_path)
    paths.root.mkdir(parents=True)
    paths.table.write_text(json.dumps(spec.table_to_json(table)))
    inventory = Inventory(tmp_path / "inventory")
    machine_spec = {
        "app": "echo",
        "address": "127.0.0.1",
        "services": [{"internal_port": machine_port, "protocol": "tcp"}],
    }
    with inventory.transaction() as state:
        state.put(Entry("machine", "echo/sea#1@x", "sha256:1", machine_spec))
    machines = _Machines(machine_port)
    service = wake.WakeService(edge.Edge(paths, "sea-1"), inventory, machines)  # type: ignore[arg-type]
    return service, machines, waker_port


def _ask(port: int, times: int) -> list[bytes]:
    def ask() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            return c.recv(100)

    with ThreadPoolExecutor(20) as pool:
        return list(pool.map(lambda _: ask(), range(times)))


def test_the_wake_service_starts_one_stopped_machine_for_many_connections(tmp_path: Path) -> None:
    service, machines, waker_port = _wake_service(tmp_path)
    service.start()
    try:
        assert service.tick(0.0) == ["waker listening for 1 route(s)"]
        assert service.tick(1.0) == []  # nothing changed: nothing done
        assert _ask(waker_port, 50) == [b"woken\n"] * 50
        assert machines.started == ["echo/sea#1@x"]
    finally:
        service.close()
        if machines.server is not None:
            machines.server.close()


def test_the_wake_service_waits_for_a_machine_something_else_started(tmp_path: Path) -> None:
    """The waker stays on until HAProxy sees the machine UP, also when an apply started
    it: a request meeting the waker then waits for that machine instead of failing."""
    service, machines, waker_port = _wake_service(tmp_path)
    service.start()
    booting = threading.Thread(target=machines.start, args=("echo/sea#1@x", {}, None))
    try:
        service.tick(0.0)
        booting.start()  # an apply starts the machine; it boots for 0.3 s
        while not machines.started:
            time.sleep(0.01)
        assert _ask(waker_port, 10) == [b"woken\n"] * 10
        assert machines.started == ["echo/sea#1@x"]  # joined, not started again
    finally:
        booting.join()
        service.close()
        if machines.server is not None:
            machines.server.close()


def test_edge_health_counts_an_enabled_waker_as_a_machine_it_can_start() -> None:
    w = world(auto_start=True)
    routes = spec.app_routes(w, "hello", "sea-1", [m("hello", "sea", 1, "sea-1")])
    table = spec.assemble("sea-1", "sea", routes, stopped_apps=frozenset({"hello"}))
    down = [runtime.ServerStat("be_hello_0", "sea.1", 0, 0, 0, -1, 0, "DOWN")]
    assert edge.count_up(table, down) == {"hello": 1}  # announced: a request wakes sea.1


def _waking_table(draining: bool = False) -> t.RoutingTable:
    """web on sea-1: a local machine, the waker (on: the machine was stopped), a remote one."""
    local = t.Server("sea.1", t.Role.LOCAL, "127.0.0.1", 8080, "sea", "web/sea#1", None, draining)
    waker = t.Server(t.WAKER_NAME, t.Role.WAKER, "", 0, enabled=False)
    remote = t.Server("ams.1", t.Role.REMOTE, "fdf1:ee70:0:20c8::2", 8080, "ams", "web/ams#1")
    listener = t.Listener("127.0.0.1", 80, False, True)
    web = t.Route("web", 0, t.Mode.HTTP, (listener,), (local, waker, remote))
    return spec.assign_wakers(t.RoutingTable("sea-1", "sea", (web,)), frozenset({"web"}))


def _state(name: str, op_state: int, admin_state: int = 0) -> runtime.ServerState:
    return runtime.ServerState("be_web_0", name, "127.0.0.1", 8080, op_state, admin_state, 100)


def test_a_route_is_still_waking_until_haproxy_holds_a_local_machine_running() -> None:
    table, now = _waking_table(), 1000.0
    started = {"web": now - 5.0}
    down = [_state("sea.1", 0), _state("ams.1", runtime.OP_RUNNING)]  # a remote one UP
    assert edge.still_waking(table, frozenset(), started, down, now) == {"be_web_0"}
    up = [_state("sea.1", runtime.OP_RUNNING)]
    assert edge.still_waking(table, frozenset(), started, up, now) == frozenset()
    maintained = [_state("sea.1", runtime.OP_RUNNING, admin_state=0x01)]  # no traffic there
    assert edge.still_waking(table, frozenset(), started, maintained, now) == {"be_web_0"}
    # bounded: a machine that never comes up gives the route back to its backups
    late = now + edge.WAKE_WINDOW_S
    assert edge.still_waking(table, frozenset(), started, down, late) == frozenset()
    assert edge.still_waking(table, frozenset(), {}, down, now) == frozenset()  # no start seen
    # stopped again: the stopped rule holds the waker, not this one
    assert edge.still_waking(table, frozenset({"web"}), started, down, now) == frozenset()
    off = spec.assign_wakers(table, frozenset())  # a waker already off is not turned on
    assert edge.still_waking(off, frozenset(), started, down, now) == frozenset()


def test_a_waking_route_gets_its_waker_unless_it_drains_a_machine() -> None:
    waking = spec.assign_wakers(_waking_table(), frozenset(), waking={"be_web_0"})
    assert edge.waker_states(waking) == {("be_web_0", t.WAKER_NAME): True}
    drained = spec.assign_wakers(_waking_table(draining=True), frozenset(), waking={"be_web_0"})
    assert edge.waker_states(drained) == {("be_web_0", t.WAKER_NAME): False}
