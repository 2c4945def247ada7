"""birdc parsers against output recorded from real BIRD 2.0.12 sessions."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from fleet.errors import ProviderError
from providers.network import birdparse

RECORDED = Path(__file__).with_name("recorded")


def read(name: str) -> str:
    return (RECORDED / name).read_text()


def test_upstream_protocols() -> None:
    protocols = {p.name: p for p in birdparse.parse_protocols(read("birdc-upstream-protocols.txt"))}
    assert set(protocols) == {"device1", "kernel4", "kernel6", "e1_v4", "e1_v6", "e2_v4", "e2_v6"}
    e1 = protocols["e1_v4"]
    assert (e1.proto, e1.state, e1.info, e1.established) == ("BGP", "up", "Established", True)
    assert e1.neighbor_address == ipaddress.ip_address("192.0.2.2")
    assert (e1.neighbor_as, e1.local_as) == (65010, 64500)
    (channel,) = e1.channels
    assert (channel.name, channel.state, channel.imported, channel.preferred) == (
        "ipv4",
        "UP",
        2,
        2,
    )
    assert protocols["e2_v6"].neighbor_address == ipaddress.ip_address("2001:db8:ff::3")
    assert protocols["kernel4"].channels[0].exported == 2
    assert not protocols["device1"].established and protocols["device1"].channels == ()


def test_edge_protocols_and_a_session_that_is_not_up() -> None:
    edge = {p.name: p for p in birdparse.parse_protocols(read("birdc-edge-protocols.txt"))}
    assert edge["anycast4"].proto == "Static" and edge["anycast4"].channels[0].imported == 2
    assert edge["up_v4"].established and edge["up_v4"].channels[0].exported == 2
    down = {p.name: p for p in birdparse.parse_protocols(read("birdc-edge-protocols-down.txt"))}
    gone = down["up_gone"]
    assert (gone.state, gone.bgp_state, gone.established) == ("start", "Connect", False)
    assert gone.channels[0].state == "DOWN"
    assert down["up_v4"].established


def test_upstream_routes_show_ecmp_candidates_and_the_graceful_community() -> None:
    routes = birdparse.parse_routes(read("birdc-upstream-routes.txt"))
    web4 = ipaddress.ip_network("198.51.100.10/32")
    web6 = ipaddress.ip_network("2001:db8:100::10/128")
    assert birdparse.next_hops(routes, web4) == {
        ipaddress.ip_address("192.0.2.2"),
        ipaddress.ip_address("192.0.2.3"),
    }
    assert birdparse.next_hops(routes, web6) == {
        ipaddress.ip_address("2001:db8:ff::2"),
        ipaddress.ip_address("2001:db8:ff::3"),
    }
    first, second = birdparse.routes_for(routes, web4)
    assert (first.primary, second.primary) == (True, False)
    assert (first.protocol, second.protocol) == ("e1_v4", "e2_v4")
    assert first.table == "master4" and first.kind == "unicast" and first.preference == 100
    assert first.attributes["BGP.as_path"] == "65010"
    (api,) = birdparse.routes_for(routes, ipaddress.ip_network("198.51.100.11/32"))
    assert api.communities == ((65535, 0),)
    assert api.attributes["BGP.local_pref"] == "0"
    assert first.communities == ()


def test_edge_routes_are_static_unreachables() -> None:
    routes = birdparse.parse_routes(read("birdc-edge-routes.txt"))
    assert {(r.table, str(r.prefix), r.kind, r.protocol) for r in routes} == {
        ("master4", "198.51.100.10/32", "unreachable", "anycast4"),
        ("master4", "198.51.100.11/32", "unreachable", "anycast4"),
        ("master6", "2001:db8:100::10/128", "unreachable", "anycast6"),
        ("master6", "2001:db8:100::11/128", "unreachable", "anycast6"),
    }
    assert all(r.primary and r.preference == 200 and r.next_hops == () for r in routes)


def test_configure_output() -> None:
    assert birdparse.configure_ok(read("birdc-configure.txt"))
    assert not birdparse.configure_ok("BIRD 2.0.12 ready.\n/x/bird.conf:3:1 syntax error\n")


@pytest.mark.parametrize("text", ["Name Proto\nbroken\n"])
def test_protocol_garbage_is_an_error(text: str) -> None:
    with pytest.raises(ProviderError):
        birdparse.parse_protocols(text)


def test_route_garbage_is_an_error() -> None:
    with pytest.raises(ProviderError):
        birdparse.parse_routes("Table master4:\nnot a route line\n")
    assert birdparse.parse_routes("BIRD 2.0.12 ready.\n") == ()
