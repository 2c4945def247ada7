"""A real OpenSSH sshd on 127.0.0.1 for transport tests.

Why this shape:
- Files live in a private 0700 directory under /run, not under /tmp: with
  ``StrictModes yes`` sshd walks every parent of ``AuthorizedKeysFile`` and
  refuses a group/world-writable one, and /tmp is 1777.
- ``SetEnv SHLVL=1``: sshd runs each command as ``bash -c CMD``; bash sources
  ~/.bashrc when it believes sshd started it *and* it is a top-level shell.
  Inheriting SHLVL=1 makes it a nested shell (level 2), so root's pyenv
  .bashrc (~80-120 ms per command here) is skipped. Measured: 127 ms/command
  without, 8 ms with (a bind-mounted empty .bashrc in a private mount
  namespace gave 7 ms, but needs unshare; this needs nothing).
- sshd runs in the foreground (``-D -e``) as our child; it is stopped by its
  PID (the Popen handle) and reaped, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from fleet.model import SSHTarget

SSHD = "/usr/sbin/sshd"
RUN_DIR = Path("/run/fleet-reconciler-tests")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def keygen(path: Path, key_type: str = "ed25519") -> str:
    """Make a key pair at ``path``; return the public key line."""
    for p in (path, path.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "", "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text().strip()


class SSHDaemon:
    """One sshd with its own host key, client key, config and log."""

    def __init__(self, extra_config: str = "") -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        RUN_DIR.mkdir(mode=0o700, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="sshd-", dir=RUN_DIR))
        self.dir.chmod(0o700)
        self.port = free_port()
        self.extra_config = extra_config
        self.client_key = self.dir / "client_ed25519"
        self.client_pub = keygen(self.client_key)
        (self.dir / "authorized_keys").write_text(self.client_pub + "\n")
        (self.dir / "authorized_keys").chmod(0o600)
        self.host_key_path = self.dir / "ssh_host_ed25519_key"
        self.host_key = keygen(self.host_key_path)
        self.log = self.dir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> Path:
        conf = self.dir / "sshd_config"
        conf.write_text(
            f"""ListenAddress 127.0.0.1
Port {self.port}
HostKey {self.host_key_path}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.dir}/authorized_keys
StrictModes yes
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxSessions 64
MaxStartups 64:30:128
SetEnv SHLVL=1
LogLevel VERBOSE
Subsystem sftp internal-sftp
{self.extra_config}
"""
        )
        return conf

    def start(self) -> None:
        conf = self.config()
        ready = f"Server listening on 127.0.0.1 port {self.port}"
        # The log is appended to: after a restart the old line is there already.
        seen = self.log.read_text(errors="replace").count(ready) if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        # Wait for its "Server listening" line rather than probing the port: a
        # probe would be one more accepted connection in the log we count.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {self.log.read_text()}")
            if self.log.read_text(errors="replace").count(ready) > seen:
                return
            time.sleep(0.01)
        raise RuntimeError(f"sshd did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Per-connection sshd processes outlive the listener (that is how
            # sessions survive an sshd restart); end them first, by PID, so a
            # stop looks like a host going away.
            for child in self._children(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            self.proc.terminate()  # by PID: our own child
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    @staticmethod
    def _children(pid: int) -> list[int]:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def restart_with_new_host_key(self) -> str:
        self.stop()
        self.host_key = keygen(self.host_key_path)
        self.start()
        return self.host_key

    def accepts(self) -> int:
        """How many TCP connections sshd accepted (VERBOSE logs one line each)."""
        return self.log.read_text(errors="replace").count("Connection from 127.0.0.1")

    def target(self, *, pin: bool = True, user: str = "root") -> SSHTarget:
        return SSHTarget("127.0.0.1", self.port, user, self.host_key if pin else None)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # fails while another daemon uses it
            RUN_DIR.rmdir()


def is_root() -> bool:
    return os.geteuid() == 0
