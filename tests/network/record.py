"""Re-record the real command outputs the parser golden tests read (run as root).

``python -m tests.network.record [wg] [bird]`` builds throwaway namespaces, runs real
wireguard-go and BIRD 2 in them, and writes what ``wg show IFACE dump`` and
``birdc show protocols all`` / ``show route all`` printed into
``tests/network/recorded/``. The keys in the WireGuard dumps are throwaway
keys of interfaces that no longer exist.
"""

from __future__ import annotations

import ipaddress
import sys
import tempfile
from pathlib import Path

from providers.network import addressing, wgdriver, wgkeys, wireguard
from tests.network.netlab import NetLab, sh, wait_for

RECORDED = Path(__file__).with_name("recorded")
FLEET = ipaddress.IPv6Network("fdf1:ee70::/48")


def record_wireguard(lab: NetLab, work: Path) -> None:
    a = lab.add_node("wa")
    b = lab.add_node("wb")
    prefixes = {
        "wa": ipaddress.IPv6Network("fdf1:ee70:0:a::/64"),
        "wb": ipaddress.IPv6Network("fdf1:ee70:0:b::/64"),
    }
    ifaces = {}
    keys = {}
    for node in (a, b):
        keys[node.name] = wgkeys.ensure_key(work / node.name, "wg")
        iface = wgdriver.create_interface(f"{lab.tag}{node.name}", node.netns)
        lab.on_close(lambda i=iface: wgdriver.destroy(i))
        wgdriver.configure(
            iface,
            private_key=wgkeys.key_path(work / node.name, "wg"),
            listen_port=51820,
            mesh_address=addressing.mesh_address(prefixes[node.name]),
            routes=[FLEET],
        )
        ifaces[node.name] = iface
    dump = ["wg", "show", ifaces["wa"].name, "dump"]
    (RECORDED / "wg-dump-empty.txt").write_text(sh(*dump, netns=a.netns))

    def peer(of: str, endpoint: str) -> wireguard.PeerOp:
        return wireguard.PeerOp(
            wireguard.OpKind.ADD,
            of,
            str(keys[of]),
            endpoint=endpoint,
            allowed_ips=(str(prefixes[of]),),
            keepalive=25,
        )

    wgdriver.apply_ops(ifaces["wa"], [peer("wb", f"{b.addr4}:51820")])
    wgdriver.apply_ops(ifaces["wb"], [peer("wa", f"{a.addr4}:51820")])
    stranger = wgkeys.ensure_key(work / "stranger", "wg")
    wgdriver.apply_ops(
        ifaces["wa"],
        [wireguard.PeerOp(wireguard.OpKind.ADD, "x", str(stranger), allowed_ips=(), keepalive=0)],
    )
    a.run("ping", "-c1", "-W2", str(addressing.mesh_address(prefixes["wb"])))
    (RECORDED / "wg-dump-peers.txt").write_text(sh(*dump, netns=a.netns))
    # A roam: b now reaches a from its IPv6 fabric address; a learns that endpoint.
    wgdriver.apply_ops(
        ifaces["wb"],
        [
            wireguard.PeerOp(
                wireguard.OpKind.UPDATE, "wa", str(keys["wa"]), endpoint=f"[{a.addr6}]:51820"
            )
        ],
    )
    b.run("ping", "-c1", "-W2", str(addressing.mesh_address(prefixes["wa"])))
    wait_for(lambda: str(b.addr6) in sh(*dump, netns=a.netns), timeout=5)
    (RECORDED / "wg-dump-roamed.txt").write_text(sh(*dump, netns=a.netns))


def main() -> int:
    RECORDED.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fnt-record-") as tmp:
        lab = NetLab(Path(tmp))
        try:
            what = sys.argv[1:] or ["wg", "bird"]
            if "wg" in what:
                record_wireguard(lab, Path(tmp))
            if "bird" in what:
                from tests.network import record_bird

                record_bird.record(lab, Path(tmp))
        finally:
            lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
