"""An upstream router and N edge hosts running real BIRD 2 in namespaces (test support).

All on one fabric bridge: the upstream is 192.0.2.1 / 2001:db8:ff::1, edge
``eN`` the next addresses; each edge has an IPv4 and an IPv6 session to the
upstream. Edge configs are rendered by :func:`providers.network.bgp.render_bird`
and changed only by :func:`providers.network.birdctl.apply_config`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from fleet import model
from providers.network import bgp, birdctl
from tests.network import fleets
from tests.network.netlab import NetLab, Node

UPSTREAM_ASN = 64500
EDGE_ASN = 65010
WEB4 = ipaddress.ip_network("198.51.100.10/32")
WEB6 = ipaddress.ip_network("2001:db8:100::10/128")
ANYCAST = {
    "web": model.AppAddresses(
        ipaddress.IPv4Address("198.51.100.10"), ipaddress.IPv6Address("2001:db8:100::10")
    ),
    "api": model.AppAddresses(
        ipaddress.IPv4Address("198.51.100.11"), ipaddress.IPv6Address("2001:db8:100::11")
    ),
}


def edge_world(edges: int) -> model.DesiredWorld:
    world = fleets.world(edges)
    return dataclasses.replace(world, anycast=MappingProxyType(ANYCAST))


@dataclass
class BgpLab:
    lab: NetLab
    work: Path
    upstream: Node
    upstream_bird: birdctl.Bird
    edges: dict[str, Node]
    world: model.DesiredWorld
    birds: dict[str, birdctl.Bird] = field(default_factory=dict)
    timers: bgp.BgpTimers = bgp.LAB_TIMERS

    @classmethod
    def build(cls, lab: NetLab, work: Path, edges: int = 2) -> BgpLab:
        upstream = lab.add_node("up")
        nodes = {f"e{i}": lab.add_node(f"e{i}") for i in range(1, edges + 1)}
        downstreams = []
        for name, node in nodes.items():
            downstreams.append(bgp.Downstream(f"{name}_v4", node.addr4, EDGE_ASN))
            downstreams.append(bgp.Downstream(f"{name}_v6", node.addr6, EDGE_ASN))
        text = bgp.render_upstream(
            router_id=upstream.addr4, asn=UPSTREAM_ASN, downstreams=downstreams
        )
        up_bird = birdctl.start(work / "bird-up", text, upstream.netns)
        lab.on_close(lambda: birdctl.stop(up_bird))
        net = cls(lab, work, upstream, up_bird, nodes, edge_world(edges))
        for name in nodes:
            net.birds[name] = net._start_edge(name)
        return net

    def neighbors(self) -> tuple[bgp.Neighbor, ...]:
        return (
            bgp.Neighbor("up_v4", self.upstream.addr4, UPSTREAM_ASN),
            bgp.Neighbor("up_v6", self.upstream.addr6, UPSTREAM_ASN),
        )

    def config(self, name: str, exports: dict[str, bgp.Export]) -> str:
        host = f"h{name[1:]}"
        cfg = bgp.bird_config(
            self.world,
            host,
            exports,
            router_id=self.edges[name].addr4,
            timers=self.timers,
            neighbors=self.neighbors(),
        )
        return bgp.render_bird(cfg)

    def _start_edge(self, name: str) -> birdctl.Bird:
        bird = birdctl.start(
            self.work / f"bird-{name}", self.config(name, {}), self.edges[name].netns
        )
        self.lab.on_close(lambda: birdctl.stop(bird))
        return bird

    def announce(self, name: str, exports: dict[str, bgp.Export]) -> bool:
        return birdctl.apply_config(self.birds[name], self.config(name, exports))

    def kernel_route(self, prefix: model.IPNetwork) -> str:
        family = "-4" if prefix.version == 4 else "-6"
        return self.upstream.run("ip", family, "route", "show", str(prefix))

    def upstream_next_hops(self, prefix: model.IPNetwork) -> int:
        """How many next hops the upstream's *kernel* has for ``prefix`` (ECMP = 2)."""
        text = self.kernel_route(prefix)
        if not text.strip():
            return 0
        hops = re.findall(r"nexthop via", text)
        return len(hops) if hops else 1
