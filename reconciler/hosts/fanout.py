"""Bounded parallel fan-out over hosts, with per-host results and errors.

Why: observe and apply talk to many hosts at once, but never to more than a
set number at a time, and one host's failure must not hide the others'
(Fabric's ``GroupResult``). This module knows nothing about SSH; it runs a
function per host in a thread pool and sorts the outcomes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fleet import errors

log = logging.getLogger(__name__)

H = TypeVar("H")
T = TypeVar("T")


@dataclass(slots=True)
class GroupResult(Generic[T]):
    """What each host returned (``succeeded``) or raised (``failed``), by host name."""

    succeeded: dict[str, T] = field(default_factory=dict)
    failed: dict[str, errors.FleetError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def retryable(self) -> list[str]:
        """Hosts whose failure may pass on a later attempt (unreachable, timed out)."""
        return sorted(
            h for h, e in self.failed.items() if isinstance(e, errors.HostError) and e.retryable
        )


def fan_out(
    hosts: Mapping[str, H],
    fn: Callable[[str, H], T],
    *,
    max_concurrency: int,
) -> GroupResult[T]:
    """Run ``fn(name, host)`` for every host, at most ``max_concurrency`` at a time.

    A :class:`fleet.errors.FleetError` from one host is recorded under its name
    and the others carry on. Any other exception is a bug: it is re-raised once
    every host has finished, so no work is left running behind the caller.
    """
    if max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    result: GroupResult[T] = GroupResult()
    if not hosts:
        return result
    bug: BaseException | None = None
    workers = min(max_concurrency, len(hosts))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fanout") as pool:
        futures: dict[str, Future[T]] = {n: pool.submit(fn, n, h) for n, h in hosts.items()}
        for name, fut in futures.items():
            try:
                result.succeeded[name] = fut.result()
            except errors.FleetError as exc:
                log.info("host %s failed: %s", name, exc)
                result.failed[name] = exc
            except Exception as exc:  # a bug: keep the first, let the rest finish
                log.exception("host %s: unexpected error", name)
                bug = bug or exc
    if bug is not None:
        raise bug
    return result
