"""Connections opened early (dial.Dialer) and the transport's own sockets.

The first tests use a plain TCP server on loopback; the last ones a real
OpenSSH sshd (sshd.py): the early socket must carry a normal, pinned login,
and a new connection's first channel must not wait for a delayed ACK.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from fleet import errors
from fleet.model import SSHTarget
from reconciler.hosts import dial, hostkeys, ssh
from tests.hosts.sshd import SSHDaemon, free_port, is_root, keygen
from tests.hosts.test_observe_port import line_server


@contextlib.contextmanager
def tcp_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A loopback server that accepts and keeps every connection (listed as accepted)."""
    srv = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(srv.accept()[0])

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1], accepted
    finally:
        srv.close()
        for c in accepted:
            c.close()


def target(port: int, address: str = "127.0.0.1") -> SSHTarget:
    return SSHTarget(address, port, "root", None)


def wait_for(predicate: object, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_dialed_socket_is_connected_and_handed_out_once() -> None:
    with tcp_server() as (port, accepted):
        d = dial.Dialer()
        d.start([("a", target(port))])
        wait_for(lambda: len(accepted) == 1)  # connected before anyone asked for it
        sock = d.take("a", target(port), timeout=5)
        assert sock is not None
        assert sock.getpeername() == ("127.0.0.1", port)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.gettimeout() == 5
        sock.sendall(b"x")
        assert accepted[0].recv(1) == b"x"
        assert d.take("a", target(port), timeout=5) is None  # once only
        sock.close()


def test_hosts_not_dialed_or_dialed_at_another_target_get_none() -> None:
    with tcp_server() as (port, accepted):
        d = dial.Dialer()
        d.start([("a", target(port))])
        assert d.take("b", target(port), timeout=5) is None
        wait_for(lambda: len(accepted) == 1)
        assert d.take("a", target(port + 1), timeout=5) is None  # the Host document changed
        accepted[0].settimeout(5)
        assert accepted[0].recv(1) == b""  # and the stale socket was closed


def test_a_refused_connect_is_a_retryable_host_unreachable() -> None:
    port = free_port()
    d = dial.Dialer()
    d.start([("a", target(port))])
    with pytest.raises(errors.HostUnreachable) as info:
        d.take("a", target(port), timeout=5)
    assert info.value.retryable
    assert f"cannot connect to 127.0.0.1:{port}" in str(info.value)


def test_names_are_left_to_the_transport() -> None:
    with tcp_server() as (port, accepted):
        d = dial.Dialer()
        d.start([("a", target(port, "localhost"))])
        assert d.take("a", target(port, "localhost"), timeout=5) is None
        time.sleep(0.05)
        assert accepted == []


def test_close_closes_what_was_not_taken() -> None:
    with tcp_server() as (port, accepted):
        d = dial.Dialer()
        d.start([("a", target(port))])
        wait_for(lambda: len(accepted) == 1)
        d.close()
        accepted[0].settimeout(5)
        assert accepted[0].recv(1) == b""
        assert d.take("a", target(port), timeout=5) is None


# -- with a real sshd ---------------------------------------------------------------

root = pytest.mark.skipif(not is_root(), reason="needs root: the test sshd")


@root
@pytest.mark.root
def test_the_pool_logs_in_over_the_early_connection(sshd: SSHDaemon, creds, fast) -> None:
    d = dial.Dialer()
    d.start([("sea-1", sshd.target())])
    wait_for(lambda: sshd.accepts() == 1)
    with ssh.SSHPool(creds, hostkeys.HostKeyPolicy(), fast, dialer=d) as pool:
        conn = pool.get("sea-1", sshd.target())
        assert conn.exec("true").ok
        assert (sshd.accepts(), conn.connects) == (1, 1)


@root
@pytest.mark.root
def test_an_early_connection_still_refuses_an_unpinned_key(
    sshd: SSHDaemon, creds, fast, tmp_path
) -> None:
    other = keygen(tmp_path / "other")
    wrong = SSHTarget("127.0.0.1", sshd.port, "root", other)
    d = dial.Dialer()
    d.start([("sea-1", wrong)])
    pool = ssh.SSHPool(creds, hostkeys.HostKeyPolicy(), fast, dialer=d)
    with pool, pytest.raises(errors.HostKeyMismatch):
        pool.get("sea-1", wrong).connect()
    assert sshd.accepts() == 1  # refused on the early connection, not retried


@root
@pytest.mark.root
def test_a_new_connections_first_channel_does_not_wait_for_a_delayed_ack(
    sshd: SSHDaemon, creds, fast
) -> None:
    # After login sshd sends two small messages nobody answers; with Nagle on in
    # sshd its answer to the first channel open then waited for our delayed ACK
    # (~40 ms, every new connection). Quick ACKs: a few ms. Best of 5 against load.
    times = []
    with line_server() as port:
        for _ in range(5):
            conn = ssh.SSHConnection("sea-1", sshd.target(), creds, hostkeys.HostKeyPolicy(), fast)
            conn.connect()
            start = time.perf_counter()
            with conn.open_tcp("127.0.0.1", port, timeout=5) as chan:
                chan.sendall(b"hi\n", timeout=5)
                assert chan.read_line(timeout=5) == b"got: hi\n"
            times.append(time.perf_counter() - start)
            conn.close()
    assert min(times) < 0.025, times
