"""The one hypervisor interface every driver implements, and what a driver boots.

A driver gets a :class:`BootConfig` (kernel, initrd, read-only root image,
size, network) and owns the files it writes into the machine's directory. The
guest protocol is the same for every driver: the init reports on the serial
console (:mod:`providers.vmm.console`) and takes ``FLEET-STOP`` lines on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from providers.vmm.spec import MachineStatus, NetworkSpec, VMMKind

CONSOLE_LOG = "console.log"
PID_FILE = "vmm.pid"


@dataclass(frozen=True, slots=True)
class BootConfig:
    """What a driver boots: driver-neutral, derived from a MachineSpec by the manager."""

    name: str
    dir: Path
    kernel: Path
    initrd: Path
    cmdline: str
    rootfs: Path  # the read-only base image shared by every machine of the image
    cpus: int
    memory_mb: int
    network: NetworkSpec
    tap: str = ""
    mac: str = ""
    nonce: str = ""
    pci_devices: tuple[str, ...] = ()  # PCI addresses to pass through (VFIO)

    @property
    def console_log(self) -> Path:
        return self.dir / CONSOLE_LOG


class Hypervisor(Protocol):
    """prepare -> start -> (status)* -> stop -> destroy; console_log at any time."""

    kind: VMMKind
    guest_halt: str  # how the guest init ends the VM: "reboot" or "poweroff"

    def available(self) -> str:
        """'' when this host can run the driver, else why not."""
        ...

    def prepare(self, boot: BootConfig) -> None:
        """Write the machine's files (its writable layer, configs); boots nothing."""
        ...

    def start(self, boot: BootConfig) -> int:
        """Start the VMM in the background; returns its PID."""
        ...

    def stop(self, boot: BootConfig, signal: int, timeout: float) -> None:
        """Ask the guest init to send ``signal`` to the app, SIGKILL it after ``timeout``,
        and wait for the VM to end (killing the VMM if the guest does not finish)."""
        ...

    def running(self, boot: BootConfig) -> bool: ...

    def status(self, boot: BootConfig) -> MachineStatus: ...

    def destroy(self, boot: BootConfig) -> None:
        """Kill the VMM if it still runs and remove the machine's writable layer."""
        ...

    def console_log(self, boot: BootConfig) -> str: ...


def read_pid(boot: BootConfig) -> int:
    try:
        return int((boot.dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return 0


def pid_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs (not a zombie) and its command line mentions ``marker``.

    The marker (the machine's directory) guards against a recycled PID.
    """
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        return False
    return marker.encode() in cmdline


def wait_stopped(running: Callable[[], bool], timeout: float) -> bool:
    """Poll ``running`` until it is False; True if that happened within ``timeout``."""
    deadline = time.monotonic() + timeout
    while running():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, marker: str = "") -> None:
    """SIGTERM, then SIGKILL, a VMM process; each given 2 s to go (zombies count as gone)."""
    if pid <= 0:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        for _ in range(40):
            if not pid_alive(pid, marker):
                return
            time.sleep(0.05)
