"""The Cloud Hypervisor driver: its REST API (``/api/v1``), for machines that need VFIO.

Written against Cloud Hypervisor's published OpenAPI: ``PUT /api/v1/vm.create``
with a VmConfig (cpus, memory, payload, disks, net, serial, devices), then
``PUT /api/v1/vm.boot``; ``PUT /api/v1/vmm.shutdown`` ends the process. The
guest's serial console is the process's stdin/stdout (``serial: Tty``). Cloud
Hypervisor restarts a rebooting guest, so the init powers off instead.

GPUs: a passed-through device brings its whole IOMMU group (every device of
the group, bridges excepted, must go to the same VM and be bound to
``vfio-pci``). No memory overcommit: guest memory is prefaulted (VFIO pins it
anyway) and a machine that does not fit in the host's available memory is
refused before anything starts. This machine kind cannot boot it (no KVM, not
packaged): tests check the requests against a real HTTP server on a unix socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import VMMError
from providers.vmm import apivmm, base, console, unixhttp
from providers.vmm.spec import NetMode, VMMKind

PCI_BRIDGE_CLASS = 0x0604


@dataclass(frozen=True, slots=True)
class CloudHypervisorConfig:
    binary: str = "cloud-hypervisor"
    sysfs: Path = Path("/sys")
    meminfo: Path = Path("/proc/meminfo")
    memory_reserve_mb: int = 512  # kept free for the host


def iommu_group_devices(address: str, sysfs: Path = Path("/sys")) -> list[str]:
    """Every device of ``address``'s IOMMU group that must be passed through with it."""
    dev = sysfs / "bus" / "pci" / "devices" / address
    group = dev / "iommu_group" / "devices"
    if not group.is_dir():
        raise VMMError(f"PCI device {address} has no IOMMU group (is the IOMMU enabled?)")
    members = []
    for member in sorted(p.name for p in group.iterdir()):
        pci_class = int((sysfs / "bus/pci/devices" / member / "class").read_text().strip(), 16)
        if pci_class >> 8 == PCI_BRIDGE_CLASS:
            continue
        driver = sysfs / "bus/pci/devices" / member / "driver"
        bound = os.path.basename(os.readlink(driver)) if driver.is_symlink() else ""
        if bound != "vfio-pci":
            raise VMMError(
                f"PCI device {member} (IOMMU group of {address}) is bound to "
                f"{bound or 'no driver'}, not vfio-pci: the whole group must be"
            )
        members.append(member)
    return members


def mem_available_mb(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def vm_config(boot: base.BootConfig, disk: str, devices: list[str], sysfs: Path) -> dict[str, Any]:
    """The VmConfig for ``vm.create`` (pure)."""
    if boot.network.mode is NetMode.USER:
        raise VMMError(f"machine {boot.name}: Cloud Hypervisor has no user-mode network; use tap")
    config: dict[str, Any] = {
        "cpus": {"boot_vcpus": boot.cpus, "max_vcpus": boot.cpus},
        "memory": {"size": boot.memory_mb << 20, "shared": False, "hugepages": False,
                   "prefault": True, "mergeable": False},
        "payload": {"kernel": str(boot.kernel), "initramfs": str(boot.initrd),
                    "cmdline": boot.cmdline},
        "disks": [{"path": disk, "readonly": False}],
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
    }  # fmt: skip
    if boot.network.mode is NetMode.TAP:
        config["net"] = [{"tap": boot.tap, "mac": boot.mac}]
    if devices:
        config["devices"] = [
            {"id": f"vfio{i}", "path": f"{sysfs}/bus/pci/devices/{d}/"}
            for i, d in enumerate(devices)
        ]
    return config


class CloudHypervisorDriver(apivmm.ApiVMM):
    kind = VMMKind.CLOUD_HYPERVISOR
    guest_halt = "poweroff"

    def __init__(self, config: CloudHypervisorConfig | None = None) -> None:
        super().__init__()
        self.config = config or CloudHypervisorConfig()

    def available(self) -> str:
        if shutil.which(self.config.binary) is None:
            return f"{self.config.binary} is not installed (not packaged for Debian 12)"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "Cloud Hypervisor needs a usable /dev/kvm"
        return ""

    def command(self, boot: base.BootConfig) -> list[str]:
        cmd = [self.config.binary, "--api-socket", f"path={self.api_socket(boot)}"]
        netns = boot.network.netns
        return ["ip", "netns", "exec", netns, *cmd] if netns else cmd

    def devices(self, boot: base.BootConfig) -> list[str]:
        out: list[str] = []
        for address in boot.pci_devices:
            out += [d for d in iommu_group_devices(address, self.config.sysfs) if d not in out]
        return out

    def check_memory(self, boot: base.BootConfig) -> None:
        available = mem_available_mb(self.config.meminfo.read_text())
        if boot.memory_mb + self.config.memory_reserve_mb > available:
            raise VMMError(
                f"machine {boot.name}: {boot.memory_mb} MiB does not fit in the "
                f"{available} MiB available (minus {self.config.memory_reserve_mb} MiB kept "
                "for the host); memory is not overcommitted"
            )

    def prepare(self, boot: base.BootConfig) -> None:
        self.devices(boot)  # refuse a partial IOMMU group before anything is written
        super().prepare(boot)

    def configure_and_boot(self, boot: base.BootConfig) -> None:
        self.check_memory(boot)
        config = vm_config(boot, str(boot.dir / apivmm.DISK), self.devices(boot),
                           self.config.sysfs)  # fmt: skip
        unixhttp.request(self.api_socket(boot), "PUT", "/api/v1/vm.create", config)
        unixhttp.request(self.api_socket(boot), "PUT", "/api/v1/vm.boot")

    def stop(self, boot: base.BootConfig, signal: int, timeout: float) -> None:
        if not self.running(boot):
            return
        if self.send_stop(boot, signal, timeout):
            deadline = time.monotonic() + timeout + apivmm.STOP_GRACE
            while time.monotonic() < deadline:
                if console.parse(self.console_log(boot), boot.nonce).exit is not None:
                    break
                time.sleep(0.05)
        with contextlib.suppress(VMMError):  # it may be gone already
            unixhttp.request(self.api_socket(boot), "PUT", "/api/v1/vmm.shutdown")
        if not self.wait(boot, 5):
            self._kill(base.read_pid(boot))
