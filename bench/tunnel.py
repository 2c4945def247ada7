"""Benchmark: TCP throughput through one wireguard-go tunnel beside a plain veth (run as root).

Two namespace hosts on a bridge; iperf3 (3 s, one stream) first over the
plain fabric addresses, then over the mesh addresses through wireguard-go.
Prints both and the ratio. Userspace WireGuard is expected to be far slower
(LAB-NOTES: ~0.7-0.9 Gbit/s vs ~40 Gbit/s); this figure is the baseline for
the kernel module on hosts that have it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from tests.network.meshlab import Mesh
from tests.network.netlab import NetLab, Node, wait_for


def iperf(
    lab: NetLab, server: Node, client: Node, address: str, *, seconds: int, port: int
) -> float:
    lab.start(server, ["iperf3", "-s", "-1", "-B", address, "-p", str(port)], f"iperf-{port}.log")
    wait_for(
        lambda: f":{port:04X}" in server.run("cat", "/proc/net/tcp6", "/proc/net/tcp"), timeout=5
    )
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            client.netns,
            "iperf3",
            "-c",
            address,
            "-p",
            str(port),
            "-t",
            str(seconds),
            "-J",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fnt-bench-") as tmp:
        lab = NetLab(Path(tmp))
        try:
            mesh = Mesh.build(lab, Path(tmp), hosts=2)
            mesh.sync_all()
            h1, h2 = mesh.nodes["h1"], mesh.nodes["h2"]
            veth = iperf(lab, h2, h1, str(h2.addr6), seconds=args.seconds, port=5301)
            wg = iperf(lab, h2, h1, str(mesh.mesh_address("h2")), seconds=args.seconds, port=5302)
        finally:
            lab.close()
    print(f"plain veth:          {veth / 1e9:7.2f} Gbit/s")
    print(f"wireguard-go tunnel: {wg / 1e9:7.2f} Gbit/s")
    print(f"ratio tunnel/veth:   {wg / veth:7.3f}")


if __name__ == "__main__":
    main()
