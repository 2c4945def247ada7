"""The QEMU ``microvm`` driver, the default: boots everywhere Debian runs.

KVM is used only when the CPU really has VT-x/AMD-V (``vmx``/``svm`` in
/proc/cpuinfo), /dev/kvm opens, and a bounded probe boot reaches the guest
init; the mere presence of /dev/kvm proves nothing (a PVM host has it and
cannot boot a stock kernel). Otherwise TCG, with a warning, and the kernel gets
``tsc_early_khz`` (without it TCG boots hang now and then calibrating the TSC).

Each VM runs detached from the agent (its own session); its serial console is
a unix socket (for ``FLEET-STOP`` lines) whose output QEMU also appends to
``console.log``. Sockets are created relative to the machine's directory so a
long data path never overflows ``sun_path``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import VMMError
from providers.vmm import base, console, status
from providers.vmm.spec import MachineStatus, NetMode, VMMKind

log = logging.getLogger(__name__)
QEMU = "qemu-system-x86_64"
CONSOLE_SOCK = "console.sock"
DISK = "disk.qcow2"
QEMU_LOG = "qemu.log"
USER_NET = "192.0.2.0/24"
USER_HOST = "192.0.2.2"
USER_GUEST = "192.0.2.15/24"
STOP_GRACE = 15.0


@dataclass(frozen=True, slots=True)
class Accel:
    """The accelerator decision and why."""

    name: str  # "kvm" or "tcg"
    reason: str = ""


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def host_khz(cpuinfo: str) -> int:
    for line in cpuinfo.splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.partition(":")[2]) * 1000)
    return 0


def choose_accel(cpuinfo: str, kvm_usable: bool, probe: Callable[[], bool]) -> Accel:
    """KVM only with vmx/svm, a usable /dev/kvm and a probe that boots (pure but for probe)."""
    if not {"vmx", "svm"} & cpu_flags(cpuinfo):
        return Accel("tcg", "the CPU has no vmx/svm flag, so KVM here cannot boot a stock kernel")
    if not kvm_usable:
        return Accel("tcg", "/dev/kvm cannot be opened")
    if not probe():
        return Accel("tcg", "a probe boot under KVM did not reach the guest init in time")
    return Accel("kvm")


def qemu_argv(boot: base.BootConfig, accel: Accel, khz: int, disk: str = DISK) -> list[str]:
    """The QEMU command line for ``boot`` (pure)."""
    cmdline = boot.cmdline
    if accel.name == "tcg" and khz:
        cmdline += f" tsc_early_khz={khz}"
    argv = [
        QEMU, "-name", f"fleet-{boot.name}",
        "-M", "microvm", "-accel", accel.name,
        "-cpu", "host" if accel.name == "kvm" else "max",
        "-smp", str(boot.cpus), "-m", str(boot.memory_mb),
        "-kernel", str(boot.kernel), "-initrd", str(boot.initrd), "-append", cmdline,
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev",
        f"socket,id=con,path={CONSOLE_SOCK},server=on,wait=off,"
        f"logfile={base.CONSOLE_LOG},logappend=on",
        "-serial", "chardev:con",
        "-drive", f"id=root,file={disk},format=qcow2,if=none",
        "-device", "virtio-blk-device,drive=root",
    ]  # fmt: skip
    net = boot.network
    if net.mode is NetMode.USER:
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{p.host_port}-:{p.guest_port}" for p in net.publish)
        argv += ["-netdev", f"user,id=n0,restrict=on,net={USER_NET},host={USER_HOST}{fwd}"]
    elif net.mode is NetMode.TAP:
        argv += ["-netdev", f"tap,id=n0,ifname={boot.tap},script=no,downscript=no"]
    if net.mode is not NetMode.NONE:
        argv += ["-device", f"virtio-net-device,netdev=n0,mac={boot.mac}"]
    if net.netns:
        argv = ["ip", "netns", "exec", net.netns, *argv]
    return argv


def _connect(dir_path: Path, name: str, timeout: float = 2.0) -> socket.socket:
    """Connect to a unix socket in ``dir_path`` however long that path is."""
    fd = os.open(dir_path, os.O_PATH | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(f"/proc/self/fd/{fd}/{name}")
    except OSError:
        sock.close()
        raise
    finally:
        os.close(fd)
    return sock


class QemuDriver:
    """QEMU microvm under KVM when it really works, TCG otherwise."""

    kind = VMMKind.QEMU
    guest_halt = "reboot"  # with -no-reboot, a rebooting guest ends QEMU

    def __init__(
        self,
        *,
        accel: Accel | None = None,
        probe: Callable[[], bool] | None = None,
        cpuinfo_path: Path = Path("/proc/cpuinfo"),
    ) -> None:
        self._accel = accel
        self._probe = probe or (lambda: False)
        self._cpuinfo = cpuinfo_path.read_text() if cpuinfo_path.exists() else ""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def accel(self) -> Accel:
        if self._accel is None:
            kvm_ok = os.access("/dev/kvm", os.R_OK | os.W_OK)
            self._accel = choose_accel(self._cpuinfo, kvm_ok, self._probe)
            if self._accel.name == "tcg":
                log.warning("QEMU runs under TCG (software emulation, slow): %s",
                            self._accel.reason)  # fmt: skip
        return self._accel

    def available(self) -> str:
        return "" if shutil.which(QEMU) else f"{QEMU} is not installed"

    def prepare(self, boot: base.BootConfig) -> None:
        if boot.pci_devices:
            raise VMMError(
                f"machine {boot.name}: PCI passthrough needs the cloud-hypervisor driver"
            )
        disk = boot.dir / DISK
        if disk.exists():
            return
        proc = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(boot.rootfs),
             str(disk)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise VMMError(f"machine {boot.name}: qemu-img create failed: {proc.stderr.strip()}")

    def argv(self, boot: base.BootConfig) -> list[str]:
        return qemu_argv(boot, self.accel, host_khz(self._cpuinfo))

    def start(self, boot: base.BootConfig) -> int:
        if self.running(boot):
            raise VMMError(f"machine {boot.name} is already running")
        (boot.dir / CONSOLE_SOCK).unlink(missing_ok=True)
        argv = self.argv(boot)
        with open(boot.dir / QEMU_LOG, "wb") as qlog:
            proc = subprocess.Popen(
                argv, cwd=boot.dir, stdin=subprocess.DEVNULL, stdout=qlog,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._procs[boot.name] = proc
        (boot.dir / base.PID_FILE).write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + 10
        while not (boot.dir / CONSOLE_SOCK).exists():
            if proc.poll() is not None:
                tail = (boot.dir / QEMU_LOG).read_text(errors="replace")[-2000:].strip()
                raise VMMError(f"machine {boot.name}: QEMU exited at once: {tail}")
            if time.monotonic() > deadline:
                self._kill(proc.pid)
                raise VMMError(f"machine {boot.name}: QEMU did not come up within 10 s")
            time.sleep(0.005)
        return proc.pid

    def running(self, boot: base.BootConfig) -> bool:
        proc = self._procs.get(boot.name)
        if proc is not None:
            return proc.poll() is None
        return base.pid_alive(base.read_pid(boot), f"fleet-{boot.name}")

    def send_stop(self, boot: base.BootConfig, sig: int, timeout: float) -> bool:
        """Write a FLEET-STOP line to the guest's console; False if it cannot be reached."""
        try:
            with _connect(boot.dir, CONSOLE_SOCK) as sock:
                sock.sendall(f"\nFLEET-STOP {sig} {int(timeout * 1000)}\n".encode())
                time.sleep(0.05)  # let QEMU read it before the connection closes
        except OSError as exc:
            log.warning("machine %s: console unreachable (%s); killing the VMM", boot.name, exc)
            return False
        return True

    def stop(self, boot: base.BootConfig, signal: int, timeout: float) -> None:
        if not self.running(boot):
            return
        if self.send_stop(boot, signal, timeout):
            if self.wait(boot, timeout + STOP_GRACE):
                return
            log.warning("machine %s: guest did not finish; killing the VMM", boot.name)
        self._kill(base.read_pid(boot))
        self.wait(boot, 5)

    def wait(self, boot: base.BootConfig, timeout: float) -> bool:
        """Wait until the VMM has exited; True if it did within ``timeout``."""
        return base.wait_stopped(lambda: self.running(boot), timeout)

    def _kill(self, pid: int) -> None:
        base.terminate(pid, "fleet-")

    def status(self, boot: base.BootConfig) -> MachineStatus:
        running = self.running(boot)
        report = console.parse(self.console_log(boot), boot.nonce)
        return status.decide(boot.name, running, report, base.read_pid(boot) if running else 0)

    def destroy(self, boot: base.BootConfig) -> None:
        if self.running(boot):
            self._kill(base.read_pid(boot))
        proc = self._procs.pop(boot.name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for name in (DISK, CONSOLE_SOCK, base.PID_FILE):
            (boot.dir / name).unlink(missing_ok=True)

    def console_log(self, boot: base.BootConfig) -> str:
        try:
            return boot.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
