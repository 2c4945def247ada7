"""The WireGuard mesh for real: wireguard-go in namespaces, driven only by peer diffs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from providers.network import addressing, rotation, wgdriver, wgkeys, wireguard
from tests.network import streams
from tests.network.meshlab import Mesh
from tests.network.netlab import NetLab

pytestmark = [pytest.mark.root, pytest.mark.slow]


def ping(mesh: Mesh, src: str, dst: str) -> None:
    mesh.nodes[src].run("ping", "-6", "-c1", "-W2", str(mesh.mesh_address(dst)))


def test_machines_on_two_hosts_reach_each_other_over_the_mesh(
    netlab: NetLab, tmp_path: Path
) -> None:
    mesh = Mesh.build(netlab, tmp_path, hosts=2)
    assert mesh.sync_all() == {"h1": 1, "h2": 1}
    fleet48 = addressing.fleet_prefix(mesh.world)
    machines = {}
    for host in ("h1", "h2"):
        address = addressing.machine_address(mesh.world.host_prefixes[host], f"web/ams#{host}")
        machines[host] = netlab.add_machine(mesh.nodes[host], f"m{host}", address, fleet48)
    before = wgdriver.observe(mesh.ifaces["h1"]).peers[mesh.keys["h2"]].tx_bytes
    out = machines["h1"].run("ping", "-6", "-c2", "-W2", str(machines["h2"].addr6))
    assert "2 received" in out
    after = wgdriver.observe(mesh.ifaces["h1"]).peers[mesh.keys["h2"]].tx_bytes
    assert after > before  # it went through the tunnel (the fabric has no route to the /48)
    assert "fdf1" not in mesh.nodes["h1"].run("ip", "-6", "route", "show", "dev", "eth0")
    # Every host's observed peers are exactly the fleet's other hosts.
    for host in ("h1", "h2"):
        observed = wgdriver.observe(mesh.ifaces[host])
        assert set(observed.peers) == {mesh.keys[h] for h in mesh.keys if h != host}
        assert observed.public_key == mesh.keys[host]
    # Nothing to do on a second pass.
    assert mesh.sync_all() == {"h1": 0, "h2": 0}


def test_an_address_of_the_host_that_no_machine_holds_is_refused_at_once(
    netlab: NetLab, tmp_path: Path
) -> None:
    # A stopped machine's tap (and its /128) is gone: without the `unreachable`
    # route for the host's /64, its address falls to the /48, into the mesh, where
    # no peer takes it, and a proxy's connect to it waits for its timeout.
    mesh = Mesh.build(netlab, tmp_path, hosts=2)
    mesh.sync_all()
    fleet48 = addressing.fleet_prefix(mesh.world)
    prefix = mesh.world.host_prefixes["h1"]
    running = addressing.machine_address(prefix, "web/ams#1")
    netlab.add_machine(mesh.nodes["h1"], "m1", running, fleet48)
    stopped = addressing.machine_address(prefix, "web/ams#2")

    def connect(node: str, address: object) -> tuple[int, float]:
        """curl's exit status (7: refused/unreachable, 28: timed out) and how long it took."""
        began = time.monotonic()
        curl = ["curl", "-s", "-m", "3", f"http://[{address}]:8080/"]
        ns = mesh.nodes[node].netns
        done = subprocess.run(["ip", "netns", "exec", ns, *curl], capture_output=True, check=False)
        return done.returncode, time.monotonic() - began

    for node in ("h1", "h2"):  # on the machine's host, and over the mesh
        status, took = connect(node, stopped)
        assert status == 7 and took < 1.5, (node, status, took)
    ping(mesh, "h2", "h1")  # the host itself is still reached...
    out = mesh.nodes["h2"].run("ping", "-6", "-c1", "-W2", str(running))
    assert "1 received" in out  # ...and so is a running machine (its /128 wins)
    # Without the route, the same connect times out: what this route is for.
    mesh.nodes["h1"].run("ip", "-6", "route", "del", "unreachable", str(prefix))
    status, took = connect("h2", stopped)
    assert status == 28 and took >= 2.5, (status, took)


