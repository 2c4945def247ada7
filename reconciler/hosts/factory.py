"""Build a HostClient for each Host document of the fleet.

A factory is ``Callable[[fleet.model.Host], HostClient]``. ``from_option``
reads the ``--hosts`` option (or ``$FLEET_HOSTS``):

* ``memory:PATH``: in-process hosts persisted in PATH (development, tests,
  CI demos). Created empty on first use.
* unset: the SSH transport: ``fleet-agent`` on each host over one reused,
  host-key-pinned SSH connection (:mod:`reconciler.hosts.agentclient`).

SSH settings, most specific first: ``--ssh-key`` / ``$FLEET_SSH_KEY`` / the SSH
agent for the login key; ``--known-hosts`` / ``$FLEET_KNOWN_HOSTS`` for pinned
host keys (besides pins in Host documents). When neither key nor known_hosts
is given and the local lab is up, the lab's own client key and known_hosts are
used, so the lab works with no set-up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet import model
from fleet.errors import FleetError
from reconciler.hosts import agentclient, hostkeys, memory, protocol, ssh
from reconciler.lab import lab

Factory = Callable[[model.Host], protocol.HostClient]


def from_option(
    option: str | None,
    *,
    ssh_key: str | None = None,
    known_hosts: str | None = None,
    fleet_dir: str | None = None,
) -> Factory:
    if option and option.startswith("memory:"):
        return memory.MemoryFleet(option.removeprefix("memory:")).client
    if option:
        raise FleetError(f"--hosts {option!r}: expected memory:PATH")
    return ssh_factory(ssh_key, known_hosts, fleet_dir)


@dataclass(frozen=True, slots=True)
class SSHSettings:
    ssh_key: str | None
    known_hosts: str | None
    netns: str | None = None  # the lab's management namespace, when the lab is used


def ssh_settings(ssh_key: str | None, known_hosts: str | None) -> SSHSettings:
    key = ssh_key or os.environ.get("FLEET_SSH_KEY")
    pins = known_hosts or os.environ.get("FLEET_KNOWN_HOSTS")
    lab_paths = lab.Paths(lab.DEFAULT_DIR)
    if key is None and pins is None and lab_paths.state.exists():
        return SSHSettings(
            str(lab_paths.client_key), str(lab_paths.known_hosts), lab.mgmt_netns(lab_paths)
        )
    if pins is None:
        default = Path.home() / ".ssh" / "known_hosts"
        pins = str(default) if default.exists() else None
    return SSHSettings(key, pins, os.environ.get("FLEET_SSH_NETNS") or None)


def ssh_factory(
    ssh_key: str | None, known_hosts: str | None, fleet_dir: str | None = None
) -> Factory:
    settings = ssh_settings(ssh_key, known_hosts)
    credentials = ssh.load_credentials(settings.ssh_key, fleet_dir=fleet_dir)
    pool = ssh.SSHPool(
        credentials,
        hostkeys.load_policy(settings.known_hosts),
        ssh.SSHOptions(netns=settings.netns),
    )

    def client(host: model.Host) -> protocol.HostClient:
        return agentclient.AgentClient(host, pool.get(host))

    return client
