"""Sockets that live in another network namespace, for reaching the local lab.

The lab never puts an address into the machine's own namespace (the
machine's real network may use the very same documentation ranges). Instead
the reconciler opens its connections *inside* the lab's management
namespace: a short-lived thread enters the namespace with ``setns(2)``,
creates the socket and exits. A socket belongs to the namespace it was
created in, so it can then be used from any thread. Needs root, as the lab does.
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


@functools.cache
def _libc() -> ctypes.CDLL:
    """The symbols already loaded into this process, the C library's among them.

    Not ``ctypes.util.find_library("c")``: that runs ``ldconfig -p`` (~50 ms),
    and it ran for every socket of every lab connection.
    """
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(
    netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket created inside network namespace ``netns`` (a name under /run/netns)."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_create() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=enter_and_create, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failed:
        raise OSError(f"cannot open a socket in network namespace {netns}: {failed[0]}")
    return made[0]


def connect(netns: str | None, address: str, port: int, timeout: float) -> socket.socket:
    """``socket.create_connection``, inside ``netns`` when one is given."""
    if not netns:
        return socket.create_connection((address, port), timeout=timeout)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket_in(netns, family)
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock
