"""The SSH transport: one pinned, reused, low-latency connection per host.

This is the only module that imports paramiko. It exists to give the real
``HostClient`` four things and to hide paramiko behind them:

* :class:`SSHPool` hands out one :class:`SSHConnection` per host name,
  created lazily and reused by every thread (one channel per command).
* :meth:`SSHConnection.exec` runs a command, feeds it stdin, streams its
  stdout line by line to a callback (the agent's JSON-lines protocol),
  captures stderr and returns the exit status; a per-command timeout sends
  ``KILL`` to the remote process group and closes the channel.
* :meth:`SSHConnection.upload` writes a file by SFTP atomically (temp name,
  chmod, ``posix-rename``).
* :meth:`SSHConnection.open_tcp` opens a TCP connection from the host to an
  address the host can reach (``direct-tcpip``, what ``ssh -L`` uses), over
  the same SSH connection: the agent's loopback observe port.
* Errors arrive as our own tree: network, timeout, protocol and EOF failures
  are :class:`fleet.errors.HostUnreachable` (retryable); a refused login is a
  permanent :class:`fleet.errors.HostError`; a key that is not pinned is
  :class:`fleet.errors.HostKeyMismatch` (see ``hostkeys.py``).

Why our own socket (made in :mod:`reconciler.hosts.dial`): paramiko leaves
Nagle on, which costs ~40 ms per command on loopback (LAB-NOTES.md); we
connect, set ``TCP_NODELAY`` (and quick ACKs) and hand paramiko the socket. A
:class:`~reconciler.hosts.dial.Dialer` given to the pool supplies sockets
whose connect was started earlier. Retries (bounded, exponential backoff) cover connecting and
opening a channel only: once a command has been sent it is never re-sent here.
"""

from __future__ import annotations

import io
import logging
import os
import random
import secrets
import select
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from fleet import errors
from fleet.model import Host, SSHTarget
from reconciler import imports
from reconciler.hosts import control, dial, hostkeys, result

# paramiko.config imports `invoke` (and through it asyncio and unittest.mock) only
# for `Match exec` in ssh_config files, which we never read: about half of
# paramiko's import time, paid by every `reconcile` command that connects.
# Without it paramiko sets `invoke = None` and works the same for us.
with imports.unimportable("invoke"):
    import paramiko
    from paramiko.common import cMSG_CHANNEL_REQUEST

ExecResult = result.ExecResult  # part of this module's API; defined apart (no paramiko)
log = logging.getLogger(__name__)

ENV_KEY = "FLEET_SSH_KEY"

# The host-key algorithms to offer for each pinned key type, so that a server
# with several host keys presents the one we pinned.
_ALGORITHMS = {
    "ssh-ed25519": ["ssh-ed25519"],
    "ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
    "ecdsa-sha2-nistp256": ["ecdsa-sha2-nistp256"],
    "ecdsa-sha2-nistp384": ["ecdsa-sha2-nistp384"],
    "ecdsa-sha2-nistp521": ["ecdsa-sha2-nistp521"],
}

T = TypeVar("T")
LineCallback = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class SSHOptions:
    """Timeouts, keepalive and retry policy (seconds)."""

    connect_timeout: float = 10.0
    command_timeout: float = 600.0
    keepalive: int = 15
    retries: int = 3  # attempts for transient failures, including the first
    backoff: float = 0.3  # first retry delay; doubles, with jitter, capped at 5 s
    # Run commands under coreutils ``timeout`` on the host, so a command we gave
    # up on dies there too (sshd refuses "signal" requests on root sessions).
    remote_kill: bool = True
    remote_kill_grace: float = 1.0
    # Channels open at once on one connection: sshd refuses sessions past its
    # MaxSessions (10 by default), so more callers wait here instead of failing.
    max_sessions: int = 8
    # Connect from inside this network namespace (the local lab's management
    # namespace); None: the reconciler's own namespace.
    netns: str | None = None


