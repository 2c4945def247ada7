"""A WireGuard mesh of namespace "hosts" driven the way the host agent will drive it.

Each host: a namespace on the fabric, a key generated in its own key
directory, an interface from :func:`providers.network.wgdriver.create_interface`
named ``fnt<pid><host>`` (unique machine-wide), its mesh address and the
fleet /48 route. :meth:`Mesh.sync` is one reconcile of one host: desired
peer set -> observe -> :func:`peer_ops` with the last applied set -> ``wg set``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from fleet import compile as fc
from fleet import model
from providers.network import addressing, wgdriver, wgkeys, wireguard
from tests.network import fleets
from tests.network.netlab import NetLab, Node

PORT = 51820


@dataclass
class Mesh:
    lab: NetLab
    work: Path
    world: model.DesiredWorld
    nodes: dict[str, Node] = field(default_factory=dict)
    ifaces: dict[str, wgdriver.WgInterface] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    applied: dict[str, dict[str, wireguard.Peer]] = field(default_factory=dict)
    ops_log: dict[str, list[wireguard.PeerOp]] = field(default_factory=dict)

    @classmethod
    def build(cls, lab: NetLab, work: Path, hosts: int) -> Mesh:
        mesh = cls(lab, work, fleets.world(hosts))
        for name in sorted(mesh.world.fleet.hosts):
            mesh.bring_up(name)
        return mesh

    def key_dir(self, host: str) -> Path:
        return self.work / "keys" / host

    def bring_up(self, host: str) -> None:
        node = self.lab.add_node(host)
        assert str(node.addr4) == self.world.fleet.hosts[host].ssh.address
        self.nodes[host] = node
        self.keys[host] = wgkeys.ensure_key(self.key_dir(host), "wg").value
        iface = wgdriver.create_interface(f"{self.lab.tag}{host}", node.netns)
        self.lab.on_close(lambda: wgdriver.destroy(iface))
        prefix = self.world.host_prefixes[host]
        wgdriver.configure(
            iface,
            private_key=wgkeys.key_path(self.key_dir(host), "wg"),
            listen_port=PORT,
            mesh_address=addressing.mesh_address(prefix),
            routes=[addressing.fleet_prefix(self.world)],
            unreachable=prefix,  # as the agent does: its own /64
        )
        self.ifaces[host] = iface
        self.applied[host] = {}
        self.ops_log[host] = []

    def grow(self, hosts: int) -> None:
        """The fleet gains hosts (prefixes of existing hosts are kept)."""
        self.world = fc.compile_world(
            fleets.world(hosts).fleet, previous_prefixes=dict(self.world.host_prefixes)
        )

    def desired(self) -> dict[str, wireguard.PeerSet]:
        known = {h: k for h, k in self.keys.items() if h in self.ifaces}
        return wireguard.peer_sets(self.world, known)

    def sync(self, host: str) -> tuple[wireguard.PeerOp, ...]:
        want = self.desired()[host]
        observed = wgdriver.observe(self.ifaces[host])
        ops = wireguard.peer_ops(want.peers, observed.peers, self.applied[host])
        wgdriver.apply_ops(self.ifaces[host], ops)
        self.applied[host] = dict(want.peers)
        self.ops_log[host].extend(ops)
        return ops

    def sync_all(self) -> dict[str, int]:
        return {host: len(self.sync(host)) for host in sorted(self.ifaces)}

    def mesh_address(self, host: str) -> ipaddress.IPv6Address:
        return addressing.mesh_address(self.world.host_prefixes[host])
