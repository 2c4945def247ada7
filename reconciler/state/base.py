"""The state backend interface: lock, journal, history. Implementations do the I/O.

The journal records every step of an apply (keyed by the plan's digest) as
``started`` before it is sent and ``done`` / ``failed`` / ``refused`` /
``skipped`` after, each record committed durably before the next step goes
out. A crashed apply is resumed by applying the same plan again: ``done``
steps are skipped, ``started`` ones are sent again (the agent's idempotence
by target etag makes that safe).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from fleet.errors import StateError


class Status(StrEnum):
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    REFUSED = "refused"
    SKIPPED = "skipped"
    DEFERRED = "deferred"


@dataclass(frozen=True, slots=True)
class LockInfo:
    holder: str
    nonce: str
    since: str  # ISO 8601 UTC
    hostname: str
    pid: int
    purpose: str

    def describe(self) -> str:
        return (
            f"held by {self.holder} (pid {self.pid} on {self.hostname}) since {self.since} "
            f"for {self.purpose}; nonce {self.nonce}"
        )


@dataclass(frozen=True, slots=True)
class Entry:
    step: str
    status: Status
    etag: str | None
    message: str
    updated_at: str


class Backend(Protocol):
    def acquire(self, holder: str, purpose: str) -> LockInfo:
        """Take the apply lock or raise :class:`~fleet.errors.LockError` naming the holder."""
        ...

    def release(self, nonce: str) -> None: ...

    def force_unlock(self, nonce: str) -> LockInfo:
        """Break the lock whose nonce is ``nonce``; refuse any other nonce."""
        ...

    def current_lock(self) -> LockInfo | None: ...

    def journal(self, apply_id: str) -> dict[str, Entry]: ...

    def record(
        self, apply_id: str, step: str, status: Status, etag: str | None = None, message: str = ""
    ) -> None: ...

    def begin_apply(
        self, apply_id: str, commit: str | None, summary: Mapping[str, Any]
    ) -> None: ...

    def finish_apply(self, apply_id: str, outcome: str, report: Mapping[str, Any]) -> None: ...

    def record_plan(self, digest: str, commit: str | None, summary: Mapping[str, Any]) -> None: ...

    def history(self, limit: int = 20) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def me() -> tuple[str, str, int]:
    """(holder, hostname, pid) of this process, for the lock."""
    host = socket.gethostname()
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
    return f"{user}@{host}", host, os.getpid()


def open_state(url: str | None, default_dir: str = ".") -> Backend:
    """The backend for ``url``: a SQLite path (default ``.fleet-state/state.db``)."""
    from reconciler.state import sqlite  # noqa: PLC0415 - keep optional backends lazy

    if url and url.startswith(("postgresql://", "postgres://")):
        raise StateError("the PostgreSQL state backend is not available yet; use a SQLite path")
    path = (
        url.removeprefix("sqlite://")
        if url
        else os.path.join(default_dir, ".fleet-state", "state.db")
    )
    return sqlite.SqliteBackend(path)
