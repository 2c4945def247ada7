"""What the host knows about serving each app at its edge: the gate of BGP announcements.

An anycast address may be announced from a host only while the host can
really serve it: its edge proxy is up and at least one healthy machine of the
app is reachable from it (locally or over the mesh). The BGP side
(announcements) asks; the proxy side answers. This protocol is the seam
between them, so each can be built and tested alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from hostagent.inventory import Inventory


class EdgeHealth(Protocol):
    def proxy_healthy(self) -> bool:
        """Whether this host's edge proxy answers right now."""
        ...

    def healthy_backends(self) -> Mapping[str, int]:
        """Per app: how many of its machines this host can reach and finds healthy."""
        ...


class LocalMachines:
    """The gate without a proxy: the host's own machines, as the supervisor recorded them.

    Used where no edge proxy runs (a host whose agent manages no routes): the
    proxy counts as healthy and only local machines count.
    """

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def proxy_healthy(self) -> bool:
        return True

    def healthy_backends(self) -> Mapping[str, int]:
        counts: dict[str, int] = {}
        for (kind, _), entry in self.inventory.read().entries.items():
            if kind != "machine":
                continue
            app = str(entry.spec.get("app", ""))
            counts.setdefault(app, 0)
            if entry.status.get("health") == "passing":
                counts[app] += 1
        return counts
