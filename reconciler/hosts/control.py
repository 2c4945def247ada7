"""SSH connections kept open between `reconcile` runs: the client side of the holder.

Why: a new SSH connection costs the host's sshd a fork, a re-exec, a key
exchange and a login (~25 ms of its CPU) and costs us paramiko's import and the
handshake; `reconcile observe` pays that for every host on every run. Like
OpenSSH's ``ControlMaster``/``ControlPersist`` (and Ansible's default
``ControlPersist=60s``), a small local process, the *holder*
(:mod:`reconciler.hosts.holder`), keeps one pinned connection per host open
and each run asks through it. Nothing is cached: every request opens a new
channel on the host and carries the host's answer of that moment.

Security: the holder listens on a unix socket, mode 0600, in a directory of
ours with mode 0700 (``$FLEET_SSH_CONTROL_DIR``, default
``~/.fleet-state/ssh``), and serves only peers of its own uid (``SO_PEERCRED``).
Its name is derived from the login key file, the known_hosts file (paths,
sizes and times) and the network namespace, so a changed key or pin file gets
a new holder. Host keys are verified by the holder when it connects, against
the known_hosts it was started with plus the pin in the Host document that
comes with each request (a changed pin reconnects and verifies again).

Lifetime: the holder exits after ``$FLEET_SSH_PERSIST`` seconds (default 60)
without a request, when its socket is removed, or on SIGTERM.
``FLEET_SSH_PERSIST=0`` turns holding off: every run connects afresh.

Observing goes through the holder (one request line, one answer line per
host), and so do the agent's exec verbs (``fleet-agent apply`` and observe's
exec fallback, as :mod:`reconciler.hosts.agentclient` sends them; the holder
runs no other command): their stdout lines are relayed as they arrive, then
the exit status and stderr. A run that applies through the holder imports no
SSH library and makes no connection of its own. Anything else (uploads,
bootstrap) uses a direct connection of the running command.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet import errors
from fleet.model import SSHTarget
from reconciler.hosts import result as result_mod

if TYPE_CHECKING:  # the transport is imported only when a direct connection is needed
    from reconciler.hosts import ssh

log = logging.getLogger(__name__)

ENV_PERSIST = "FLEET_SSH_PERSIST"
ENV_DIR = "FLEET_SSH_CONTROL_DIR"
DEFAULT_PERSIST_S = 60.0
START_TIMEOUT_S = 10.0
VERSION = 2  # of the request/answer lines below; part of the socket's name
MAX_SOCKET_PATH = 107  # sun_path, less its terminating NUL (Linux)

# The errors a holder may report, by class name; anything else is a HostError.
_ERRORS: dict[str, type[errors.HostError]] = {
    "HostError": errors.HostError,
    "HostUnreachable": errors.HostUnreachable,
    "HostKeyMismatch": errors.HostKeyMismatch,
    "ProtocolError": errors.ProtocolError,
}


@dataclass(frozen=True, slots=True)
class Settings:
    """What a holder is started with; one holder per distinct value."""

    ssh_key: str | None
    known_hosts: str | None
    netns: str | None
    idle: float


def persist_seconds(env: Mapping[str, str] | None = None) -> float:
    """``$FLEET_SSH_PERSIST`` (seconds a holder lingers without requests); 0: no holder."""
    env = os.environ if env is None else env
    raw = env.get(ENV_PERSIST, "").strip()
    if not raw:
        return DEFAULT_PERSIST_S
    try:
        value = float(raw)
    except ValueError:
        raise errors.FleetError(f"${ENV_PERSIST}={raw!r}: want seconds (0 turns it off)") from None
    return max(0.0, value)


def _dir_of(env: Mapping[str, str] | None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(ENV_DIR) or Path.home() / ".fleet-state" / "ssh")


def end_holder(settings: Settings, env: Mapping[str, str] | None = None) -> Path | None:
    """Make the holder for ``settings`` exit (it does when its socket goes); creates nothing.

    Returns the socket removed, if there was one. ``lab down`` calls this so a
    holder of the lab's connections does not outlive the lab.
    """
    path = socket_path(settings, _dir_of(env))
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path


def control_dir(env: Mapping[str, str] | None = None) -> Path:
    """The holders' directory: created 0700; refused unless it is ours and private."""
    d = _dir_of(env)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise errors.FleetError(
            f"{d} ({ENV_DIR}): must be a directory owned by uid {os.getuid()} with mode 0700"
        )
    return d


