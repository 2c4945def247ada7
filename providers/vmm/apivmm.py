"""What Firecracker and Cloud Hypervisor drivers share: a VMM process driven by a REST API
on a unix socket, with the guest's serial console on its stdin/stdout.

The console: stdin is a FIFO in the machine's directory (opened read-write by
the VMM, so it never sees end-of-file) where ``stop`` writes ``FLEET-STOP``
lines; stdout is appended to ``console.log``, which the init's reports go to.
The writable layer is a sparse (reflinked where the filesystem can) copy of
the read-only base image, since Firecracker takes raw disks only.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
from pathlib import Path

from fleet.errors import VMMError
from providers.vmm import base, console, status
from providers.vmm.spec import MachineStatus

log = logging.getLogger(__name__)
CONSOLE_FIFO = "console.in"
DISK = "disk.raw"
STOP_GRACE = 10.0


class ApiVMM:
    """Process and console handling; subclasses configure the VM through the API."""

    api_socket_name = "api.sock"

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- to be provided by the subclasses --------------------------------

    def command(self, boot: base.BootConfig) -> list[str]:
        raise NotImplementedError

    def api_socket(self, boot: base.BootConfig) -> Path:
        return boot.dir / self.api_socket_name

    def configure_and_boot(self, boot: base.BootConfig) -> None:
        raise NotImplementedError

    def marker(self, boot: base.BootConfig) -> str:
        return str(boot.dir)

    # -- shared ----------------------------------------------------------

    def prepare(self, boot: base.BootConfig) -> None:
        disk = boot.dir / DISK
        if not disk.exists():
            proc = subprocess.run(
                ["cp", "--sparse=always", "--reflink=auto", str(boot.rootfs), str(disk)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                raise VMMError(f"machine {boot.name}: copying the root image: {proc.stderr}")
        fifo = boot.dir / CONSOLE_FIFO
        if not fifo.exists():
            os.mkfifo(fifo, 0o600)

    def start(self, boot: base.BootConfig) -> int:
        if self.running(boot):
            raise VMMError(f"machine {boot.name} is already running")
        sock = self.api_socket(boot)
        sock.unlink(missing_ok=True)
        stdin = os.open(boot.dir / CONSOLE_FIFO, os.O_RDWR)
        try:
            with open(boot.console_log, "ab") as out:
                proc = subprocess.Popen(
                    self.command(boot), cwd=boot.dir, stdin=stdin, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        finally:
            os.close(stdin)
        self._procs[boot.name] = proc
        (boot.dir / base.PID_FILE).write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None:
                raise VMMError(f"machine {boot.name}: the VMM exited at once: "
                               f"{self.console_log(boot)[-2000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                self._kill(proc.pid)
                raise VMMError(f"machine {boot.name}: no API socket within 10 s")
            time.sleep(0.005)
        try:
            self.configure_and_boot(boot)
        except BaseException:
            self._kill(proc.pid)
            raise
        return proc.pid

    def running(self, boot: base.BootConfig) -> bool:
        proc = self._procs.get(boot.name)
        if proc is not None:
            return proc.poll() is None
        return base.pid_alive(base.read_pid(boot), self.marker(boot))

    def send_stop(self, boot: base.BootConfig, sig: int, timeout: float) -> bool:
        try:
            fd = os.open(boot.dir / CONSOLE_FIFO, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                log.warning("machine %s: console FIFO: %s", boot.name, exc)
            return False
        try:
            os.write(fd, f"\nFLEET-STOP {sig} {int(timeout * 1000)}\n".encode())
        finally:
            os.close(fd)
        return True

    def stop(self, boot: base.BootConfig, signal: int, timeout: float) -> None:
        if not self.running(boot):
            return
        if self.send_stop(boot, signal, timeout) and self.wait(boot, timeout + STOP_GRACE):
            return
        self._kill(base.read_pid(boot))

    def wait(self, boot: base.BootConfig, timeout: float) -> bool:
        return base.wait_stopped(lambda: self.running(boot), timeout)

    def _kill(self, pid: int) -> None:
        base.terminate(pid)

    def status(self, boot: base.BootConfig) -> MachineStatus:
        running = self.running(boot)
        report = console.parse(self.console_log(boot), boot.nonce)
        return status.decide(boot.name, running, report, base.read_pid(boot) if running else 0)

    def destroy(self, boot: base.BootConfig) -> None:
        if self.running(boot):
            self._kill(base.read_pid(boot))
        self._procs.pop(boot.name, None)
        for name in (DISK, CONSOLE_FIFO, base.PID_FILE):
            (boot.dir / name).unlink(missing_ok=True)
        self.api_socket(boot).unlink(missing_ok=True)

    def console_log(self, boot: base.BootConfig) -> str:
        try:
            return boot.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
