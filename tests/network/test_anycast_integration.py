"""Anycast for real: two edge BIRDs and an upstream BIRD in namespaces, changed by configure."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest

from fleet.errors import ProviderError
from providers.network import announce, bgp, birdctl, birdparse
from tests.network import bgplab
from tests.network.bgplab import WEB4, WEB6, BgpLab
from tests.network.netlab import NetLab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

E1_4 = ipaddress.ip_address("192.0.2.2")
E2_4 = ipaddress.ip_address("192.0.2.3")


@pytest.fixture
def net(netlab: NetLab, tmp_path: Path) -> BgpLab:
    net = BgpLab.build(netlab, tmp_path, edges=2)
    wait_for(lambda: all(p.established for p in bgp_sessions(net.upstream_bird)), timeout=15)
    return net


def bgp_sessions(bird: birdctl.Bird) -> list[birdparse.Protocol]:
    return [p for p in birdctl.protocols(bird) if p.proto == "BGP"]


def upstream_hops(
    net: BgpLab, prefix: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> frozenset[object]:
    return birdparse.next_hops(birdctl.routes(net.upstream_bird), prefix)


def both_announce(net: BgpLab) -> None:
    for edge in ("e1", "e2"):
        net.announce(edge, {"web": bgp.Export.ANNOUNCE})
    wait_for(
        lambda: net.upstream_next_hops(WEB4) == 2 and net.upstream_next_hops(WEB6) == 2, timeout=10
    )


def test_two_edges_give_the_upstream_an_ecmp_route_for_both_families(net: BgpLab) -> None:
    both_announce(net)
    assert "nexthop via 192.0.2.2" in net.kernel_route(WEB4)
    assert "nexthop via 192.0.2.3" in net.kernel_route(WEB4)
    assert "2001:db8:ff::2" in net.kernel_route(WEB6) and "2001:db8:ff::3" in net.kernel_route(WEB6)
    assert upstream_hops(net, WEB4) == {E1_4, E2_4}
    # Only the anycast addresses leave the edges: the upstream learned nothing else.
    learned = {r.prefix for r in birdctl.routes(net.upstream_bird)}
    assert learned == {WEB4, WEB6}


def test_reconfigure_never_restarts_the_sessions(net: BgpLab) -> None:
    before = {p.name: p.since for p in bgp_sessions(net.birds["e1"])}
    assert net.announce("e1", {"web": bgp.Export.ANNOUNCE})
    assert not net.announce("e1", {"web": bgp.Export.ANNOUNCE})  # same text: no-op
    net.announce("e1", {"web": bgp.Export.GRACEFUL, "api": bgp.Export.ANNOUNCE})
    net.announce("e1", {})
    after = {p.name: p.since for p in bgp_sessions(net.birds["e1"])}
    assert after == before


def test_a_config_bird_refuses_keeps_the_last_good_one(net: BgpLab) -> None:
    net.announce("e1", {"web": bgp.Export.ANNOUNCE})
    good = net.birds["e1"].config.read_text()
    with pytest.raises(ProviderError, match="BIRD refused"):
        birdctl.apply_config(net.birds["e1"], good.replace("router id", "router idd"))
    assert net.birds["e1"].config.read_text() == good
    wait_for(lambda: E1_4 in upstream_hops(net, WEB4), timeout=5)
    assert all(p.established for p in bgp_sessions(net.birds["e1"]))


def test_the_export_filter_stops_a_hand_added_route_outside_the_pools(net: BgpLab) -> None:
    net.announce("e1", {"web": bgp.Export.ANNOUNCE})
    text = net.birds["e1"].config.read_text()
    rogue = text.replace(
        "  route 198.51.100.10/32 unreachable;",
        "  route 198.51.100.10/32 unreachable;\n  route 192.0.2.77/32 unreachable;",
    )
    assert rogue != text
    birdctl.apply_config(net.birds["e1"], rogue)  # bypasses render_bird, as an operator might
    wait_for(lambda: E1_4 in upstream_hops(net, WEB4), timeout=5)
    time.sleep(0.5)
    edge = {str(r.prefix) for r in birdctl.routes(net.birds["e1"])}
    assert "192.0.2.77/32" in edge  # BIRD has it ...
    learned = {str(r.prefix) for r in birdctl.routes(net.upstream_bird)}
    assert "192.0.2.77/32" not in learned  # ... and the filter never exports it


def drive(
    net: BgpLab,
    edge: str,
    states: dict[str, announce.AnnounceState],
    *,
    healthy: bool,
    draining: bool,
    timers: announce.AnnounceTimers,
) -> dict[str, announce.AnnounceState]:
    """One evaluation of the host agent's loop: step the state machine, apply the config."""
    states, exports = announce.step_all(
        states, healthy={"web": healthy}, draining=draining, now=time.monotonic(), timers=timers
    )
    net.announce(edge, exports)
    return states


