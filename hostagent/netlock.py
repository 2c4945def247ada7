"""One lock for this host's network daemons, shared by ``apply`` and the supervisor.

``fleet-agent apply`` (a short process per request) and ``fleet-agent serve``
(the supervisor's tickers) both change the WireGuard interface and BIRD's
config. Each change is read-decide-write (observe the peers, compute the
ops, run them; render the config, ``birdc configure``), so the two must not
interleave: an advisory ``flock`` on one file in the data directory orders
them. Held for milliseconds; never across a wait.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from hostagent.inventory import Entry, Inventory

LOCK_FILE = "network.lock"


@contextlib.contextmanager
def held(data_dir: Path, name: str = LOCK_FILE) -> Iterator[None]:
    """Hold the flock on ``data_dir/name`` (the network lock unless another file is named)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / name, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def settled(inventory: Inventory | None, kind: str, rid: str) -> Entry | None:
    """The resource as last applied, if it exists and no apply is changing it now.

    A supervisor ticker acts only on such an entry: mid-apply, the inventory
    still holds the old spec while the handler already made the new one live.
    """
    if inventory is None:
        return None
    entry = inventory.read().get(kind, rid)
    if entry is None or entry.status.get("pending") or not entry.spec:
        return None
    return entry
