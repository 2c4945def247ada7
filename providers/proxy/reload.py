"""The HAProxy process in master-worker mode, and its seamless reload.

A reload is for what the runtime API cannot change (frontends, TLS, new
routes). The master re-executes itself with the new configuration; the new
worker takes the listening sockets from the old one (``expose-fd listeners``),
so no connection is refused; the old worker finishes its requests
(``option idle-close-on-response`` closes idle keep-alive connections after
their response instead of dropping them) and is killed at ``hard-stop-after``.
We wait until the master reports a new worker before saying the reload is done.

The master outlives the program that started it (its own session; the host
agent's ``apply`` is a short-lived process): its PID is kept in
``haproxy.pid`` in the state directory, and a later process :meth:`adopts
<HAProxyProcess.adopt>` it to reload or stop it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import ProviderError
from providers.proxy import haproxy


@dataclass(frozen=True, slots=True)
class Proc:
    """One line of the master CLI's ``show proc``."""

    pid: int
    kind: str  # master | worker
    reloads: int
    old: bool


def parse_show_proc(text: str) -> list[Proc]:
    out = []
    old = False
    for line in text.splitlines():
        if line.startswith("# old workers"):
            old = True
            continue
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split()
        if len(f) >= 3 and f[0].isdigit() and f[1] in ("master", "worker"):
            out.append(Proc(int(f[0]), f[1], int(f[2]), old))
    return out


def master_command(path: Path, command: str, timeout_s: float = 5.0) -> str:
    """One command on the master CLI, then ``quit`` so the master closes the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\nquit\n")
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode(errors="replace")


class HAProxyProcess:
    """Start, reload and stop one master-worker HAProxy that this object owns."""

    def __init__(self, options: haproxy.Options) -> None:
        self.options = options
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None  # an adopted master (started by another process)
        self.log_path = options.state_dir / "haproxy.log"
        self.pid_path = options.state_dir / "haproxy.pid"

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        return self._pid

    def running(self) -> bool:
        """Whether the master this object started or adopted is alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and _is_master(self._pid, self.options.config_path)

    def adopt(self) -> bool:
        """Take over the master recorded in the PID file, if it still runs our config."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return False
        if not _is_master(pid, self.options.config_path):
            return False
        self._proc, self._pid = None, pid
        return True

    def start(self, ready_timeout_s: float = 10.0) -> None:
        o = self.options
        for sock in (o.admin_socket, o.master_socket):
            sock.unlink(missing_ok=True)
        with self.log_path.open("ab") as logf:
            self._proc = subprocess.Popen(
                [haproxy.HAPROXY, "-W", "-S", str(o.master_socket), "-f", str(o.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        self._pid = None
        self.pid_path.write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ProviderError(f"proxy: HAProxy exited at start: {self._log_tail()}")
            if self._workers():
                return
            time.sleep(0.05)
        tail = self._log_tail()
        raise ProviderError(f"proxy: HAProxy not ready after {ready_timeout_s}s: {tail}")

    def _workers(self) -> list[Proc]:
        try:
            text = master_command(self.options.master_socket, "show proc")
        except OSError:
            return []
        return [p for p in parse_show_proc(text) if p.kind == "worker" and not p.old]

    def reload(self, timeout_s: float = 10.0) -> None:
        """Seamless reload of the configuration on disk (validated by the caller)."""
        pid = self.pid
        if pid is None or not self.running():
            raise ProviderError("proxy: HAProxy is not running; cannot reload")
        before = {p.pid for p in self._workers()}
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            current = self._workers()
            if current and not {p.pid for p in current} & before:
                return
            time.sleep(0.02)
        raise ProviderError(f"proxy: reload did not bring up a new worker: {self._log_tail()}")

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._proc is None and self._pid is not None:
            _end(self._pid, self.options.config_path, timeout_s)
            self._pid = None
            self.pid_path.unlink(missing_ok=True)
            return
        if self._proc is None:
            return
        self.pid_path.unlink(missing_ok=True)
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout_s)
        self._proc = None

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        alerts = [ln for ln in lines if "ALERT" in ln]
        return (alerts or lines or ["no log"])[-1]


def _is_master(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) HAProxy master running ``config``."""
    proc = Path(f"/proc/{pid}")
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"-W" in argv and str(config).encode() in argv


def _end(pid: int, config: Path, timeout_s: float) -> None:
    """Stop an adopted master (not our child: poll /proc instead of waiting)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while _is_master(pid, config) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_master(pid, config):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
