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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


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
        self,
        apply_id: str,
        commit: str | None,
        summary: Mapping[str, Any],
        trigger: str = "",
        actions: Sequence[str] = (),
    ) -> None:
        """Start (or, for the same plan digest, resume) a history record.

        ``trigger`` says who or what asked (``cli: alice@laptop``, ``post-receive:
        push to refs/heads/main``, ``watch: drift``); ``actions`` are the plan's
        changes as ``SYMBOL ADDRESS`` lines.
        """
        ...

    def finish_apply(self, apply_id: str, outcome: str, report: Mapping[str, Any]) -> None: ...

    def record_plan(self, digest: str, commit: str | None, summary: Mapping[str, Any]) -> None: ...

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first: apply_id (the plan digest), fleet_commit, started_at, finished_at,
        outcome, summary, attempts, trigger, actions, report."""
        ...

    def put_status(self, name: str, doc: Mapping[str, Any]) -> None:
        """Store a status document (e.g. a watcher's conditions) under ``name``."""
        ...

    def get_status(self, name: str) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


def me() -> tuple[str, str, int]:
    """(holder, hostname, pid) of this process, for the lock."""
    host = socket.gethostname()
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
    return f"{user}@{host}", host, os.getpid()


def default_trigger() -> str:
    """The trigger recorded when the caller names none: a person at the command line."""
    return f"cli: {me()[0]}"


HISTORY_KEYS = (
    "apply_id",
    "fleet_commit",
    "started_at",
    "finished_at",
    "outcome",
    "summary",
    "attempts",
    "trigger",
    "actions",
    "report",
)


def open_state(url: str | None, default_dir: str = ".") -> Backend:
    """The backend for ``url``: ``postgresql://...`` or a SQLite path (default
    ``.fleet-state/state.db`` under ``default_dir``)."""
    from reconciler.state import sqlite  # noqa: PLC0415 - keep optional backends lazy

    if url and url.startswith(("postgresql://", "postgres://")):
        from reconciler.state import postgres  # noqa: PLC0415 - psycopg only when asked for

        return postgres.PostgresBackend(url)
    path = (
        url.removeprefix("sqlite://")
        if url
        else os.path.join(default_dir, ".fleet-state", "state.db")
    )
    return sqlite.SqliteBackend(path)