def test_adding_a_host_is_one_peer_op_per_host_and_does_not_interrupt_a_stream(
    netlab: NetLab, tmp_path: Path
) -> None:
    mesh = Mesh.build(netlab, tmp_path, hosts=2)
    mesh.sync_all()
    ping(mesh, "h1", "h2")
    stream = streams.start(netlab, mesh.nodes["h2"], mesh.nodes["h1"], mesh.mesh_address("h2"))
    time.sleep(1.0)
    mesh.grow(3)
    mesh.bring_up("h3")
    ops = {host: mesh.sync(host) for host in ("h1", "h2", "h3")}
    assert [(op.kind, op.host) for op in ops["h1"]] == [(wireguard.OpKind.ADD, "h3")]
    assert [(op.kind, op.host) for op in ops["h2"]] == [(wireguard.OpKind.ADD, "h3")]
    assert sorted(op.host for op in ops["h3"]) == ["h1", "h2"]
    ping(mesh, "h1", "h3")
    ping(mesh, "h3", "h2")
    streams.assert_uninterrupted(stream.result(), min_share=0.5)


def test_a_roamed_endpoint_survives_a_sync_and_a_fleet_change_overrides_it(
    netlab: NetLab, tmp_path: Path
) -> None:
    mesh = Mesh.build(netlab, tmp_path, hosts=2)
    mesh.sync_all()
    h1, h2 = mesh.nodes["h1"], mesh.nodes["h2"]
    # h2 starts talking to h1 from its IPv6 address (as after a NAT rebinding or a move).
    wgdriver.apply_ops(
        mesh.ifaces["h2"],
        [
            wireguard.PeerOp(
                wireguard.OpKind.UPDATE, "h1", mesh.keys["h1"], endpoint=f"[{h1.addr6}]:51820"
            )
        ],
    )
    ping(mesh, "h2", "h1")
    roamed = f"[{h2.addr6}]:51820"
    assert wgdriver.observe(mesh.ifaces["h1"]).peers[mesh.keys["h2"]].endpoint == roamed
    assert mesh.sync("h1") == ()  # the learned endpoint is kept
    assert wgdriver.observe(mesh.ifaces["h1"]).peers[mesh.keys["h2"]].endpoint == roamed
    ping(mesh, "h1", "h2")


def test_key_rotation_drops_no_tcp_connection(netlab: NetLab, tmp_path: Path) -> None:
    mesh = Mesh.build(netlab, tmp_path, hosts=3)
    mesh.sync_all()
    ping(mesh, "h1", "h2")
    ping(mesh, "h3", "h2")
    stream = streams.start(netlab, mesh.nodes["h2"], mesh.nodes["h1"], mesh.mesh_address("h2"))
    time.sleep(1.0)
    # Stage 0: the rotating host makes its next key, on the host; we learn its public half.
    new_key = wgkeys.ensure_key(mesh.key_dir("h2"), "wg", staged=True).value
    current = mesh.desired()["h1"].peers[mesh.keys["h2"]]
    stages = rotation.rotation_stages(current, new_key, mesh.ifaces)
    for stage in stages:
        for step in stage.steps:
            iface = mesh.ifaces[step.host]
            if step.kind is rotation.StepKind.SWITCH_KEY:
                staged = wgkeys.key_path(mesh.key_dir(step.host), "wg", staged=True)
                wgdriver.switch_private_key(iface, staged)
                wgkeys.promote_next(mesh.key_dir(step.host), "wg")
            else:
                assert step.op is not None
                wgdriver.apply_ops(iface, [step.op])
        if stage.name == "introduce":
            time.sleep(0.5)  # the old key keeps carrying traffic meanwhile
    mesh.keys["h2"] = new_key
    for host in ("h1", "h3"):
        mesh.applied[host] = dict(mesh.desired()[host].peers)
    result = stream.result()
    streams.assert_uninterrupted(result, min_share=0.0)
    assert min(streams.intervals(result)) > 0
    # Converged: the old key is gone everywhere and a reconcile has nothing to do.
    assert wgdriver.observe(mesh.ifaces["h2"]).public_key == new_key
    for host in ("h1", "h3"):
        assert set(wgdriver.observe(mesh.ifaces[host]).peers) == {
            mesh.keys[h] for h in mesh.keys if h != host
        }
    assert mesh.sync_all() == {"h1": 0, "h2": 0, "h3": 0}
    ping(mesh, "h3", "h2")
