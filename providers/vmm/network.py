"""The host side of a machine's network: a tap device per machine, addressed by the host.

The tap lives in the host's namespace (or the namespace a spec names, as the
lab and the tests do) and carries the host-side addresses the reconciler
allocated, so a process in that namespace reaches the guest's ports directly.
Routing beyond the link (WireGuard, proxy, BGP) is configured by other work;
nothing here routes, bridges or NATs to the machine's real interfaces.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess

from fleet.errors import VMMError
from providers.vmm.spec import NetworkSpec

log = logging.getLogger(__name__)


def tap_name(machine: str) -> str:
    """A stable interface name (at most 15 bytes) for a machine's tap."""
    return "fl" + hashlib.sha256(machine.encode()).hexdigest()[:11]


def mac_address(machine: str) -> str:
    """A stable, locally administered unicast MAC for a machine."""
    h = hashlib.sha256(b"mac:" + machine.encode()).digest()
    return "02:fc:" + ":".join(f"{b:02x}" for b in h[:4])


def gateways(net: NetworkSpec) -> tuple[str, ...]:
    """The guest's default gateways: as given, else the host-side addresses."""
    if net.gateways:
        return net.gateways
    return tuple(a.split("/", 1)[0] for a in net.host_addresses)


def _ip(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def create_tap(name: str, net: NetworkSpec) -> None:
    """Create tap ``name`` with the host-side addresses; replaces a stale one."""
    if _ip(net.netns, "link", "show", name).returncode == 0:
        _ip(net.netns, "link", "del", name)
    steps: list[tuple[str, ...]] = [("tuntap", "add", "dev", name, "mode", "tap")]
    for addr in net.host_addresses:
        extra = ("nodad",) if ":" in addr else ()
        steps.append(("addr", "add", addr, "dev", name, *extra))
    if net.mtu:
        steps.append(("link", "set", name, "mtu", str(net.mtu)))
    steps.append(("link", "set", name, "up"))
    for step in steps:
        proc = _ip(net.netns, *step)
        if proc.returncode != 0:
            _ip(net.netns, "link", "del", name)
            where = f" in namespace {net.netns}" if net.netns else ""
            raise VMMError(f"tap {name}{where}: ip {' '.join(step)}: {proc.stderr.strip()}")
    log.debug("tap %s up with %s", name, ", ".join(net.host_addresses))


def delete_tap(name: str, net: NetworkSpec) -> None:
    """Remove the tap if it exists."""
    _ip(net.netns, "link", "del", name)
