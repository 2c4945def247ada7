"""Firecracker and Cloud Hypervisor drivers: the requests they send, checked against a real
HTTP server on a unix socket (neither VMM can boot on this machine kind: no usable KVM,
not packaged for Debian 12)."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import VMMError
from providers.vmm import apivmm, base, cloud_hypervisor, firecracker, network
from providers.vmm.spec import NetMode, NetworkSpec

Recorded = list[tuple[str, str, Any]]


@contextmanager
def api_server(sock: Path, fail: str = "") -> Iterator[Recorded]:
    """A unix-socket HTTP server that records every request (and fails path ``fail``)."""
    seen: Recorded = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            seen.append((self.command, self.path, json.loads(raw) if raw else None))
            if self.path == fail:
                body = b'{"fault_message": "bad request"}'
                self.send_response(400)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(204)
            self.end_headers()

        do_PUT = do_GET = do_PATCH = _handle

        def address_string(self) -> str:
            return "unix"

        def log_message(self, *args: object) -> None:
            pass

    dir_fd = os.open(sock.parent, os.O_PATH | os.O_DIRECTORY)  # binds paths of any length
    try:
        server = socketserver.ThreadingUnixStreamServer(
            f"/proc/self/fd/{dir_fd}/{sock.name}", Handler
        )
    finally:
        os.close(dir_fd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def boot_config(tmp: Path, net: NetworkSpec, pci: tuple[str, ...] = ()) -> base.BootConfig:
    d = tmp / "m"
    d.mkdir(exist_ok=True)
    for name in ("vmlinux", "initrd.img", apivmm.DISK):
        (d / name).write_bytes(b"x")
    return base.BootConfig(
        name="gpu-1",
        dir=d,
        kernel=d / "vmlinux",
        initrd=d / "initrd.img",
        cmdline="console=ttyS0 panic=-1 quiet reboot=t",
        rootfs=tmp / "rootfs.ext4",
        cpus=2,
        memory_mb=512,
        network=net,
        tap=network.tap_name("gpu-1"),
        mac=network.mac_address("gpu-1"),
        nonce="n1",
        pci_devices=pci,
    )


TAP = NetworkSpec(mode=NetMode.TAP, host_addresses=("203.0.113.1/24",))


def test_firecracker_requests(tmp_path: Path) -> None:
    boot = boot_config(tmp_path, TAP)
    drv = firecracker.FirecrackerDriver()
    with api_server(drv.api_socket(boot)) as seen:
        drv.configure_and_boot(boot)
    assert [(m, p) for m, p, _ in seen] == [
        ("PUT", "/machine-config"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/rootfs"),
        ("PUT", "/network-interfaces/eth0"),
        ("PUT", "/actions"),
    ]
    body = {p: b for _, p, b in seen}
    assert body["/machine-config"] == {"vcpu_count": 2, "mem_size_mib": 512, "smt": False}
    src = body["/boot-source"]
    assert src["kernel_image_path"] == str(boot.kernel) and src["initrd_path"] == str(boot.initrd)
    assert "reboot=k" in src["boot_args"] and "reboot=t" not in src["boot_args"]
    assert body["/drives/rootfs"]["path_on_host"] == str(boot.dir / apivmm.DISK)
    assert body["/network-interfaces/eth0"] == {
        "iface_id": "eth0",
        "host_dev_name": boot.tap,
        "guest_mac": boot.mac,
    }
    assert body["/actions"] == {"action_type": "InstanceStart"}


def test_firecracker_api_error_is_a_vmm_error(tmp_path: Path) -> None:
    boot = boot_config(tmp_path, TAP)
    drv = firecracker.FirecrackerDriver()
    with (
        api_server(drv.api_socket(boot), fail="/boot-source"),
        pytest.raises(VMMError, match=r"HTTP 400.*bad request"),
    ):
        drv.configure_and_boot(boot)


def test_firecracker_refuses_user_net_and_pci(tmp_path: Path) -> None:
    with pytest.raises(VMMError, match="no user-mode network"):
        firecracker.api_calls(boot_config(tmp_path, NetworkSpec(mode=NetMode.USER)), "k", "i", "d")
    with pytest.raises(VMMError, match="no PCI passthrough"):
        firecracker.api_calls(boot_config(tmp_path, TAP, ("0000:01:00.0",)), "k", "i", "d")


@pytest.mark.skipif(os.geteuid() != 0, reason="the jail's files are chowned to the jail user")
def test_firecracker_jailer_command_and_chroot(tmp_path: Path) -> None:
    net = NetworkSpec(mode=NetMode.TAP, netns="lab-sea-1")
    boot = boot_config(tmp_path, net)
    cfg = firecracker.FirecrackerConfig(
        jailer="jailer", uid=123, gid=456, chroot_base=tmp_path / "jail"
    )
    drv = firecracker.FirecrackerDriver(cfg)
    cmd = drv.command(boot)
    assert cmd[:3] == ["jailer", "--id", "fleet-gpu-1"]
    assert cmd[cmd.index("--uid") + 1] == "123" and cmd[cmd.index("--gid") + 1] == "456"
    assert cmd[cmd.index("--netns") + 1] == "/var/run/netns/lab-sea-1"
    assert cmd[cmd.index("--") + 1 :][:2] == ["--api-sock", "/run/firecracker.socket"]
    sock = drv.api_socket(boot)
    assert sock == tmp_path / "jail/firecracker/fleet-gpu-1/root/run/firecracker.socket"
    sock.parent.mkdir(parents=True)
    with api_server(sock) as seen:
        drv.configure_and_boot(boot)
    body = {p: b for _, p, b in seen}
    assert body["/boot-source"]["kernel_image_path"] == "/vmlinux"  # the jail's view
    assert body["/drives/rootfs"]["path_on_host"] == "/rootfs.raw"
    jailed = sock.parent.parent / "rootfs.raw"
    assert jailed.stat().st_ino == (boot.dir / apivmm.DISK).stat().st_ino  # hard-linked
    assert (jailed.stat().st_uid, jailed.stat().st_gid) == (123, 456)
    drv.destroy(boot)
    assert not (tmp_path / "jail/firecracker/fleet-gpu-1").exists()


def fake_sysfs(root: Path, group: dict[str, tuple[str, str]]) -> Path:
    """A /sys with one IOMMU group: address -> (class, driver)."""
    devices = root / "bus/pci/devices"
    grp = root / "kernel/iommu_groups/7/devices"
    grp.mkdir(parents=True)
    for addr, (pci_class, driver) in group.items():
        d = devices / addr
        d.mkdir(parents=True)
        (d / "class").write_text(pci_class + "\n")
        if driver:
            drv = root / "bus/pci/drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            (d / "driver").symlink_to(drv)
        (d / "iommu_group").symlink_to(root / "kernel/iommu_groups/7")
        (grp / addr).symlink_to(d)
    return root


GROUP = {
    "0000:65:00.0": ("0x030200", "vfio-pci"),  # the GPU
    "0000:65:00.1": ("0x040300", "vfio-pci"),  # its audio function
    "0000:64:00.0": ("0x060400", "pcieport"),  # the bridge above: never passed through
}


def test_cloud_hypervisor_requests_with_whole_iommu_group(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path / "sys", GROUP)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 33554432 kB\nMemAvailable: 16777216 kB\n")
    boot = boot_config(tmp_path, TAP, ("0000:65:00.0",))
    drv = cloud_hypervisor.CloudHypervisorDriver(
        cloud_hypervisor.CloudHypervisorConfig(sysfs=sysfs, meminfo=meminfo)
    )
    with api_server(drv.api_socket(boot)) as seen:
        drv.configure_and_boot(boot)
    assert [(m, p) for m, p, _ in seen] == [
        ("PUT", "/api/v1/vm.create"),
        ("PUT", "/api/v1/vm.boot"),
    ]
    cfg = seen[0][2]
    assert cfg["cpus"] == {"boot_vcpus": 2, "max_vcpus": 2}
    assert cfg["memory"]["size"] == 512 << 20
    assert cfg["memory"]["prefault"] is True and cfg["memory"]["shared"] is False
    assert cfg["payload"] == {
        "kernel": str(boot.kernel),
        "initramfs": str(boot.initrd),
        "cmdline": boot.cmdline,
    }
    assert cfg["disks"] == [{"path": str(boot.dir / apivmm.DISK), "readonly": False}]
    assert cfg["net"] == [{"tap": boot.tap, "mac": boot.mac}]
    assert cfg["serial"] == {"mode": "Tty"}
    assert [d["path"] for d in cfg["devices"]] == [
        f"{sysfs}/bus/pci/devices/0000:65:00.0/",
        f"{sysfs}/bus/pci/devices/0000:65:00.1/",
    ]


def test_cloud_hypervisor_refuses_partial_group_and_overcommit(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path / "sys", {**GROUP, "0000:65:00.1": ("0x040300", "snd_hda_intel")})
    with pytest.raises(VMMError, match=r"0000:65:00.1 .* bound to snd_hda_intel, not vfio-pci"):
        cloud_hypervisor.iommu_group_devices("0000:65:00.0", sysfs)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable: 700000 kB\n")  # ~683 MiB
    drv = cloud_hypervisor.CloudHypervisorDriver(
        cloud_hypervisor.CloudHypervisorConfig(sysfs=sysfs, meminfo=meminfo)
    )
    with pytest.raises(VMMError, match="not overcommitted"):
        drv.check_memory(boot_config(tmp_path, TAP))
    with pytest.raises(VMMError, match="no IOMMU group"):
        cloud_hypervisor.iommu_group_devices("0000:00:02.0", sysfs)


def test_stop_line_goes_through_the_console_fifo(tmp_path: Path) -> None:
    boot = boot_config(tmp_path, TAP)
    fifo = boot.dir / apivmm.CONSOLE_FIFO
    os.mkfifo(fifo)
    drv = firecracker.FirecrackerDriver()
    assert not drv.send_stop(boot, 15, 5)  # nobody reads it: no VMM, nothing to stop
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert drv.send_stop(boot, 10, 2.5)
        assert os.read(reader, 100) == b"\nFLEET-STOP 10 2500\n"
    finally:
        os.close(reader)


def test_drivers_say_why_they_cannot_run_here() -> None:
    fc = firecracker.FirecrackerDriver(firecracker.FirecrackerConfig(binary="no-such-firecracker"))
    assert "not installed" in fc.available()
    ch = cloud_hypervisor.CloudHypervisorDriver(
        cloud_hypervisor.CloudHypervisorConfig(binary="no-such-ch")
    )
    assert "not installed" in ch.available()