def key_outside_repo(key: str, origin: str, fleet_dir: str | os.PathLike[str] | None) -> Path:
    """The key file's resolved path; refused if it lies inside the fleet repository.

    Private keys must never live next to the desired state that is pushed
    around. Here (not in ssh.py) so a run that observes through the holder
    checks it too without loading the transport.
    """
    key_path = Path(key).expanduser().resolve()
    if fleet_dir is not None:
        repo = Path(fleet_dir).resolve()
        if key_path == repo or repo in key_path.parents:
            raise errors.FleetError(
                f"ssh key {key_path} ({origin}) is inside the fleet repository {repo}: "
                "keep private keys out of it and pass --ssh-key or $FLEET_SSH_KEY"
            )
    return key_path


def _fingerprint(path: str | None) -> str:
    if not path:
        return "-"
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError:
        return f"{p}:missing"
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"


def socket_path(settings: Settings, directory: Path) -> Path:
    """The holder's socket for these settings (a changed key or known_hosts file: another)."""
    parts = [
        str(VERSION),
        str(os.getuid()),
        _fingerprint(settings.ssh_key),
        _fingerprint(settings.known_hosts),
        settings.netns or "-",
        # no key file: the holder logs in with the agent this command would use
        "-" if settings.ssh_key else os.environ.get("SSH_AUTH_SOCK", "-"),
    ]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    return directory / f"{digest}.sock"


def _target_json(target: SSHTarget) -> dict[str, Any]:
    return {
        "address": target.address,
        "port": target.port,
        "user": target.user,
        "host_key": target.host_key,
    }


def target_from_json(raw: Mapping[str, Any]) -> SSHTarget:
    return SSHTarget(str(raw["address"]), int(raw["port"]), str(raw["user"]), raw.get("host_key"))