def test_drain_is_graceful_then_withdrawn_within_3s_and_recovery_waits_for_hold_down(
    net: BgpLab,
) -> None:
    timers = announce.AnnounceTimers(grace_s=1.5, hold_down_s=2.0)
    both_announce(net)
    now = time.monotonic()
    states = {"web": announce.AnnounceState.announced(now)}
    # Planned drain of e1: graceful-shutdown community first, traffic moves to e2.
    states = drive(net, "e1", states, healthy=True, draining=True, timers=timers)
    assert states["web"].phase is announce.Phase.GRACEFUL

    def tagged() -> bool:
        routes = birdparse.routes_for(birdctl.routes(net.upstream_bird), WEB4)
        return any(r.communities == (bgp.GRACEFUL_SHUTDOWN,) for r in routes)

    wait_for(tagged, timeout=3)
    wait_for(lambda: net.upstream_next_hops(WEB4) == 1, timeout=3)  # e1 de-preferred
    assert "192.0.2.3" in net.kernel_route(WEB4)
    assert E1_4 in upstream_hops(net, WEB4)  # still announced during the grace period
    grace_end = states["web"].until
    assert grace_end is not None
    while time.monotonic() < grace_end:
        states = drive(net, "e1", states, healthy=True, draining=True, timers=timers)
        time.sleep(0.05)
    states = drive(net, "e1", states, healthy=True, draining=True, timers=timers)
    assert states["web"].phase is announce.Phase.WITHDRAWN
    gone = wait_for(lambda: E1_4 not in upstream_hops(net, WEB4), timeout=3)
    assert time.monotonic() - grace_end < 3.0, gone
    # The drain ends and the app is healthy: back only after the hold-down.
    back_from = time.monotonic()
    seen_at = None
    while time.monotonic() - back_from < timers.hold_down_s + 2:
        states = drive(net, "e1", states, healthy=True, draining=False, timers=timers)
        if E1_4 in upstream_hops(net, WEB4):
            seen_at = time.monotonic()
            break
        time.sleep(0.05)
    assert seen_at is not None, "never re-announced"
    assert timers.hold_down_s <= seen_at - back_from <= timers.hold_down_s + 1.0


def test_health_gone_withdraws_at_once(net: BgpLab) -> None:
    timers = announce.AnnounceTimers(grace_s=30, hold_down_s=30)
    both_announce(net)
    states = {"web": announce.AnnounceState.announced(time.monotonic())}
    start = time.monotonic()
    states = drive(net, "e1", states, healthy=False, draining=False, timers=timers)
    assert states["web"].phase is announce.Phase.WITHDRAWN
    wait_for(
        lambda: net.upstream_next_hops(WEB4) == 1 and net.upstream_next_hops(WEB6) == 1, timeout=3
    )
    assert time.monotonic() - start < 3.0
    assert "192.0.2.2" not in net.kernel_route(WEB4)
    # Healthy again at once: still withdrawn (hold-down of 30 s).
    states = drive(net, "e1", states, healthy=True, draining=False, timers=timers)
    time.sleep(0.5)
    assert E1_4 not in upstream_hops(net, WEB4)


def test_a_killed_edge_bird_leaves_the_upstream_with_the_other(net: BgpLab) -> None:
    both_announce(net)
    birdctl.stop(net.birds["e1"])
    wait_for(lambda: net.upstream_next_hops(WEB4) == 1, timeout=3)
    assert upstream_hops(net, WEB4) == {E2_4}
    assert bgplab.EDGE_ASN == 65010