class Credentials:
    """The private keys the reconciler logs in with. Never printed.

    Built by :func:`load_credentials`; holds paramiko keys in memory only.
    """

    __slots__ = ("_keys", "source")

    def __init__(self, keys: list[paramiko.PKey], source: str) -> None:
        self._keys = keys
        self.source = source

    @property
    def keys(self) -> list[paramiko.PKey]:
        return list(self._keys)

    def describe(self) -> str:
        fps = ", ".join(f"{k.get_name()} {k.fingerprint}" for k in self._keys)
        return f"{self.source} ({fps or 'no keys'})"

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r}, keys=***)"

    __str__ = __repr__


def load_credentials(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    fleet_dir: str | os.PathLike[str] | None = None,
) -> Credentials:
    """The login key: ``--ssh-key PATH``, else ``$FLEET_SSH_KEY``, else the SSH agent.

    A key file inside the fleet repository (``fleet_dir``) is refused: private
    keys must never live next to the desired state that is pushed around.
    """
    env = os.environ if env is None else env
    chosen = os.fspath(path) if path else env.get(ENV_KEY) or None
    origin = "--ssh-key" if path else f"${ENV_KEY}"
    if chosen:
        key_path = control.key_outside_repo(chosen, origin, fleet_dir)
        try:
            key = paramiko.PKey.from_path(key_path)
        except paramiko.PasswordRequiredException as exc:
            raise errors.FleetError(
                f"ssh key {key_path} ({origin}) is encrypted: load it into ssh-agent instead"
            ) from exc
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise errors.FleetError(f"ssh key {key_path} ({origin}): cannot read: {exc}") from exc
        return Credentials([key], f"{origin} {key_path}")
    try:
        agent_keys: list[paramiko.PKey] = list(paramiko.Agent().get_keys())
    except paramiko.SSHException as exc:
        raise errors.FleetError(f"ssh agent: {exc}") from exc
    if not agent_keys:
        raise errors.FleetError(
            f"no SSH key: pass --ssh-key PATH, set ${ENV_KEY}, or add a key to ssh-agent"
        )
    return Credentials(agent_keys, "ssh-agent")


def _with_remote_timeout(command: str, seconds: float) -> str:
    """``command`` under coreutils ``timeout``: TERM after ``seconds``, KILL 2 s later.

    Not ``exec``: bash lowers SHLVL on exec, and a top-level bash started by
    sshd would source ~/.bashrc again.
    """
    return f'timeout -k 2 {seconds:.3f}s "$SHELL" -c {shlex.quote(command)}'


def _transient(host: str, what: str, exc: BaseException) -> errors.HostUnreachable:
    return errors.HostUnreachable(host, f"{what}: {dial.reason(exc)}")


def _presented(transport: paramiko.Transport) -> hostkeys.PublicKey:
    key = transport.get_remote_server_key()
    return hostkeys.PublicKey(key.get_name(), key.asbytes())


def fetch_host_key(
    target: SSHTarget, *, host: str = "", timeout: float = 10.0, netns: str | None = None
) -> hostkeys.PublicKey:
    """The key the server at ``target`` presents now (key exchange only, no login).

    For messages and for operators who want to pin a key; it trusts nothing.
    """
    host = host or target.address
    sock = dial.open_socket(host, target, timeout, netns)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return _presented(transport)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise _transient(host, "key exchange failed", exc) from exc
    finally:
        transport.close()


def host_key_fingerprint(target: SSHTarget, *, host: str = "", timeout: float = 10.0) -> str:
    """``SHA256:...`` of the key the server presents now, as ``ssh-keygen -l`` prints it."""
    return fetch_host_key(target, host=host, timeout=timeout).fingerprint