def request(path: Path, body: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """One request line to the holder at ``path``, one answer line back (OSError if no holder)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(body).encode() + b"\n")
        with s.makefile("rb") as f:
            line = f.readline()
    if not line:
        raise ConnectionResetError("the holder closed the connection without an answer")
    answer: dict[str, Any] = json.loads(line)
    return answer


def _raise_if_error(host: str, answer: Mapping[str, Any]) -> None:
    err = answer.get("error")
    if isinstance(err, dict):
        cls = _ERRORS.get(str(err.get("type")), errors.HostError)
        raise cls(host, str(err.get("message", "error")))


def ensure_holder(settings: Settings, env: Mapping[str, str] | None = None) -> Path | None:
    """The socket of a live holder for ``settings``, started if need be; None if that fails.

    None means: connect directly (the reason is logged); holding is an
    optimisation, never a reason for a command to fail.
    """
    if settings.idle <= 0:
        return None
    try:
        path = socket_path(settings, control_dir(env))
    except (OSError, errors.FleetError) as exc:
        log.info("ssh holder: %s; connecting directly", exc)
        return None
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        log.info("ssh holder: %s is too long for a unix socket; connecting directly", path)
        return None
    if alive(path):
        return path
    log_file = path.with_suffix(".log")
    argv = [
        sys.executable, "-P", "-m", "reconciler.hosts.holder", "--socket", str(path),
        "--idle", str(settings.idle),
    ]  # fmt: skip
    if settings.ssh_key:
        argv += ["--ssh-key", settings.ssh_key]
    if settings.known_hosts:
        argv += ["--known-hosts", settings.known_hosts]
    if settings.netns:
        argv += ["--netns", settings.netns]
    try:
        with open(log_file, "ab") as out:
            os.chmod(log_file, 0o600)
            # The holder forks itself away and this returns at once: it outlives
            # this command by design (see above) and is nobody's zombie.
            subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                check=True,
                timeout=START_TIMEOUT_S,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("ssh holder: cannot start: %s; connecting directly", exc)
        return None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if alive(path):
            return path
        time.sleep(0.01)
    log.info("ssh holder did not come up within %gs (see %s)", START_TIMEOUT_S, log_file)
    return None


def alive(path: Path) -> bool:
    """A holder answers on ``path``."""
    try:
        return request(path, {"op": "ping"}, timeout=2.0).get("ok") is True
    except (OSError, ValueError):
        return False


class HeldChannel:
    """A line exchange with a port on the host, made by the holder on a fresh channel.

    Quacks like the ``ssh.TCPChannel`` that the observe port needs: the data
    given to :meth:`sendall` goes out when :meth:`read_line` asks for the answer.
    """

    def __init__(self, conn: HeldConnection, address: str, port: int) -> None:
        self._conn = conn
        self._address = address
        self._port = port
        self._out = bytearray()

    def sendall(self, data: bytes, *, timeout: float) -> None:
        self._out += data

    def read_line(self, *, timeout: float, limit: int = 64 << 20) -> bytes:
        body = {
            "op": "ask",
            "address": self._address,
            "port": self._port,
            "data": self._out.decode("utf-8"),
            "timeout": timeout,
            "limit": limit,
        }
        try:
            answer = self._conn.ask(body, timeout)
        except HolderGone:  # the same exchange over a connection of our own
            with self._conn.direct().open_tcp(self._address, self._port, timeout=timeout) as chan:
                chan.sendall(bytes(self._out), timeout=timeout)
                return chan.read_line(timeout=timeout, limit=limit)
        finally:
            self._out.clear()
        return str(answer.get("line", "")).encode("utf-8")

    def close(self) -> None:
        self._out.clear()

    def __enter__(self) -> HeldChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HolderGone(Exception):
    """The holder itself did not answer (not the host): use a connection of our own."""


class HeldConnection:
    """One host through the holder; direct SSH for anything but the observe port,
    and for everything once the holder has failed to answer."""

    def __init__(
        self,
        path: Path,
        host: str,
        target: SSHTarget,
        direct: Callable[[], ssh.SSHConnection],
        *,
        timeout: float = 10.0,
    ) -> None:
        self.path = path
        self.host = host
        self.target = target
        self.timeout = timeout
        self.direct = direct
        self.gone = False  # the holder failed to answer once: direct from then on

    def ask(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One request about this host; ``HolderGone`` if the holder does not answer."""
        if self.gone:
            raise HolderGone(self.path)
        full = {**body, "host": self.host, "target": _target_json(self.target)}
        try:
            # The holder's own connect has its retries and timeouts: allow for them.
            answer = request(self.path, full, timeout + 3 * self.timeout)
        except (OSError, ValueError) as exc:
            self.gone = True
            log.info("%s: ssh holder %s: %s; connecting directly", self.host, self.path, exc)
            raise HolderGone(self.path) from exc
        _raise_if_error(self.host, answer)
        return answer

    def connect(self) -> None:
        """The holder's connection to the host is up (made now if need be), pin verified."""
        try:
            self.ask({"op": "connect"}, self.timeout)
        except HolderGone:
            self.direct().connect()

    def open_tcp(
        self, address: str, port: int, *, timeout: float | None = None
    ) -> HeldChannel | ssh.TCPChannel:
        if self.gone:
            return self.direct().open_tcp(address, port, timeout=timeout)
        return HeldChannel(self, address, port)

    def exec(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> result_mod.ExecResult:
        """``command`` run by the holder (the agent's verbs), else over our own connection."""
        if not self.gone:
            try:
                return self._exec_held(command, stdin, on_line, timeout)
            except HolderGone:
                pass  # nothing was sent: the same command over our own connection
        return self.direct().exec(command, stdin=stdin, on_line=on_line, timeout=timeout)

    def _exec_held(
        self,
        command: str,
        stdin: bytes | None,
        on_line: Callable[[str], None] | None,
        timeout: float | None,
    ) -> result_mod.ExecResult:
        limit = 3600.0 if timeout is None else timeout
        body = {
            "op": "exec",
            "host": self.host,
            "target": _target_json(self.target),
            "command": command,
            "stdin": (stdin or b"").decode("utf-8"),
            "timeout": limit,
        }
        started = time.monotonic()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
                sock.sendall(json.dumps(body).encode() + b"\n")
            except OSError as exc:
                self.gone = True
                log.info("%s: ssh holder %s: %s; connecting directly", self.host, self.path, exc)
                raise HolderGone(self.path) from exc
            # From here the command may be running: never sent twice.
            sock.settimeout(limit + 3 * self.timeout)
            out = bytearray()
            with sock.makefile("rb") as answers:
                for raw in answers:
                    doc = json.loads(raw)
                    if "line" in doc:
                        line = str(doc["line"])
                        out += line.encode("utf-8") + b"\n"
                        if on_line is not None:
                            on_line(line)
                        continue
                    if isinstance(doc.get("error"), dict) and doc["error"].get("type") == "NotHeld":
                        raise HolderGone(self.path)  # refused before running anything
                    _raise_if_error(self.host, doc)
                    return result_mod.ExecResult(
                        self.host,
                        command,
                        int(doc["exit"]),
                        bytes(out),
                        str(doc.get("stderr", "")).encode("utf-8"),
                        time.monotonic() - started,
                    )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise errors.HostError(
                self.host, f"ssh holder: the agent's answer broke off: {exc}"
            ) from exc
        finally:
            sock.close()
        raise errors.HostError(self.host, "ssh holder: closed before the command's exit status")
