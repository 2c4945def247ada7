"""Fixtures for the SSH transport tests: a real sshd on loopback and a pool."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reconciler.hosts import hostkeys, ssh
from tests.hosts.sshd import SSHDaemon, is_root


@pytest.fixture
def sshd() -> Iterator[SSHDaemon]:
    if not is_root():
        pytest.skip("needs root: the test sshd logs in as root and uses /run")
    daemon = SSHDaemon()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def fast() -> ssh.SSHOptions:
    """Short timeouts and retry delays so failure tests stay quick."""
    return ssh.SSHOptions(connect_timeout=3, command_timeout=20, retries=3, backoff=0.05)


@pytest.fixture
def creds(sshd: SSHDaemon) -> ssh.Credentials:
    return ssh.load_credentials(sshd.client_key)


@pytest.fixture
def pool(creds: ssh.Credentials, fast: ssh.SSHOptions) -> Iterator[ssh.SSHPool]:
    with ssh.SSHPool(creds, hostkeys.HostKeyPolicy(), fast) as p:
        yield p
