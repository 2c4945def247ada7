"""The PostgreSQL state backend: one lock, journal and history for a team. I/O.

Several operators or ``reconcile watch`` processes on different machines share
one database. The apply lock is a session-level advisory lock
(``pg_try_advisory_lock``): PostgreSQL itself releases it when the holder's
connection ends, so a crashed or killed apply never leaves a stale lock behind
(unlike SQLite, which has to guess from PIDs on one machine). Beside the
advisory lock a row in ``fleet_lock`` records who holds it (holder, nonce,
since, host, pid, purpose and the server backend pid); a row whose advisory
lock nobody holds any more is stale and ignored. ``force_unlock`` with the
nonce terminates the holder's server session (for a holder whose connection
hangs, e.g. a laptop that went to sleep) and so frees the lock.

Every journal record is its own autocommitted statement, as in SQLite. The
one connection is shared by the apply's worker threads under a mutex.
psycopg is imported only here; its errors become :class:`StateError`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from fleet.errors import LockError, StateError
from reconciler.state import base

log = logging.getLogger(__name__)

# The advisory lock key for the fleet-wide apply lock ("fleetrec" as an int64);
# per-region locks can later take keys of their own beside it.
APPLY_LOCK_KEY = 0x666C656574726563

SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_lock (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, nonce TEXT NOT NULL, since TIMESTAMPTZ NOT NULL,
    hostname TEXT NOT NULL, pid INTEGER NOT NULL, purpose TEXT NOT NULL,
    backend_pid INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_journal (
    apply_id TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, etag TEXT,
    message TEXT NOT NULL, updated_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (apply_id, step));
CREATE TABLE IF NOT EXISTS fleet_journal_log (
    seq BIGSERIAL PRIMARY KEY, apply_id TEXT NOT NULL, step TEXT NOT NULL,
    status TEXT NOT NULL, at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_applies (
    seq BIGSERIAL, apply_id TEXT PRIMARY KEY, fleet_commit TEXT,
    started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ, outcome TEXT,
    summary JSONB NOT NULL, report JSONB, attempts INTEGER NOT NULL DEFAULT 1,
    trigger TEXT NOT NULL DEFAULT '', actions JSONB NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS fleet_plans (
    digest TEXT NOT NULL, fleet_commit TEXT, created_at TIMESTAMPTZ NOT NULL,
    summary JSONB NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_status (
    name TEXT PRIMARY KEY, doc JSONB NOT NULL, updated_at TIMESTAMPTZ NOT NULL);
"""


def _iso(when: dt.datetime | None) -> str | None:
    """A server timestamp as the SQLite backend writes it (ISO 8601, UTC, seconds)."""
    if when is None:
        return None
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://..."
    where = info.get("host") or "localhost"
    return f"postgresql://{info.get('user') or ''}@{where}/{info.get('dbname') or ''}"


