"""The WireGuard I/O shell: create the interface, address and route it, apply peer ops.

Kernel WireGuard where the kernel has it (``ip link add NAME type
wireguard``), else userspace ``wireguard-go -f NAME`` (foreground, so its PID
is ours to supervise and stop); decided by trying, once per interface.
wireguard-go's control socket lives in ``/var/run/wireguard/NAME.sock``,
shared by all namespaces: names must be unique on the machine (see
:func:`providers.network.addressing.interface_name`), and every ``wg``
command here names its interface.

Peers only ever change through :func:`apply_ops` (``wg set IFACE peer ...``,
one peer per call); nothing here restarts an interface that exists.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from fleet.errors import ProviderError
from providers.network import netexec, wireguard

log = logging.getLogger(__name__)

SOCKET_DIR = Path("/var/run/wireguard")
START_TIMEOUT_S = 5.0


class Backend(StrEnum):
    KERNEL = "kernel"
    USERSPACE = "wireguard-go"


@dataclass(frozen=True, slots=True)
class WgInterface:
    """A WireGuard interface this process created (or adopted)."""

    name: str
    netns: str | None
    backend: Backend
    process: subprocess.Popen[bytes] | None = field(default=None, compare=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def _link_exists(name: str, netns: str | None) -> bool:
    return (
        netexec.run(["ip", "link", "show", "dev", name], netns=netns, check=False).returncode == 0
    )


def create_interface(
    name: str, netns: str | None = None, *, log_file: Path | None = None, detach: bool = False
) -> WgInterface:
    """Create ``name`` in ``netns``: kernel module if it works, else wireguard-go.

    ``detach`` runs wireguard-go in its own session, so it outlives the short
    process that created it (the host agent's ``apply``); its PID stays in
    the returned interface for whoever wants to record it.
    """
    if _link_exists(name, netns):
        raise ProviderError(f"interface {name} already exists")
    kernel = netexec.run(
        ["ip", "link", "add", "dev", name, "type", "wireguard"], netns=netns, check=False
    )
    if kernel.returncode == 0:
        log.info("created %s with the kernel module", name)
        return WgInterface(name, netns, Backend.KERNEL)
    if (SOCKET_DIR / f"{name}.sock").exists():
        raise ProviderError(
            f"{SOCKET_DIR / name}.sock exists: another namespace already has an interface {name}"
        )
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(
            netexec.in_netns(["wireguard-go", "-f", name], netns),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LOG_LEVEL": "error"},
            start_new_session=detach,
        )
    except OSError as exc:
        raise ProviderError(f"wireguard-go: {exc}") from exc
    finally:
        if log_file:
            out.close()  # type: ignore[union-attr]
    iface = WgInterface(name, netns, Backend.USERSPACE, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ProviderError(f"wireguard-go {name} exited with {process.returncode}")
        if (SOCKET_DIR / f"{name}.sock").exists() and _link_exists(name, netns):
            log.info("created %s with wireguard-go (pid %d)", name, process.pid)
            return iface
        time.sleep(0.02)
    destroy(iface)
    raise ProviderError(f"wireguard-go {name} did not come up in {START_TIMEOUT_S:.0f} s")


def configure(
    iface: WgInterface,
    *,
    private_key: Path,
    listen_port: int,
    mesh_address: ipaddress.IPv6Address,
    routes: Iterable[ipaddress.IPv6Network],
    source: ipaddress.IPv6Address | None = None,
    unreachable: ipaddress.IPv6Network | None = None,
) -> None:
    """Key and port, the mesh address (/128, no DAD), link up, routes into the interface.

    Idempotent: addresses and routes are ``replace``d. The routes are normally
    the fleet's /48 alone (see :mod:`providers.network.addressing`); ``source``
    (normally the mesh address) is the source the host's own packets take.

    ``unreachable`` (normally the host's own /64) is routed so. Each
    running machine has its /128 to its tap, which goes with the tap when the
    machine stops; without this, its address would fall to the /48, into the
    interface, where no peer takes it, and every connect to a stopped machine
    (a proxy's, a health check's, from this host or over the mesh) would wait
    for its timeout. Now it fails at once: "no route" here, an ICMPv6
    unreachable to the hosts that sent it over the mesh.
    """
    ns = iface.netns
    netexec.run(
        ["wg", "set", iface.name, "listen-port", str(listen_port), "private-key", str(private_key)],
        netns=ns,
    )
    netexec.run(
        ["ip", "-6", "addr", "replace", f"{mesh_address}/128", "dev", iface.name, "nodad"],
        netns=ns,
    )
    netexec.run(["ip", "link", "set", "dev", iface.name, "up"], netns=ns)
    src = ["src", str(source)] if source is not None else []
    for route in routes:
        netexec.run(["ip", "-6", "route", "replace", str(route), "dev", iface.name, *src], netns=ns)
    if unreachable is not None:
        route_unreachable(unreachable, ns)


def route_unreachable(prefix: ipaddress.IPv6Network, netns: str | None = None) -> None:
    """Route ``prefix`` ``unreachable`` (see :func:`configure`); idempotent."""
    netexec.run(["ip", "-6", "route", "replace", "unreachable", str(prefix)], netns=netns)


def drop_unreachable(prefix: ipaddress.IPv6Network, netns: str | None = None) -> None:
    """Take away :func:`route_unreachable`'s route (the host leaves the mesh)."""
    netexec.run(["ip", "-6", "route", "del", "unreachable", str(prefix)], netns=netns, check=False)


def observe_command(iface: WgInterface) -> list[str]:
    return ["wg", "show", iface.name, "dump"]


def observe(iface: WgInterface) -> wireguard.ObservedInterface:
    """The interface as ``wg show IFACE dump`` reports it (private key dropped by the parser)."""
    out = netexec.run(observe_command(iface), netns=iface.netns).stdout
    return wireguard.parse_dump(out, iface.name)


def apply_ops(iface: WgInterface, ops: Iterable[wireguard.PeerOp]) -> int:
    """Run each op as its own ``wg set``; returns how many ran."""
    count = 0
    for op in ops:
        log.info(
            "%s: %s peer %s (%s): %s", iface.name, op.kind, op.public_key[:8], op.host, op.reason
        )
        netexec.run(["wg", "set", iface.name, *op.wg_args()], netns=iface.netns)
        count += 1
    return count


def switch_private_key(iface: WgInterface, private_key: Path) -> None:
    """Rotation stage 2: the interface takes a new private key (peers and port stay)."""
    netexec.run(["wg", "set", iface.name, "private-key", str(private_key)], netns=iface.netns)


def destroy(iface: WgInterface) -> None:
    """Remove the interface; for wireguard-go, stop exactly the process we started."""
    if iface.backend is Backend.KERNEL:
        netexec.run(["ip", "link", "del", "dev", iface.name], netns=iface.netns, check=False)
        return
    process = iface.process
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    with contextlib.suppress(FileNotFoundError):
        (SOCKET_DIR / f"{iface.name}.sock").unlink()
