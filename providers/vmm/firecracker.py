"""The Firecracker driver: its REST API on a unix socket, optionally inside the jailer.

Written against Firecracker's published API (v1.x): ``PUT /machine-config``,
``/boot-source``, ``/drives/{id}``, ``/network-interfaces/{id}``, then
``PUT /actions {"action_type": "InstanceStart"}``. Firecracker needs KVM
(hardware virtualisation), takes raw disks only (the writable layer is a sparse
copy of the base image) and tap devices only (no user-mode network, so no
``--publish``). The guest ends the VM by rebooting with ``reboot=k``.

With a ``jailer`` binary configured, Firecracker runs chrooted under
``CHROOT_BASE/firecracker/<id>/root`` as an unprivileged uid/gid: the kernel,
initrd and disk are hard-linked into the jail and the API paths are the
jail's. This machine kind (no usable KVM, nothing packaged) cannot boot it:
tests check the requests it sends against a real HTTP server on a unix socket.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import VMMError
from providers.vmm import apivmm, base, unixhttp
from providers.vmm.spec import NetMode, VMMKind

Call = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class FirecrackerConfig:
    """Where Firecracker (and optionally its jailer) is, and how to jail it."""

    binary: str = "firecracker"
    jailer: str = ""  # "jailer" to use it
    uid: int = 10_000
    gid: int = 10_000
    chroot_base: Path = Path("/srv/jailer")


def boot_args(cmdline: str) -> str:
    """Firecracker's guest ends with a keyboard-controller reset; no PCI bus."""
    args = [a for a in cmdline.split() if not a.startswith("reboot=")]
    return " ".join([*args, "reboot=k", "pci=off", "8250.nr_uarts=1"])


def api_calls(boot: base.BootConfig, kernel: str, initrd: str, disk: str) -> list[Call]:
    """The API calls that configure and start ``boot`` (pure; paths as Firecracker sees them)."""
    if boot.network.mode is NetMode.USER:
        raise VMMError(f"machine {boot.name}: Firecracker has no user-mode network; use tap")
    if boot.pci_devices:
        raise VMMError(f"machine {boot.name}: Firecracker has no PCI passthrough")
    calls: list[Call] = [
        ("PUT", "/machine-config",
         {"vcpu_count": boot.cpus, "mem_size_mib": boot.memory_mb, "smt": False}),
        ("PUT", "/boot-source",
         {"kernel_image_path": kernel, "initrd_path": initrd,
          "boot_args": boot_args(boot.cmdline)}),
        ("PUT", "/drives/rootfs",
         {"drive_id": "rootfs", "path_on_host": disk, "is_root_device": False,
          "is_read_only": False}),
    ]  # fmt: skip
    if boot.network.mode is NetMode.TAP:
        nic = {"iface_id": "eth0", "host_dev_name": boot.tap, "guest_mac": boot.mac}
        calls.append(("PUT", "/network-interfaces/eth0", nic))
    calls.append(("PUT", "/actions", {"action_type": "InstanceStart"}))
    return calls


def jail_id(boot: base.BootConfig) -> str:
    return "fleet-" + boot.name.replace("_", "-").replace(".", "-")[:57]


class FirecrackerDriver(apivmm.ApiVMM):
    """Firecracker, directly or under the jailer."""

    kind = VMMKind.FIRECRACKER
    guest_halt = "reboot"

    def __init__(self, config: FirecrackerConfig | None = None) -> None:
        super().__init__()
        self.config = config or FirecrackerConfig()

    def available(self) -> str:
        if shutil.which(self.config.binary) is None:
            return f"{self.config.binary} is not installed (not packaged for Debian 12)"
        if self.config.jailer and shutil.which(self.config.jailer) is None:
            return f"{self.config.jailer} is not installed"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "Firecracker needs a usable /dev/kvm"
        return ""

    def _jail_root(self, boot: base.BootConfig) -> Path:
        exec_name = Path(self.config.binary).name
        return self.config.chroot_base / exec_name / jail_id(boot) / "root"

    def api_socket(self, boot: base.BootConfig) -> Path:
        if self.config.jailer:
            return self._jail_root(boot) / "run" / "firecracker.socket"
        return boot.dir / self.api_socket_name

    def marker(self, boot: base.BootConfig) -> str:
        return jail_id(boot) if self.config.jailer else str(boot.dir)

    def command(self, boot: base.BootConfig) -> list[str]:
        netns = boot.network.netns
        if self.config.jailer:
            cmd = [
                self.config.jailer, "--id", jail_id(boot),
                "--exec-file", shutil.which(self.config.binary) or self.config.binary,
                "--uid", str(self.config.uid), "--gid", str(self.config.gid),
                "--chroot-base-dir", str(self.config.chroot_base),
            ]  # fmt: skip
            if netns:
                cmd += ["--netns", f"/var/run/netns/{netns}"]
            return [*cmd, "--", "--api-sock", "/run/firecracker.socket", "--id", jail_id(boot)]
        cmd = [self.config.binary, "--api-sock", str(self.api_socket(boot)), "--id", jail_id(boot)]
        return ["ip", "netns", "exec", netns, *cmd] if netns else cmd

    def _paths(self, boot: base.BootConfig) -> tuple[str, str, str]:
        disk = boot.dir / apivmm.DISK
        if not self.config.jailer:
            return str(boot.kernel), str(boot.initrd), str(disk)
        root = self._jail_root(boot)
        (root / "run").mkdir(parents=True, exist_ok=True)
        names = {"vmlinux": boot.kernel, "initrd.img": boot.initrd, "rootfs.raw": disk}
        for name, src in names.items():
            dest = root / name
            if not dest.exists():
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copy2(src, dest)
            os.chown(dest, self.config.uid, self.config.gid)
        return "/vmlinux", "/initrd.img", "/rootfs.raw"

    def configure_and_boot(self, boot: base.BootConfig) -> None:
        kernel, initrd, disk = self._paths(boot)
        for method, path, body in api_calls(boot, kernel, initrd, disk):
            unixhttp.request(self.api_socket(boot), method, path, body)

    def destroy(self, boot: base.BootConfig) -> None:
        super().destroy(boot)
        if self.config.jailer:
            shutil.rmtree(self._jail_root(boot).parent, ignore_errors=True)
