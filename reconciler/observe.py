"""Observe every host of the fleet in parallel into a snapshot. I/O shell.

A host that cannot be observed (transport failure, protocol mismatch) is
recorded as unreachable with the error; the planner then defers everything
on it. Nothing is retried here: a later observation is the retry.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
from types import MappingProxyType

from fleet import model
from fleet.errors import HostError
from reconciler.core import observed
from reconciler.hosts import factory


def observe_all(
    fleet: model.Fleet, clients: factory.Factory, parallelism: int = 10
) -> observed.Snapshot:
    hosts = sorted(fleet.hosts.values(), key=lambda h: h.name)

    def one(host: model.Host) -> observed.HostObservation:
        try:
            return clients(host).observe()
        except HostError as exc:
            return observed.HostObservation.unreachable(host.name, exc.message)

    with cf.ThreadPoolExecutor(max_workers=max(1, parallelism)) as pool:
        answers = list(pool.map(one, hosts))
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return observed.Snapshot(MappingProxyType({a.host: a for a in answers}), taken_at=now)
