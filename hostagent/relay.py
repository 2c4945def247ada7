"""The thin client of ``fleet-agent serve``'s request channel: what SSH starts per apply.

Why: ``fleet-agent apply`` on an exec channel starts a new interpreter and
imports the whole agent (providers, jinja2, cryptography...) for every batch
of actions: 0.3-0.5 s of CPU per host on a quiet machine, seconds on a loaded
one. The supervisor already has all of that loaded. This module imports only
two built-in modules (``posix``, ``_socket``: even ``os``, ``socket`` and
``json`` cost tens of milliseconds on a loaded host), runs as
``python -E -s -S .../hostagent/relay.py apply`` (no ``site``, no ``runpy``:
~40 ms where the agent's imports take 0.4 s and more), and forwards the
request to the supervisor's unix socket (:mod:`hostagent.channel`); the
supervisor answers from a process forked off its already-loaded agent.

The wire is the exec verb's (docs/protocol.md): the request as ``fleet-agent
apply`` reads it on stdin; the answer lines exactly as it writes them on
stdout. On the socket the client first sends one header line
(``{"verb": "apply"}``) and closes its sending side after the request; the
channel ends its answer with one trailer line ``{"exit": N}``, which this
relay turns into its own exit status instead of printing it. An answer cut
off before the trailer exits 1 with a line on stderr: the agent's journal
makes the same apply resumable (docs/agent.md).

Falling back: when no supervisor listens (not started yet, restarting, a
stale socket file), this process becomes ``fleet-agent VERB`` (``exec``, with
stdin untouched) next to its interpreter, so bootstrap and hosts without
``serve`` work as before. A socket that is not ours (other owner, group or
world access, not a socket) is never used: the relay says so on stderr and
falls back. ``FLEET_AGENT_RELAY=never`` skips the channel;
``FLEET_AGENT_RELAY=only`` forbids the fallback (for tests and debugging).
"""

from __future__ import annotations

import _socket
import posix
import sys

SOCKET_NAME = "agent.sock"
DEFAULT_DATA = "/var/lib/fleet-agent"  # hostagent.cli.DEFAULT_DATA (not imported: start-up)
ENV_DATA = "FLEET_AGENT_DATA"
ENV_MODE = "FLEET_AGENT_RELAY"
VERBS = ("observe", "apply")
CHUNK = 1 << 16
TRAILER = b'{"exit": '
_S_IFMT, _S_IFSOCK = 0o170000, 0o140000
_SO_PEERCRED: int = getattr(_socket, "SO_PEERCRED", 17)  # Linux


class Unusable(Exception):
    """The channel cannot be used for this request (the message says why).

    ``quiet``: the normal state of a host without a supervisor (no socket, nobody
    listening), not worth a line on stderr.
    """

    def __init__(self, message: str, *, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


def _env(name: str) -> str | None:
    value = posix.environ.get(name.encode())
    return value.decode() if value is not None else None


def socket_path(data_dir: str) -> str:
    return data_dir.rstrip("/") + "/" + SOCKET_NAME


def header(verb: str) -> bytes:
    """The line that opens a request on the channel."""
    return b'{"verb": "' + verb.encode() + b'"}\n'


def check_socket(path: str) -> None:
    """Refuse anything but a socket owned by us and closed to everybody else."""
    try:
        st = posix.lstat(path)
    except FileNotFoundError:
        raise Unusable(f"{path}: no supervisor has opened it", quiet=True) from None
    if st.st_mode & _S_IFMT != _S_IFSOCK:
        raise Unusable(f"{path}: not a socket; not used")
    if st.st_uid != posix.geteuid() or st.st_mode & 0o077:
        raise Unusable(
            f"{path}: owned by uid {st.st_uid} with mode {st.st_mode & 0o7777:04o} "
            f"(want uid {posix.geteuid()}, 0600); not used"
        )


def peer_uid(sock: _socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (``SO_PEERCRED``)."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], sys.byteorder)


def connect(path: str) -> _socket.socket:
    """A connection to the supervisor's channel at ``path``, its listener checked to be us."""
    check_socket(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        uid = peer_uid(sock)
    except OSError as exc:
        sock.close()
        raise Unusable(f"{path}: {exc.strerror or exc}", quiet=True) from None
    if uid != posix.geteuid():
        sock.close()
        raise Unusable(f"{path}: answered by uid {uid}; not used")
    return sock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view) :]


def forward(sock: _socket.socket, request: bytes, verb: str, out_fd: int = 1) -> int:
    """Send one request over ``sock``; copy the answer lines to ``out_fd``; the exit status."""
    sock.sendall(header(verb) + request)
    sock.shutdown(_socket.SHUT_WR)
    pending = b""
    while chunk := sock.recv(CHUNK):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.startswith(TRAILER) and line.endswith(b"}"):
                try:
                    return int(line[len(TRAILER) : -1])
                except ValueError:
                    break
            _write_all(out_fd, line + b"\n")  # events go on as they arrive
    sys.stderr.write(
        "fleet-agent: the supervisor's request channel closed before the answer was "
        "complete; apply the same plan again to resume it\n"
    )
    return 1


def _fallback(verb: str, why: str, *, quiet: bool) -> int:
    if _env(ENV_MODE) == "only":
        sys.stderr.write(f"fleet-agent: {why} (and {ENV_MODE}=only)\n")
        return 1
    if not quiet:
        sys.stderr.write(f"fleet-agent: {why}; answering in-process\n")
        sys.stderr.flush()
    agent = sys.executable.rpartition("/")[0] + "/fleet-agent"
    posix.execv(agent, [agent, verb])
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in VERBS:
        sys.stderr.write(f"usage: python -S relay.py {{{','.join(VERBS)}}}\n")
        return 2
    verb = args[0]
    if _env(ENV_MODE) == "never":
        return _fallback(verb, "request channel off", quiet=True)
    path = socket_path(_env(ENV_DATA) or DEFAULT_DATA)
    try:
        sock = connect(path)
    except Unusable as exc:
        return _fallback(verb, str(exc), quiet=exc.quiet)
    try:
        # Read the request only now: the fallback needs stdin untouched.
        request = sys.stdin.buffer.read()
        return forward(sock, request, verb)
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