class SSHConnection:
    """One host's reused SSH connection. Thread-safe: one channel per command.

    The connection opens lazily on first use and reopens (with bounded
    retries) if it died; ``close()`` ends it.
    """

    def __init__(
        self,
        host: str,
        target: SSHTarget,
        credentials: Credentials,
        policy: hostkeys.HostKeyPolicy,
        options: SSHOptions | None = None,
        *,
        dialer: dial.Dialer | None = None,
    ) -> None:
        self.host = host
        self.target = target
        self._credentials = credentials
        self._policy = policy
        self.options = options or SSHOptions()
        self._dialer = dialer  # may hold this host's socket, connecting since earlier
        self._lock = threading.Lock()
        self._sessions = threading.BoundedSemaphore(max(1, self.options.max_sessions))
        self._transport: paramiko.Transport | None = None
        self.host_key: hostkeys.PublicKey | None = None
        self.connects = 0  # how many TCP connections this object opened

    def __repr__(self) -> str:
        t = self.target
        return f"SSHConnection({self.host!r}, {t.user}@{t.address}:{t.port})"

    # -- connecting ---------------------------------------------------------

    def _connect_once(self) -> paramiko.Transport:
        opts, t = self.options, self.target
        sock = None
        if self._dialer is not None:  # a connect started earlier, on the first attempt
            sock = self._dialer.take(self.host, t, opts.connect_timeout)
        if sock is None:
            sock = dial.open_socket(self.host, t, opts.connect_timeout, opts.netns)
        self.connects += 1
        transport = paramiko.Transport(sock)
        try:
            wanted = self._policy.preferred_types(self.host, t)
            algos = [a for kt in wanted for a in _ALGORITHMS.get(kt, [kt])]
            supported = set(transport.get_security_options().key_types)
            if algos and any(a in supported for a in algos):
                transport.get_security_options().key_types = [a for a in algos if a in supported]
            try:
                transport.start_client(timeout=opts.connect_timeout)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                what = f"SSH handshake with {t.address}:{t.port}"
                raise _transient(self.host, what, exc) from exc
            presented = _presented(transport)
            self._policy.check(self.host, t, presented)
            self._authenticate(transport)
            transport.set_keepalive(opts.keepalive)
        except BaseException:
            transport.close()
            raise
        self.host_key = presented
        log.debug("host %s: connected to %s:%d as %s", self.host, t.address, t.port, t.user)
        return transport

    def _authenticate(self, transport: paramiko.Transport) -> None:
        user = self.target.user
        for key in self._credentials.keys:
            try:
                transport.auth_publickey(user, key)
            except paramiko.AuthenticationException:
                continue
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise _transient(self.host, "connection lost while logging in", exc) from exc
            if transport.is_authenticated():
                return
        raise errors.HostError(
            self.host,
            f"SSH login as {user}@{self.target.address}:{self.target.port} refused for "
            f"{self._credentials.describe()}: add the public key to that user's "
            "authorized_keys (reconcile hosts bootstrap needs it too)",
        )

    def _ensure(self) -> paramiko.Transport:
        with self._lock:
            if self._transport is not None and self._transport.is_active():
                return self._transport
            if self._transport is not None:
                self._transport.close()
                self._transport = None
            self._transport = self._retrying("connect", self._connect_once)
            return self._transport

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn``; retry transient ``HostError``s with backoff, up to ``retries`` calls."""
        attempts = max(1, self.options.retries)
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except errors.HostError as exc:
                if not exc.retryable or attempt >= attempts:
                    raise
                self._pause(what, exc, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _pause(self, what: str, exc: errors.HostError, attempt: int) -> None:
        opts = self.options
        delay = min(5.0, opts.backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
        log.info(
            "host %s: %s failed (%s); retry %d/%d in %.2fs",
            self.host,
            what,
            exc.message,
            attempt,
            opts.retries - 1,
            delay,
        )
        time.sleep(delay)

    def _drop(self, transport: paramiko.Transport) -> None:
        with self._lock:
            if self._transport is transport:
                self._transport = None
        transport.close()

    def _open_channel(self) -> paramiko.Channel:
        """A new session channel; reconnects if the connection turned out dead.

        Connecting has its own bounded retries (in ``_ensure``), so only the
        channel-open failure itself is retried here.
        """
        attempts = max(1, self.options.retries)
        for attempt in range(1, attempts + 1):
            transport = self._ensure()
            try:
                return transport.open_session(timeout=self.options.connect_timeout)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._drop(transport)
                err = _transient(self.host, "cannot open a channel", exc)
                if attempt >= attempts:
                    raise err from exc
                self._pause("open channel", err, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def connect(self) -> None:
        """Open the connection now (verifying the host key and logging in)."""
        self._ensure()

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def local_port(self) -> int | None:
        """The local TCP port of the live connection (tests use it to prove reuse)."""
        with self._lock:
            t = self._transport
            if t is None or not t.is_active():
                return None
            port: int = t.sock.getsockname()[1]  # type: ignore[union-attr]
            return port

    # -- commands -----------------------------------------------------------

    def exec(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: LineCallback | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``command`` through the remote login shell and wait for it (see ``_exec``)."""
        with self._sessions:
            return self._exec(command, stdin=stdin, on_line=on_line, timeout=timeout)

    def _exec(
        self,
        command: str,
        *,
        stdin: bytes | None,
        on_line: LineCallback | None,
        timeout: float | None,
    ) -> ExecResult:
        """Run ``command`` through the remote login shell and wait for it.

        ``stdin`` is sent and then closed (EOF). Each complete stdout line is
        passed to ``on_line`` as it arrives (without the newline); the whole
        stdout and stderr are also in the result. A non-zero exit status is
        not an error here: the caller decides. After ``timeout`` seconds
        (default ``options.command_timeout``) the remote process group gets
        ``KILL``, the channel closes and ``HostUnreachable`` is raised.
        """
        limit = self.options.command_timeout if timeout is None else timeout
        started = time.monotonic()
        remote = command
        if self.options.remote_kill:
            remote = _with_remote_timeout(command, limit + self.options.remote_kill_grace)
        chan = self._open_channel()
        try:
            try:
                chan.exec_command(remote)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise _transient(self.host, "cannot start the command", exc) from exc
            out, err = self._pump(
                chan,
                stdin=stdin,
                on_line=on_line,
                deadline=started + limit,
                command=command,
                limit=limit,
            )
            status = chan.recv_exit_status() if chan.exit_status_ready() else -1
        finally:
            chan.close()
        seconds = time.monotonic() - started
        log.debug("host %s: %r exited %d in %.3fs", self.host, command, status, seconds)
        return ExecResult(self.host, command, status, out, err, seconds)

    def _pump(
        self,
        chan: paramiko.Channel,
        *,
        stdin: bytes | None,
        on_line: LineCallback | None,
        deadline: float,
        command: str,
        limit: float,
    ) -> tuple[bytes, bytes]:
        out = bytearray()
        err = bytearray()
        partial = b""
        pending = memoryview(stdin or b"")
        fd = chan.fileno()  # readable when stdout or stderr has data, and after EOF
        if not pending:
            chan.shutdown_write()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill(chan)
                raise errors.HostUnreachable(self.host, f"command timed out after {limit:g}s")
            try:
                if pending and (chan.eof_received or chan.exit_status_ready()):
                    pending = pending[:0]  # the command ended without reading it all
                if pending and chan.send_ready():
                    try:
                        n = chan.send(pending[:32768].tobytes())
                    except OSError:
                        if not chan.closed:
                            raise
                        n = len(pending)  # closed under us: the command is gone
                    pending = pending[n:]
                    if not pending and not chan.closed:
                        chan.shutdown_write()
                # Read the flag before draining: data always precedes EOF.
                eof = chan.eof_received or chan.closed
                progressed = False
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    progressed = True
                while chan.recv_ready():
                    data = chan.recv(65536)
                    out += data
                    partial = self._emit(partial + data, on_line)
                    progressed = True
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise _transient(self.host, f"connection lost during {command!r}", exc) from exc
            if eof:
                break
            if not progressed:
                # Stdin blocked on the remote window: poll; otherwise sleep until data.
                select.select([fd], [], [], min(remaining, 0.01 if pending else remaining))
        if partial and on_line is not None:
            on_line(partial.decode("utf-8", "replace"))
        remaining = max(0.0, deadline - time.monotonic())
        if not chan.status_event.wait(remaining):
            self._kill(chan)
            raise errors.HostUnreachable(self.host, f"command timed out after {limit:g}s")
        if not chan.exit_status_ready():
            raise errors.HostUnreachable(self.host, f"no exit status for {command!r}")
        return bytes(out), bytes(err)

    @staticmethod
    def _emit(buf: bytes, on_line: LineCallback | None) -> bytes:
        *lines, rest = buf.split(b"\n")
        if on_line is not None:
            for line in lines:
                on_line(line.decode("utf-8", "replace"))
        return rest

    def _kill(self, chan: paramiko.Channel) -> None:
        """Ask sshd to KILL the command's process group (RFC 4254 6.9), then close.

        OpenSSH honours this only for non-root logins (privilege separation);
        for root, ``remote_kill`` (coreutils ``timeout`` on the host) does it.
        """
        try:
            m = paramiko.Message()
            m.add_byte(cMSG_CHANNEL_REQUEST)
            m.add_int(chan.remote_chanid)
            m.add_string("signal")
            m.add_boolean(False)
            m.add_string("KILL")
            # paramiko has no public call for the "signal" request.
            chan.transport._send_user_message(m)  # type: ignore[union-attr]
        except (OSError, EOFError, paramiko.SSHException, AttributeError):
            log.debug("host %s: could not send KILL", self.host, exc_info=True)
        chan.close()

    # -- forwarded TCP ------------------------------------------------------

    def open_tcp(self, address: str, port: int, *, timeout: float | None = None) -> TCPChannel:
        """A TCP connection made by the host's sshd to ``address:port`` (``direct-tcpip``).

        Counts against ``max_sessions`` until closed. Raises
        :class:`~fleet.errors.HostError` (not retryable) when sshd cannot or
        may not connect there (nothing listens, forwarding disabled), and
        :class:`~fleet.errors.HostUnreachable` when the SSH connection fails.
        No retries: callers have a slower way to the same answer.
        """
        limit = self.options.connect_timeout if timeout is None else timeout
        if not self._sessions.acquire(timeout=limit):
            raise errors.HostUnreachable(self.host, f"no free channel within {limit:g}s")
        try:
            transport = self._ensure()
            try:
                chan = transport.open_channel(
                    "direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=limit
                )
            except paramiko.ChannelException as exc:  # the server answered: no
                raise errors.HostError(
                    self.host, f"cannot reach {address}:{port} on the host: {exc.text}"
                ) from exc
            except (OSError, EOFError, paramiko.SSHException) as exc:
                if not transport.is_active():
                    self._drop(transport)
                raise _transient(
                    self.host, f"cannot open a channel to {address}:{port}", exc
                ) from exc
        except BaseException:
            self._sessions.release()
            raise
        return TCPChannel(self.host, chan, self._sessions.release)

    # -- files --------------------------------------------------------------

    def upload(self, data: bytes | Path, remote_path: str, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote_path`` atomically (see ``_upload``)."""
        with self._sessions:
            self._upload(data, remote_path, mode=mode)

    def _upload(self, data: bytes | Path, remote_path: str, *, mode: int) -> None:
        """Write ``data`` (bytes, or a local file) to ``remote_path`` atomically.

        It goes to a temporary name in the same directory, gets ``mode``, and is
        renamed over the target with the ``posix-rename`` extension, so readers
        see the old file or the new one, never a half-written one.
        """
        directory, _, name = remote_path.rpartition("/")
        tmp = f"{directory}/.{name}.fleet-tmp-{secrets.token_hex(4)}"
        chan = self._open_channel()
        try:
            chan.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(chan)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan.close()
            raise _transient(self.host, "cannot start SFTP", exc) from exc
        with sftp, self._source(data) as fo:
            try:
                sftp.putfo(fo, tmp, confirm=True)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, remote_path)
            except (EOFError, paramiko.SSHException, TimeoutError) as exc:
                raise _transient(self.host, f"upload to {remote_path} interrupted", exc) from exc
            except OSError as exc:
                with suppress(OSError):
                    sftp.remove(tmp)
                raise errors.HostError(
                    self.host, f"upload to {remote_path} failed: {dial.reason(exc)}"
                ) from exc
        log.debug("host %s: uploaded %s (mode %o)", self.host, remote_path, mode)

    @staticmethod
    @contextmanager
    def _source(data: bytes | Path) -> Iterator[IO[bytes]]:
        if isinstance(data, bytes):
            yield io.BytesIO(data)
        else:
            with open(data, "rb") as fo:
                yield fo


class TCPChannel:
    """A byte stream to a port on the host, tunnelled over SSH; close it when done."""

    def __init__(self, host: str, chan: paramiko.Channel, release: Callable[[], None]) -> None:
        self.host = host
        self._chan = chan
        self._release: Callable[[], None] | None = release

    def sendall(self, data: bytes, *, timeout: float) -> None:
        try:
            self._chan.settimeout(timeout)
            self._chan.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _transient(self.host, "forwarded connection lost while sending", exc) from exc

    def read_line(self, *, timeout: float, limit: int = 64 << 20) -> bytes:
        """Bytes up to and including the first newline (or to EOF), within ``timeout``."""
        deadline = time.monotonic() + timeout
        buf = bytearray()
        try:
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.HostUnreachable(self.host, f"no answer within {timeout:g}s")
                self._chan.settimeout(remaining)
                data = self._chan.recv(65536)
                if not data:
                    break
                buf += data
                if len(buf) > limit:
                    raise errors.ProtocolError(self.host, f"answer longer than {limit} bytes")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _transient(self.host, "forwarded connection lost while reading", exc) from exc
        line, sep, _ = bytes(buf).partition(b"\n")
        return line + sep

    def close(self) -> None:
        self._chan.close()
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> TCPChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SSHPool:
    """One :class:`SSHConnection` per host name, shared by all threads.

    With a ``dialer``, a connection's first TCP connect is the one the dialer
    started (if it dialed that host); closing the pool closes what it holds.
    """

    def __init__(
        self,
        credentials: Credentials,
        policy: hostkeys.HostKeyPolicy,
        options: SSHOptions | None = None,
        *,
        dialer: dial.Dialer | None = None,
    ) -> None:
        self._credentials = credentials
        self._policy = policy
        self.options = options or SSHOptions()
        self._dialer = dialer
        self._lock = threading.Lock()
        self._conns: dict[str, SSHConnection] = {}

    def get(self, host: Host | str, target: SSHTarget | None = None) -> SSHConnection:
        """The connection for a ``fleet.model.Host`` (or a name plus an ``SSHTarget``)."""
        if isinstance(host, Host):
            name, target = host.name, host.ssh
        else:
            name = host
        with self._lock:
            conn = self._conns.get(name)
            if conn is not None and (target is None or conn.target == target):
                return conn
            if target is None:
                raise KeyError(name)
            if conn is not None:  # the Host document changed its address or key
                conn.close()
            conn = SSHConnection(
                name, target, self._credentials, self._policy, self.options, dialer=self._dialer
            )
            self._conns[name] = conn
            return conn

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for c in conns:
            c.close()
        if self._dialer is not None:
            self._dialer.close()

    def __enter__(self) -> SSHPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
