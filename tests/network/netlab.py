"""A tiny namespace lab for the network provider's integration tests.

Every name starts with ``fnt<pid>`` so parallel runs (and other engineers'
labs) never collide; :class:`NetLab` records everything it creates and its
``close()`` removes it in reverse order, killing only processes it started (by
PID). One "fabric" namespace holds a bridge; every node namespace hangs off
it by a veth pair. Addresses are documentation (192.0.2.0/24, 2001:db8::/32)
and ULA ranges only, and no namespace gets a default route.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FABRIC4 = ipaddress.IPv4Network("192.0.2.0/24")
FABRIC6 = ipaddress.IPv6Network("2001:db8:ff::/64")


def sh(*argv: str, netns: str | None = None, check: bool = True) -> str:
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    result = subprocess.run(full, capture_output=True, text=True, check=False, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(full)}: {result.returncode}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Node:
    name: str
    netns: str
    index: int
    addr4: ipaddress.IPv4Address
    addr6: ipaddress.IPv6Address

    def run(self, *argv: str, check: bool = True) -> str:
        return sh(*argv, netns=self.netns, check=check)


@dataclass
class NetLab:
    directory: Path
    tag: str = field(default_factory=lambda: f"fnt{os.getpid()}")
    nodes: dict[str, Node] = field(default_factory=dict)
    _undo: list[Callable[[], None]] = field(default_factory=list)
    _fabric: str | None = None

    def ns_name(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def _add_netns(self, netns: str) -> None:
        sh("ip", "netns", "add", netns)
        self._undo.append(lambda: sh("ip", "netns", "del", netns, check=False))
        sh("ip", "link", "set", "lo", "up", netns=netns)
        for key, value in (
            ("net.ipv6.conf.all.keep_addr_on_down", "1"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
        ):
            sh("sysctl", "-qw", f"{key}={value}", netns=netns)

    def fabric(self) -> str:
        if self._fabric is None:
            self._fabric = self.ns_name("fab")
            self._add_netns(self._fabric)
            sh("ip", "link", "add", "br0", "type", "bridge", netns=self._fabric)
            sh("ip", "link", "set", "br0", "up", netns=self._fabric)
        return self._fabric

    def add_node(self, name: str) -> Node:
        fabric = self.fabric()
        index = len(self.nodes) + 1
        netns = self.ns_name(name)
        self._add_netns(netns)
        node = Node(name, netns, index, FABRIC4[index], FABRIC6[index])
        outer = f"{self.tag}{name}"[:15]
        sh(
            "ip",
            "link",
            "add",
            outer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns,
            netns=fabric,
        )
        sh("ip", "link", "set", outer, "master", "br0", "up", netns=fabric)
        node.run("ip", "addr", "add", f"{node.addr4}/24", "dev", "eth0")
        node.run("ip", "-6", "addr", "add", f"{node.addr6}/64", "dev", "eth0", "nodad")
        node.run("ip", "link", "set", "eth0", "up")
        self.nodes[name] = node
        return node

    def add_machine(
        self, host: Node, name: str, address: ipaddress.IPv6Address, fleet: ipaddress.IPv6Network
    ) -> Node:
        """A namespace standing for a microVM on ``host``: one veth, one /128, a /48 route."""
        netns = self.ns_name(name)
        self._add_netns(netns)
        outer = f"{self.tag}{name}"[:15]
        sh(
            "ip",
            "link",
            "add",
            outer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns,
            netns=host.netns,
        )
        host.run("ip", "-6", "addr", "add", "fe80::1/64", "dev", outer, "nodad")
        host.run("ip", "link", "set", outer, "up")
        host.run("ip", "-6", "route", "replace", f"{address}/128", "dev", outer)
        host.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        machine = Node(name, netns, 0, ipaddress.IPv4Address(0), address)
        machine.run("ip", "-6", "addr", "add", f"{address}/128", "dev", "eth0", "nodad")
        machine.run("ip", "link", "set", "eth0", "up")
        machine.run("ip", "-6", "route", "add", str(fleet), "via", "fe80::1", "dev", "eth0")
        return machine

    def start(self, node: Node, argv: Sequence[str], log: str) -> subprocess.Popen[bytes]:
        """A long-running process in ``node``'s namespace, stopped (by its PID) at close."""
        out = open(self.directory / log, "ab")  # noqa: SIM115
        process = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()

        def stop() -> None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)

        self._undo.append(stop)
        return process

    def on_close(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def close(self) -> None:
        while self._undo:
            undo = self._undo.pop()
            with contextlib.suppress(Exception):
                undo()


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Seconds until ``predicate()`` held; AssertionError after ``timeout``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)
