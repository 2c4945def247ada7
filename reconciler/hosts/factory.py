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

Start-up matters here (``reconcile observe`` is run in loops): importing this
module costs little. Observing goes through the connection holder when there
is one (:mod:`reconciler.hosts.control`); otherwise, and for anything else,
the command makes its own connections: the SSH transport (paramiko) is then
imported, and ``dial_ahead`` hosts get their TCP connects started just before
that import, so each host's sshd forks while we load the library.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleet import model
from fleet.errors import FleetError
from reconciler.hosts import agentclient, control, dial, hostkeys, protocol
from reconciler.lab import paths as lab_paths

if TYPE_CHECKING:
    from reconciler.hosts import ssh

Factory = Callable[[model.Host], protocol.HostClient]


def from_option(
    option: str | None,
    *,
    ssh_key: str | None = None,
    known_hosts: str | None = None,
    fleet_dir: str | None = None,
    dial_ahead: Iterable[model.Host] = (),
) -> Factory:
    """The factory ``--hosts`` asks for; SSH by default (``dial_ahead``: see ``ssh_factory``)."""
    if option and option.startswith("memory:"):
        # The in-process hosts bring the planner's model along, which a command
        # talking to real hosts over SSH never needs.
        from reconciler.hosts import memory  # noqa: PLC0415 - start-up, see the docstring

        return memory.MemoryFleet(option.removeprefix("memory:")).client
    if option:
        raise FleetError(f"--hosts {option!r}: expected memory:PATH")
    return ssh_factory(ssh_key, known_hosts, fleet_dir, dial_ahead=dial_ahead)


@dataclass(frozen=True, slots=True)
class SSHSettings:
    ssh_key: str | None
    known_hosts: str | None
    netns: str | None = None  # the lab's management namespace, when the lab is used


def ssh_settings(ssh_key: str | None, known_hosts: str | None) -> SSHSettings:
    key = ssh_key or os.environ.get("FLEET_SSH_KEY")
    pins = known_hosts or os.environ.get("FLEET_KNOWN_HOSTS")
    lab = lab_paths.Paths(lab_paths.DEFAULT_DIR)
    if key is None and pins is None and lab.state.exists():
        return SSHSettings(str(lab.client_key), str(lab.known_hosts), lab_paths.mgmt_netns(lab))
    if pins is None:
        default = Path.home() / ".ssh" / "known_hosts"
        pins = str(default) if default.exists() else None
    return SSHSettings(key, pins, os.environ.get("FLEET_SSH_NETNS") or None)


def ssh_factory(
    ssh_key: str | None,
    known_hosts: str | None,
    fleet_dir: str | None = None,
    *,
    dial_ahead: Iterable[model.Host] = (),
) -> Factory:
    """Clients over SSH: observing through the connection holder when there is one
    (``$FLEET_SSH_PERSIST``, :mod:`reconciler.hosts.control`), else, and for
    everything but observing, over this command's own pool of connections."""
    settings = ssh_settings(ssh_key, known_hosts)
    if settings.ssh_key:
        control.key_outside_repo(settings.ssh_key, "ssh key", fleet_dir)
    # No key file and no agent: no holder to start; the direct path says what is missing.
    has_key = bool(settings.ssh_key or os.environ.get("SSH_AUTH_SOCK"))
    persist = control.persist_seconds() if has_key else 0.0
    held = control.ensure_holder(
        control.Settings(settings.ssh_key, settings.known_hosts, settings.netns, persist)
    )
    if held is None:
        pool = _pool(settings, fleet_dir, dial_ahead)
        return lambda host: agentclient.AgentClient(host, pool.get(host))
    lock = threading.Lock()
    direct: list[ssh.SSHPool] = []

    def own(host: model.Host) -> ssh.SSHConnection:
        with lock:
            if not direct:
                direct.append(_pool(settings, fleet_dir, ()))
        return direct[0].get(host)

    def client(host: model.Host) -> protocol.HostClient:
        conn = control.HeldConnection(held, host.name, host.ssh, lambda: own(host))
        return agentclient.AgentClient(host, conn)

    return client


def _pool(
    settings: SSHSettings, fleet_dir: str | None, dial_ahead: Iterable[model.Host]
) -> ssh.SSHPool:
    """This command's own connections. The TCP connects to the ``dial_ahead`` hosts
    (those it is about to talk to) start before the transport is imported; the
    connections' first attempts take those sockets. Keys and pins are checked as always.
    """
    dialer = dial.Dialer(settings.netns)
    dialer.start((h.name, h.ssh) for h in dial_ahead)
    # The transport: paramiko and cryptography, most of a command's start-up.
    from reconciler.hosts import ssh  # noqa: PLC0415 - see the docstring

    try:
        credentials = ssh.load_credentials(settings.ssh_key, fleet_dir=fleet_dir)
        policy = hostkeys.load_policy(settings.known_hosts)
    except BaseException:
        dialer.close()
        raise
    return ssh.SSHPool(credentials, policy, ssh.SSHOptions(netns=settings.netns), dialer=dialer)
