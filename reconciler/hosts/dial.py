"""TCP connections to the hosts' sshd: how they are opened, and opening them early.

Its own module, without paramiko, for two reasons:

* every SSH connection's socket is made here (:func:`open_socket`): our own
  socket, not paramiko's, so that it has ``TCP_NODELAY`` (paramiko leaves Nagle
  on: ~40 ms per command on loopback, LAB-NOTES.md), keepalives, and
  acknowledges at once whatever it reads (``TCP_QUICKACK``, see
  :class:`QuickAckSocket`);
* a command that is about to talk to many hosts can start connecting before it
  has even imported the SSH library (:class:`Dialer`). Accepting a connection
  costs each host's sshd a fork and a re-exec of itself, ~20 ms before its
  first byte; that now runs on the hosts (or, in the lab, on the other core)
  while this process loads paramiko and the keys. Nothing is sent on these
  sockets until the SSH transport takes them, and they are checked as any
  other: the host key is verified by the transport afterwards.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import threading
import time
from collections.abc import Iterable
from contextlib import suppress

from fleet import errors
from fleet.model import SSHTarget
from reconciler import netns as netns_mod

_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # Linux only


class QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges what it received at once (``TCP_QUICKACK``).

    Why: right after login sshd sends two small messages we do not answer (a
    host-keys notice and a debug line), and sshd has Nagle on, so its answer to
    our first channel open waited for our delayed ACK: ~40 ms on every new
    connection. Linux leaves quick-ACK mode again by itself, so it is set after
    every read: one cheap system call per read that paramiko makes.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        with suppress(OSError):
            self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return data


def reason(exc: BaseException) -> str:
    """A short text for a network failure, for one-line errors."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, EOFError):
        return "connection closed by the remote side"
    return str(exc) or type(exc).__name__


def _unreachable(host: str, target: SSHTarget, why: str) -> errors.HostUnreachable:
    return errors.HostUnreachable(host, f"cannot connect to {target.address}:{target.port}: {why}")


def _tune(plain: socket.socket, timeout: float) -> socket.socket:
    """``plain`` as a :class:`QuickAckSocket` (where Linux has it), Nagle off, keepalive on."""
    sock = plain
    if _TCP_QUICKACK:
        sock = QuickAckSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def open_socket(
    host: str, target: SSHTarget, timeout: float, netns: str | None = None
) -> socket.socket:
    """A connected socket to ``target`` (inside ``netns`` if given); ``HostUnreachable`` if not."""
    try:
        plain = netns_mod.connect(netns, target.address, target.port, timeout)
    except OSError as exc:
        raise _unreachable(host, target, reason(exc)) from exc
    return _tune(plain, timeout)


class Dialer:
    """Connections started ahead of need, one per host, handed out once each.

    :meth:`start` begins a non-blocking connect to every host whose SSH address
    is an IP address (names are left to the transport, which resolves them);
    it returns at once. :meth:`take` finishes one host's connect (``timeout``
    counts from the start) and hands the socket over, or raises
    ``HostUnreachable`` as :func:`open_socket` would; it returns None for a
    host it was not asked to dial, or whose Host document now names another
    target. Thread-safe.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._lock = threading.Lock()
        # host name -> (target, socket or None, when started, error of the start)
        self._pending: dict[str, tuple[SSHTarget, socket.socket | None, float, str]] = {}

    def start(self, targets: Iterable[tuple[str, SSHTarget]]) -> None:
        """Begin connecting to each (host name, target); returns without waiting."""
        for name, target in targets:
            try:
                version = ipaddress.ip_address(target.address).version
            except ValueError:
                continue  # a name: resolving it here would block
            started = time.monotonic()
            sock, error = self._begin(socket.AF_INET6 if version == 6 else socket.AF_INET, target)
            with self._lock:
                old = self._pending.pop(name, None)
                self._pending[name] = (target, sock, started, error)
            if old is not None and old[1] is not None:
                old[1].close()

    def _begin(self, family: int, target: SSHTarget) -> tuple[socket.socket | None, str]:
        """A socket whose connect is under way, or the reason it could not start."""
        sock: socket.socket | None = None
        try:
            if self.netns:
                sock = netns_mod.socket_in(self.netns, family)
            else:
                sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((target.address, target.port))
            if code in (0, errno.EINPROGRESS):
                return sock, ""
            error = os.strerror(code)
        except OSError as exc:
            error = reason(exc)
        if sock is not None:
            sock.close()
        return None, error

    def take(self, host: str, target: SSHTarget, timeout: float) -> socket.socket | None:
        with self._lock:
            entry = self._pending.pop(host, None)
        if entry is None:
            return None
        dialed, sock, started, error = entry
        if dialed != target:
            if sock is not None:
                sock.close()
            return None
        if sock is None:
            raise _unreachable(host, target, error)
        try:
            remaining = max(0.0, started + timeout - time.monotonic())
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            if not poller.poll(remaining * 1000):
                raise TimeoutError
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
        except OSError as exc:
            sock.close()
            raise _unreachable(host, target, reason(exc)) from exc
        return _tune(sock, timeout)

    def close(self) -> None:
        """Close every socket not taken."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for _, sock, _, _ in pending.values():
            if sock is not None:
                sock.close()
