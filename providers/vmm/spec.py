"""What a machine needs, independent of the fleet's YAML model, and what it reports.

The host agent maps an App onto a :class:`MachineSpec`; everything below it
(images, guest init, hypervisors) sees only these frozen values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class NetMode(StrEnum):
    """How a machine is networked."""

    NONE = "none"  # no NIC at all
    USER = "user"  # QEMU user-mode net, restrict=on: no way out; --publish via hostfwd
    TAP = "tap"  # a tap device in the host's (or a given) namespace, addresses from the host


class VMMKind(StrEnum):
    """The hypervisor drivers."""

    QEMU = "qemu"
    FIRECRACKER = "firecracker"
    CLOUD_HYPERVISOR = "cloud-hypervisor"


class MachineState(StrEnum):
    """The run state of a machine as the host sees it."""

    CREATED = "created"
    STARTING = "starting"  # the VMM runs; the app has not been started yet
    RUNNING = "running"
    STOPPED = "stopped"  # stopped on request, or the app exited 0
    FAILED = "failed"  # the app exited non-zero or by a signal nobody asked for


@dataclass(frozen=True, slots=True)
class PortMapping:
    """``--publish HOSTPORT:GUESTPORT`` (TCP, bound to 127.0.0.1)."""

    host_port: int
    guest_port: int

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        host, sep, guest = text.partition(":")
        if not sep or not host.isdigit() or not guest.isdigit():
            raise ValueError(f"--publish wants HOSTPORT:GUESTPORT, not {text!r}")
        h, g = int(host), int(guest)
        if not (0 < h < 65536 and 0 < g < 65536):
            raise ValueError(f"port out of range in {text!r}")
        return cls(h, g)


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A machine's network: its addresses (CIDR) and the host side of its link.

    For ``TAP``: ``host_addresses`` go on the tap in the host's namespace (or
    ``netns``), ``addresses`` inside the guest, and the guest's default routes
    point at ``gateways`` (the host addresses when empty).
    For ``USER``: the guest gets 192.0.2.15/24 via 192.0.2.2 inside QEMU's
    private user-mode network unless ``addresses`` say otherwise.
    """

    mode: NetMode = NetMode.NONE
    addresses: tuple[str, ...] = ()
    host_addresses: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    publish: tuple[PortMapping, ...] = ()
    netns: str = ""
    mtu: int = 0


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """Everything needed to run one machine of an app."""

    name: str
    image: str
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    user: str | None = None
    workdir: str | None = None
    hostname: str = ""
    cpus: int = 1
    memory_mb: int = 256
    kill_signal: str = "SIGTERM"
    kill_timeout: float = 5.0
    network: NetworkSpec = field(default_factory=NetworkSpec)
    vmm: VMMKind = VMMKind.QEMU
    pci_devices: tuple[str, ...] = ()  # e.g. GPUs ("0000:65:00.0"); Cloud Hypervisor only


@dataclass(frozen=True, slots=True)
class MachineStatus:
    """What the host can say about a machine right now."""

    name: str
    state: MachineState
    pid: int = 0
    exit_code: int | None = None
    exit_signal: int | None = None
    stop_signal: int | None = None
    detail: str = ""
    image_digest: str = ""
    started_at: float | None = None  # wall clock of the last start (the edge's waker needs it)
