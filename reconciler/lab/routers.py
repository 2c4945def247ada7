"""The lab's routers: BIRD in each region's upstream namespace and in the client namespace.

Each region's upstream router peers by BGP with the region's hosts over the
region fabric (their BIRD, run by their agents, announces the anycast
addresses they serve) and puts what it learns into its kernel with ECMP, so
``ip route`` in ``upstream-REGION`` shows one next hop per serving host. It
passes the same routes on to the client namespace, whose BIRD peers with
every upstream and keeps one best route per prefix: the first region's
(preference by region order), unless that region withdrew or tagged it
graceful-shutdown, and then the next region's. So a withdrawal in one region
really fails over to the other, with no default route anywhere.

Every BIRD here runs in its namespace *and* a private mount namespace whose
``/run/bird`` is the router's own directory, so plain ``birdc show route``
works through ``reconcile lab exec upstream-ams -- birdc show route``. The
hosts route replies to the client links back through their region's upstream.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from fleet.errors import LabError
from providers.network import bgp
from reconciler.lab.topology import CLIENT_LINKS, CLIENT_NS, Topology

CLIENT_ASN = 64999
CLIENT_LINKS6 = ipaddress.IPv6Network("fd00:c1::/32")
RUN_DIR = Path("/run/bird")
START_TIMEOUT_S = 10.0


def upstream_config(topo: Topology, region: str) -> str:
    r = topo.region(region)
    edges = [
        bgp.Downstream(bgp.symbol(h.name, "h"), h.fabric4.ip, r.edge_asn)
        for h in topo.hosts
        if h.region == region
    ]
    client = bgp.Downstream("to_client", r.peer_client4.ip, CLIENT_ASN)
    return bgp.render_upstream(
        router_id=r.fabric4.ip, asn=r.asn, downstreams=edges, clients=[client]
    )


def client_config(topo: Topology) -> str:
    ups = [
        bgp.Preferred(bgp.Downstream(bgp.symbol(r.name), r.client4.ip, r.asn), 200 - 10 * r.index)
        for r in topo.regions
    ]
    first = topo.regions[0].peer_client4.ip
    return bgp.render_client(
        router_id=first, asn=CLIENT_ASN, upstreams=ups, pools=topo.anycast_pools
    )


def routes_back(topo: Topology) -> list[list[str]]:
    """Per host: the client links are reached through the region's upstream (``ip`` argv)."""
    out = []
    for h in topo.hosts:
        r = topo.region(h.region)
        out.append(["ip", "netns", "exec", h.netns, "ip", "route", "replace",
                    str(CLIENT_LINKS), "via", str(r.fabric4.ip)])  # fmt: skip
        out.append(["ip", "netns", "exec", h.netns, "ip", "-6", "route", "replace",
                    str(CLIENT_LINKS6), "via", str(r.fabric6.ip)])  # fmt: skip
    return out


def _start(netns: str, directory: Path, config: str) -> int:
    """BIRD in ``netns`` with ``directory`` as its ``/run/bird``; returns its PID."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "bird.conf"
    conf.write_text(config)
    check = subprocess.run(
        ["bird", "-p", "-c", str(conf)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise LabError(f"BIRD refused the lab's {conf}: {check.stderr.strip()}")
    script = (
        f"mount --bind {directory} {RUN_DIR} && "
        f"exec bird -f -c {conf} -s {RUN_DIR}/bird.ctl -P {RUN_DIR}/bird.pid"
    )
    with (directory / "bird.log").open("ab") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
             "/bin/sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"BIRD in {netns} exited with {proc.returncode}; see {directory}")
        if (directory / "bird.ctl").exists():
            return proc.pid
        time.sleep(0.05)
    raise LabError(f"BIRD in {netns} did not start in {START_TIMEOUT_S:.0f} s")


def start(topo: Topology, root: Path, mountpoint: Callable[[Path], None]) -> dict[str, int]:
    """Start every router's BIRD; ``{"upstream-REGION" | "client": pid}``.

    ``mountpoint`` makes ``/run/bird`` exist on the machine (remembering it, so
    ``lab down`` removes it again).
    """
    mountpoint(RUN_DIR)
    pids = {}
    for r in topo.regions:
        node = f"upstream-{r.name}"
        pids[node] = _start(r.netns, root / "routers" / node, upstream_config(topo, r.name))
    pids["client"] = _start(CLIENT_NS, root / "routers" / "client", client_config(topo))
    for argv in routes_back(topo):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LabError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return pids
