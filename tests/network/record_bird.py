"""The BIRD half of ``python -m tests.network.record``: an upstream and two edges."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

from providers.network import bgp, birdctl
from tests.network import bgplab
from tests.network.netlab import NetLab, wait_for

RECORDED = Path(__file__).with_name("recorded")


def record(lab: NetLab, work: Path) -> None:
    net = bgplab.BgpLab.build(lab, work, edges=2)
    net.announce("e1", {"web": bgp.Export.ANNOUNCE, "api": bgp.Export.GRACEFUL})
    net.announce("e2", {"web": bgp.Export.ANNOUNCE})
    wait_for(lambda: net.upstream_next_hops(bgplab.WEB4) == 2, timeout=15)
    wait_for(lambda: net.upstream_next_hops(bgplab.WEB6) == 2, timeout=15)
    wait_for(
        lambda: net.upstream_next_hops(ipaddress.ip_network("198.51.100.11/32")) == 1, timeout=15
    )
    up = net.upstream_bird
    (RECORDED / "birdc-upstream-protocols.txt").write_text(
        birdctl.birdc(up, "show", "protocols", "all")
    )
    (RECORDED / "birdc-upstream-routes.txt").write_text(birdctl.birdc(up, "show", "route", "all"))
    edge = net.birds["e1"]
    (RECORDED / "birdc-edge-protocols.txt").write_text(
        birdctl.birdc(edge, "show", "protocols", "all")
    )
    (RECORDED / "birdc-edge-routes.txt").write_text(birdctl.birdc(edge, "show", "route", "all"))
    (RECORDED / "birdc-configure.txt").write_text(birdctl.birdc(edge, "configure"))

    # A session whose neighbour never answers: not Established, with BIRD's own info.
    lonely = bgp.Neighbor("up_gone", ipaddress.ip_address("192.0.2.200"), 64999)
    cfg = bgp.bird_config(
        net.world,
        "h2",
        {"web": bgp.Export.ANNOUNCE},
        router_id=net.edges["e2"].addr4,
        timers=net.timers,
        neighbors=(*net.neighbors(), lonely),
    )
    birdctl.apply_config(net.birds["e2"], bgp.render_bird(cfg))
    time.sleep(2.5)
    (RECORDED / "birdc-edge-protocols-down.txt").write_text(
        birdctl.birdc(net.birds["e2"], "show", "protocols", "all")
    )
