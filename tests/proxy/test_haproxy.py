"""Real HAProxy on loopback driven by routing tables: routing, runtime changes, drains,
limits, seamless reloads and refused updates. Real backends, started and stopped by PID."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fleet.errors import ProviderError
from providers.proxy import proxy
from providers.proxy import table as t
from tests.proxy.conftest import Backends, free_port, get, route, server, table, wrk, wrk_result


def live_servers(edge: proxy.EdgeProxy, backend: str) -> list[tuple[str, int, int]]:
    return [(s.name, s.port, s.weight) for s in edge.session.servers_state(backend)]


def test_routes_by_address_and_by_host_where_apps_share_one(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    pa, pb, pc = backends.start("a1"), backends.start("b1"), backends.start("c1")
    port = free_port()
    edge.start(
        table(
            route("a", port, (server("sea.1", pa),)),
            route("b", port, (server("sea.1", pb),)),  # shares a's address
            route("c", port, (server("sea.1", pc),), address="127.0.0.2"),
        )
    )
    assert get(port, host="a.fleet.test")[2] == b"a1\n"
    assert get(port, host="B.fleet.test:80")[2] == b"b1\n"
    # an unknown Host falls back to the app owning the destination (anycast) address
    assert get(port, host="other.example")[2] == b"a1\n"
    # an app alone on its address gets its requests whatever the Host says ...
    assert get_at("127.0.0.2", port, "a.fleet.test").endswith(b"c1\n")
    # ... and another app is not reached through that address
    assert get_at("127.0.0.2", port, "C.fleet.test").endswith(b"c1\n")
    assert get(port, host="c.fleet.test")[2] == b"a1\n"
    # a request without any Host (HTTP/1.0) goes to the address's owner
    assert no_host("127.0.0.1", port).endswith(b"a1\n")
    assert no_host("127.0.0.2", port).endswith(b"c1\n")


def get_at(address: str, port: int, host: str) -> bytes:
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return b"".join(iter(lambda: s.recv(65536), b""))


def no_host(address: str, port: int) -> bytes:
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return b"".join(iter(lambda: s.recv(65536), b""))


def test_one_route_change_touches_only_that_route(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    pa, pa2, pb = backends.start("a1"), backends.start("a2"), backends.start("b1")
    port = free_port()
    b = route("b", port, (server("sea.1", pb),))
    edge.start(table(route("a", port, (server("sea.1", pa),)), b))
    before_b = live_servers(edge, "be_b_0")
    result = edge.apply(table(route("a", port, (server("sea.1", pa), server("sea.2", pa2))), b))
    assert result.method is proxy.Method.RUNTIME
    assert result.touched == {"be_a_0"}
    assert all("be_b_0" not in c for c in result.commands)
    assert live_servers(edge, "be_b_0") == before_b
    assert {get(port, host="a.fleet.test")[2] for _ in range(6)} == {b"a1\n", b"a2\n"}
    # the configuration on disk follows, so a reload comes back to the same table
    assert "server sea.2 127.0.0.1" in edge.options.config_path.read_text()


def test_rolling_swap_under_load_has_no_failed_request(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    port = free_port()
    names = ["v1a", "v1b"]
    servers = {n: server(f"sea.{i}", backends.start(n)) for i, n in enumerate(names, 1)}

    def apply() -> None:
        edge.apply(table(route("web", port, tuple(servers.values()))))

    edge.start(table(route("web", port, tuple(servers.values()))))
    load = wrk(f"http://127.0.0.1:{port}/", seconds=4, connections=20)
    time.sleep(0.5)
    for i, (old, new) in enumerate([("v1a", "v2a"), ("v1b", "v2b")], 3):
        servers[new] = server(f"sea.{i}", backends.start(new))
        apply()  # new machine healthy: in
        servers[old] = t.Server(**{**_fields(servers[old]), "draining": True})
        apply()  # old machine drains
        time.sleep(0.3)
        del servers[old]
        apply()  # and leaves
        backends.stop(old)
        time.sleep(0.3)
    res = wrk_result(load)
    assert res.requests > 500
    assert (res.non_2xx, res.socket_errors) == (0, 0)
    assert [n for n, _, _ in live_servers(edge, "be_web_0")] == ["sea.3", "sea.4"]


def _fields(s: t.Server) -> dict[str, object]:
    return {f: getattr(s, f) for f in t.Server.__slots__}


def test_draining_machine_finishes_in_flight_and_gets_no_new_request(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    p1, p2 = backends.start("old"), backends.start("new")
    port = free_port()
    edge.start(table(route("web", port, (server("sea.1", p1),))))
    slow: list[tuple[int, bytes]] = []
    th = threading.Thread(target=lambda: slow.append(get(port, "/slow?ms=1500")[::2]))
    th.start()
    time.sleep(0.3)
    edge.apply(table(route("web", port, (server("sea.1", p1, draining=True), server("sea.2", p2)))))
    assert {get(port)[2] for _ in range(10)} == {b"new\n"}
    th.join()
    assert slow == [(200, b"old\n")]


def test_hard_limit_queues_then_answers_503(edge: proxy.EdgeProxy, backends: Backends) -> None:
    p1 = backends.start("only")
    port = free_port()
    edge.start(table(route("web", port, (server("sea.1", p1, maxconn=1),), hard_limit=1)))
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(get, port, "/slow?ms=500")
        time.sleep(0.1)
        queued = pool.submit(get, port, "/")  # waits behind the first, then is served
        assert first.result()[0] == 200 and queued.result()[0] == 200
        blocker = pool.submit(get, port, "/slow?ms=2500")
        time.sleep(0.1)
        began = time.monotonic()
        refused = get(port, "/")
        waited = time.monotonic() - began
        assert blocker.result()[0] == 200
    assert refused[0] == 503
    assert 0.9 <= waited < 2.0  # the queue timeout (1 s), not the blocker's 2.5 s


def test_new_route_reloads_seamlessly_under_load(edge: proxy.EdgeProxy, backends: Backends) -> None:
    pa, pb = backends.start("a1"), backends.start("b1")
    port, port_b = free_port(), free_port()
    a = route("a", port, (server("sea.1", pa),))
    edge.start(table(a))
    load = wrk(f"http://127.0.0.1:{port}/", seconds=3, connections=20)
    time.sleep(0.5)
    for i in range(4):
        routes = (a, route("b", port_b, (server("sea.1", pb),))) if i % 2 == 0 else (a,)
        assert edge.apply(table(*routes)).method is proxy.Method.RELOAD
        time.sleep(0.4)
    res = wrk_result(load)
    assert (res.non_2xx, res.socket_errors) == (0, 0)
    assert res.requests > 500


def test_malformed_updates_keep_the_last_good_table(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    p1, p2, p3 = backends.start("s1"), backends.start("s2"), backends.start("s3")
    port = free_port()
    good = table(route("web", port, (server("sea.1", p1), server("sea.2", p2))))
    edge.start(good)
    config = edge.options.config_path.read_text()

    # 1. refused before HAProxy sees it
    bad_addr = table(
        route("web", port, (server("sea.1", p1), t.Server("sea.9", t.Role.LOCAL, "nope", 1)))
    )
    with pytest.raises(ProviderError, match=r"malformed routing table.*invalid address 'nope'"):
        edge.apply(bad_addr)
    assert edge.alarm is not None and "nope" in edge.alarm

    # 2. refused by `haproxy -c`: a TLS listener with no certificate to serve
    tls = table(
        route("web", port, good.routes[0].servers),
        route("sec", free_port(), (server("sea.1", p1),), tls=True),
    )
    with pytest.raises(ProviderError, match="HAProxy refused the configuration"):
        edge.apply(tls)
    assert edge.options.config_path.read_text() == config

    # 3. refused by the runtime API half-way (a server removed behind our back): rolled back
    edge.session.execute("disable server be_web_0/sea.2")
    assert edge.session.execute("del server be_web_0/sea.2").startswith("Server deleted")
    with pytest.raises(ProviderError, match=r"HAProxy refused 'disable server be_web_0/sea\.2'"):
        edge.apply(table(route("web", port, (server("sea.1", p1), server("sea.3", p3)))))
    assert [n for n, _, _ in live_servers(edge, "be_web_0")] == ["sea.1"]  # sea.3 undone

    assert edge.last_good == good
    assert {get(port)[0] for _ in range(5)} == {200}
    # the next update resyncs HAProxy by a reload, and clears the alarm
    result = edge.apply(table(route("web", port, (server("sea.1", p1), server("sea.3", p3)))))
    assert result.method is proxy.Method.RELOAD
    assert edge.alarm is None
    assert [n for n, _, _ in live_servers(edge, "be_web_0")] == ["sea.1", "sea.3"]
