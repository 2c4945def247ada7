"""Where a lab keeps its state, and how to find out whether one is up.

Its own small module because every SSH command asks it: with no key and no
known_hosts given, ``reconcile`` uses the lab's when a lab is up
(:mod:`reconciler.hosts.factory`), and that must not import the lab's builder
(:mod:`reconciler.lab.lab`, its image registry and tools) on the way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.lab.topology import MGMT_NS

DEFAULT_DIR = Path(os.environ.get("FLEET_LAB_DIR", "/var/lib/fleet-lab"))


@dataclass(frozen=True, slots=True)
class Paths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "lab.json"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    def host_dir(self, name: str) -> Path:
        return self.root / "hosts" / name


def mgmt_netns(paths: Paths) -> str:
    """The namespace from which a lab's hosts are reached (recorded by ``up``)."""
    try:
        state = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return MGMT_NS
    return str(state.get("mgmt_netns", MGMT_NS))
