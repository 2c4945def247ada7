"""Observe through the supervisor's port over a real sshd, and the fallback to exec.

The "host" is this machine's loopback, as seen by a real OpenSSH sshd
(sshd.py): ``direct-tcpip`` channels go through that sshd to 127.0.0.1. The
port is a real :class:`hostagent.listener.ObserveListener`; the exec fallback
runs the real ``fleet-agent observe`` from this venv.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import errors, model
from fleet.model import Capacity, Hypervisor
from hostagent import config as agent_config
from hostagent import listener
from hostagent.agent import Agent, Facts
from hostagent.inventory import Inventory
from reconciler.hosts import agentclient, hostkeys, ssh
from tests.hostagent.test_agent import Recorder, action
from tests.hosts.sshd import SSHDaemon, free_port

pytestmark = pytest.mark.root

FLEET_AGENT = Path(sys.executable).parent / "fleet-agent"


def connection(sshd: SSHDaemon, creds: ssh.Credentials, opts: ssh.SSHOptions) -> ssh.SSHConnection:
    return ssh.SSHConnection("sea-1", sshd.target(), creds, hostkeys.HostKeyPolicy(), opts)


@contextlib.contextmanager
def line_server(accepted: list[int] | None = None) -> Iterator[int]:
    """A loopback server that answers each line with ``got: LINE``; counts in ``accepted``."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                if accepted is not None:
                    accepted.append(1)
                with conn, conn.makefile("rb") as f:
                    conn.sendall(b"got: " + f.readline())

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield port
    finally:
        srv.close()


def test_direct_tcpip_reaches_a_loopback_listener_on_the_host(sshd, creds, fast):
    c = connection(sshd, creds, fast)
    with line_server() as port:
        for i in range(3):  # one SSH connection, several channels, each one closed
            with c.open_tcp("127.0.0.1", port, timeout=5) as chan:
                chan.sendall(f"hello {i}\n".encode(), timeout=5)
                assert chan.read_line(timeout=5) == f"got: hello {i}\n".encode()
    assert sshd.accepts() == 1
    c.close()


def test_nothing_listening_is_a_permanent_host_error_and_frees_the_slot(sshd, creds):
    opts = ssh.SSHOptions(connect_timeout=3, retries=1, max_sessions=1)
    c = connection(sshd, creds, opts)
    port = free_port()
    for _ in range(3):  # with one slot, a leaked slot would time out the second try
        with pytest.raises(errors.HostError) as info:
            c.open_tcp("127.0.0.1", port, timeout=3)
        assert not info.value.retryable and f"127.0.0.1:{port}" in str(info.value)
    assert c.exec("true").ok  # the connection survived
    c.close()


# -- AgentClient.observe -------------------------------------------------------


@pytest.fixture
def host(sshd: SSHDaemon) -> model.Host:
    return model.Host(
        name="sea-1",
        region="sea",
        ssh=sshd.target(),
        capacity=Capacity(2, 2048),
        hypervisor=Hypervisor.QEMU,
        labels={},
        cordoned=False,
        wireguard_endpoint=None,
        private_prefix=None,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A bootstrapped agent data directory, for the exec fallback's `fleet-agent observe`."""
    agent_config.save(agent_config.Config(host="sea-1", data_dir=tmp_path))
    return tmp_path


@pytest.fixture
def agent(data_dir: Path) -> Agent:
    facts = Facts("sea-1", 2, 2048, {}, "qemu", "0.1.0", None)
    cfg = agent_config.load(data_dir)
    return Agent(Inventory(cfg.inventory_dir), {"machine": Recorder()}, facts)


def client(host: model.Host, conn: ssh.SSHConnection, data_dir: Path, port: int, **kw: object):
    cmd = f"FLEET_AGENT_DATA={data_dir} {FLEET_AGENT}"
    return agentclient.AgentClient(host, conn, cmd, observe_port=port, **kw)  # type: ignore[arg-type]


def test_observe_uses_the_supervisors_port(sshd, creds, fast, host, agent):
    data_dir = agent.inventory.directory.parent
    request = {
        "protocol_version": 1,
        "host": "sea-1",
        "actions": [action("a1", "create", "e1", None)],
    }
    agent.apply(request, lambda _: None)
    conn = connection(sshd, creds, fast)
    with listener.ObserveListener(agent, port=0) as lst:
        c = client(host, conn, data_dir, lst.port)
        seen = c.observe()
        assert c.last_observe_via == "port"
    assert seen.reachable and seen.host == "sea-1"
    assert [(r.id, r.etag) for r in seen.resources] == [("web/ams#1", "e1")]
    conn.close()


def test_observe_falls_back_to_exec_when_nothing_listens(sshd, creds, fast, host, data_dir):
    now = [0.0]
    conn = connection(sshd, creds, fast)
    c = client(host, conn, data_dir, free_port(), clock=lambda: now[0])
    seen = c.observe()
    assert c.last_observe_via == "exec" and seen.reachable and seen.host == "sea-1"
    assert seen.facts.agent_version  # the real fleet-agent answered
    conn.close()


def test_observe_falls_back_when_forwarding_is_disabled(creds_factory, host, data_dir, agent):
    daemon, creds = creds_factory("AllowTcpForwarding no")
    conn = ssh.SSHConnection("sea-1", daemon.target(), creds, hostkeys.HostKeyPolicy())
    with listener.ObserveListener(agent, port=0) as lst:
        c = client(host, conn, data_dir, lst.port)
        assert c.observe().reachable
        assert c.last_observe_via == "exec"
    conn.close()


def test_a_wrong_answer_on_the_port_falls_back_and_the_port_rests(
    sshd, creds, fast, host, data_dir
):
    now = [0.0]
    conn = connection(sshd, creds, fast)
    accepted: list[int] = []
    with line_server(accepted) as port:  # something else holds the port
        c = client(host, conn, data_dir, port, clock=lambda: now[0])
        assert c.observe().reachable and c.last_observe_via == "exec"
        assert len(accepted) == 1
        c.observe()  # within PORT_RETRY_S: straight to exec
        assert len(accepted) == 1
        now[0] += agentclient.PORT_RETRY_S
        c.observe()
        assert c.last_observe_via == "exec" and len(accepted) == 2
    conn.close()


@pytest.fixture
def creds_factory():
    daemons: list[SSHDaemon] = []

    def make(extra: str) -> tuple[SSHDaemon, ssh.Credentials]:
        d = SSHDaemon(extra_config=extra)
        daemons.append(d)
        d.start()
        return d, ssh.load_credentials(d.client_key)

    from tests.hosts.sshd import is_root

    if not is_root():
        pytest.skip("needs root: the test sshd logs in as root and uses /run")
    yield make
    for d in daemons:
        d.cleanup()