class PostgresBackend:
    def __init__(self, url: str) -> None:
        self.url = _redact(url)
        self._mutex = threading.Lock()
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
            # Two processes creating the schema at once would race; serialize on a
            # transaction-level advisory lock of its own.
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (APPLY_LOCK_KEY - 1,))
                self._db.execute(SCHEMA)
        except psycopg.Error as exc:
            raise StateError(f"state store {self.url}: {_first_line(exc)}") from exc
        self._held: str | None = None  # the nonce of the lock this session holds

    @contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._mutex:
            try:
                with self._db.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                raise StateError(f"state store {self.url}: {_first_line(exc)}") from exc

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    # -------------------------------------------------------------- lock

    def _lock_row(self, cur: psycopg.Cursor[Any]) -> tuple[base.LockInfo, int] | None:
        cur.execute(
            "SELECT holder, nonce, since, hostname, pid, purpose, backend_pid "
            "FROM fleet_lock WHERE name = 'apply'"
        )
        row = cur.fetchone()
        if row is None:
            return None
        holder, nonce, since, hostname, pid, purpose, backend_pid = row
        info = base.LockInfo(holder, nonce, _iso(since) or "", hostname, pid, purpose)
        return info, int(backend_pid)

    def _advisory_held(self, cur: psycopg.Cursor[Any], backend_pid: int) -> bool:
        """Whether server session ``backend_pid`` holds the apply advisory lock."""
        cur.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = %s AND ((classid::bigint << 32) | objid::bigint) = %s",
            (backend_pid, APPLY_LOCK_KEY & 0xFFFFFFFFFFFFFFFF),
        )
        row = cur.fetchone()
        return bool(row and row[0])

    def acquire(self, holder: str, purpose: str) -> base.LockInfo:
        _, hostname, pid = base.me()
        nonce = secrets.token_hex(8)
        with self._cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (APPLY_LOCK_KEY,))
            row = cur.fetchone()
            if not (row and row[0]):
                found = self._lock_row(cur)
                if found is None:
                    raise LockError("another apply holds the lock (no holder recorded yet)")
                held = found[0]
                raise LockError(
                    f"another apply holds the lock: {held.describe()}; "
                    f"if it is dead elsewhere: reconcile force-unlock {held.nonce}",
                    holder=held.holder,
                    nonce=held.nonce,
                    since=held.since,
                )
            cur.execute(
                "INSERT INTO fleet_lock VALUES ('apply', %s, %s, now(), %s, %s, %s, "
                "pg_backend_pid()) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "nonce = excluded.nonce, since = excluded.since, hostname = excluded.hostname, "
                "pid = excluded.pid, purpose = excluded.purpose, "
                "backend_pid = excluded.backend_pid",
                (holder, nonce, hostname, pid, purpose),
            )
            mine = self._lock_row(cur)
        assert mine is not None
        self._held = nonce
        return mine[0]

    def release(self, nonce: str) -> None:
        if self._held != nonce:
            return  # not ours: releasing another session's lock is force_unlock's job
        with self._cursor() as cur:
            cur.execute("DELETE FROM fleet_lock WHERE name = 'apply' AND nonce = %s", (nonce,))
            cur.execute("SELECT pg_advisory_unlock(%s)", (APPLY_LOCK_KEY,))
        self._held = None

    def force_unlock(self, nonce: str) -> base.LockInfo:
        if self._held == nonce:
            info = self.current_lock()
            self.release(nonce)
            if info is None:
                raise LockError("the lock is not held")
            return info
        with self._cursor() as cur:
            found = self._lock_row(cur)
            if found is None or not self._advisory_held(cur, found[1]):
                raise LockError("the lock is not held")
            info, backend_pid = found
            if info.nonce != nonce:
                raise LockError(f"nonce {nonce} does not match the lock: {info.describe()}")
            # Ending the holder's session is what frees a session-level advisory lock.
            cur.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
            cur.execute("DELETE FROM fleet_lock WHERE name = 'apply' AND nonce = %s", (nonce,))
        return info

    def current_lock(self) -> base.LockInfo | None:
        with self._cursor() as cur:
            found = self._lock_row(cur)
            if found is None or not self._advisory_held(cur, found[1]):
                return None  # no row, or its session ended: PostgreSQL freed the lock
            return found[0]

    # -------------------------------------------------------------- journal

    def journal(self, apply_id: str) -> dict[str, base.Entry]:
        rows = self._rows(
            "SELECT step, status, etag, message, updated_at FROM fleet_journal WHERE apply_id = %s",
            (apply_id,),
        )
        return {
            r[0]: base.Entry(r[0], base.Status(r[1]), r[2], r[3], _iso(r[4]) or "") for r in rows
        }

    def record(
        self,
        apply_id: str,
        step: str,
        status: base.Status,
        etag: str | None = None,
        message: str = "",
    ) -> None:
        with self._cursor() as cur, self._db.transaction():
            cur.execute(
                "INSERT INTO fleet_journal VALUES (%s, %s, %s, %s, %s, now()) "
                "ON CONFLICT (apply_id, step) DO UPDATE SET status = excluded.status, "
                "etag = excluded.etag, message = excluded.message, updated_at = now()",
                (apply_id, step, status.value, etag, message),
            )
            cur.execute(
                "INSERT INTO fleet_journal_log (apply_id, step, status, at) "
                "VALUES (%s, %s, %s, now())",
                (apply_id, step, status.value),
            )

    def journal_log(self, apply_id: str) -> list[tuple[str, str]]:
        rows = self._rows(
            "SELECT step, status FROM fleet_journal_log WHERE apply_id = %s ORDER BY seq",
            (apply_id,),
        )
        return [(r[0], r[1]) for r in rows]

    # -------------------------------------------------------------- history

    def begin_apply(
        self,
        apply_id: str,
        commit: str | None,
        summary: Mapping[str, Any],
        trigger: str = "",
        actions: Sequence[str] = (),
    ) -> None:
        self._rows(
            "INSERT INTO fleet_applies (apply_id, fleet_commit, started_at, summary, trigger, "
            "actions) VALUES (%s, %s, now(), %s, %s, %s) ON CONFLICT (apply_id) DO UPDATE SET "
            "attempts = fleet_applies.attempts + 1, finished_at = NULL, trigger = excluded.trigger",
            (
                apply_id,
                commit,
                Jsonb(dict(summary)),
                trigger or base.default_trigger(),
                Jsonb(list(actions)),
            ),
        )

    def finish_apply(self, apply_id: str, outcome: str, report: Mapping[str, Any]) -> None:
        self._rows(
            "UPDATE fleet_applies SET finished_at = now(), outcome = %s, report = %s "
            "WHERE apply_id = %s",
            (outcome, Jsonb(dict(report)), apply_id),
        )

    def record_plan(self, digest: str, commit: str | None, summary: Mapping[str, Any]) -> None:
        self._rows(
            "INSERT INTO fleet_plans VALUES (%s, %s, now(), %s)",
            (digest, commit, Jsonb(dict(summary))),
        )

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT apply_id, fleet_commit, started_at, finished_at, outcome, summary, attempts, "
            "trigger, actions, report FROM fleet_applies "
            "ORDER BY started_at DESC, seq DESC LIMIT %s",
            (limit,),
        )
        out = []
        for r in rows:
            rec = dict(zip(base.HISTORY_KEYS, r, strict=True))
            rec["started_at"] = _iso(rec["started_at"])
            rec["finished_at"] = _iso(rec["finished_at"])
            out.append(rec)
        return out

    # -------------------------------------------------------------- status

    def put_status(self, name: str, doc: Mapping[str, Any]) -> None:
        self._rows(
            "INSERT INTO fleet_status VALUES (%s, %s, now()) ON CONFLICT (name) DO UPDATE "
            "SET doc = excluded.doc, updated_at = now()",
            (name, Jsonb(json.loads(json.dumps(dict(doc))))),
        )

    def get_status(self, name: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT doc FROM fleet_status WHERE name = %s", (name,))
        return dict(rows[0][0]) if rows else None

    def close(self) -> None:
        with self._mutex:
            self._db.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
