"""The SQLite state backend: the embedded default. I/O.

One file (WAL mode). Every journal record is its own committed transaction,
so a SIGKILL loses at most the step in flight, which resume sends again. The
lock is a row taken inside ``BEGIN IMMEDIATE``; a lock whose holder process
is gone (same hostname, pid not alive) is taken over with a warning, since
SQLite has no session to end with the process the way PostgreSQL advisory
locks do.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fleet.errors import LockError, StateError
from reconciler.state import base

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS lock (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, nonce TEXT NOT NULL, since TEXT NOT NULL,
    hostname TEXT NOT NULL, pid INTEGER NOT NULL, purpose TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    apply_id TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, etag TEXT,
    message TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (apply_id, step));
CREATE TABLE IF NOT EXISTS journal_log (
    apply_id TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS applies (
    apply_id TEXT PRIMARY KEY, fleet_commit TEXT, started_at TEXT NOT NULL, finished_at TEXT,
    outcome TEXT, summary TEXT NOT NULL, report TEXT, attempts INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS plans (
    digest TEXT NOT NULL, fleet_commit TEXT, created_at TEXT NOT NULL, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS status (
    name TEXT PRIMARY KEY, doc TEXT NOT NULL, updated_at TEXT NOT NULL);
"""

# Columns added after the first release; an older state file gains them on open.
ADDED_COLUMNS = {"trigger": "TEXT NOT NULL DEFAULT ''", "actions": "TEXT NOT NULL DEFAULT '[]'"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SqliteBackend:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=10.0, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(applies)")}
            for column, decl in ADDED_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE applies ADD COLUMN {column} {decl}")
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"state store {path}: {exc}") from exc
        self._mutex = threading.Lock()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._mutex:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"state store {self.path}: {exc}") from exc

    # -------------------------------------------------------------- lock

    def _row(self) -> base.LockInfo | None:
        rows = self._db.execute(
            "SELECT holder, nonce, since, hostname, pid, purpose FROM lock WHERE name='apply'"
        ).fetchall()
        return base.LockInfo(*rows[0]) if rows else None

    def acquire(self, holder: str, purpose: str) -> base.LockInfo:
        _, hostname, pid = base.me()
        mine = base.LockInfo(holder, secrets.token_hex(8), _now(), hostname, pid, purpose)
        with self._mutex:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    held = self._row()
                    if held is not None:
                        stale = held.hostname == hostname and not _alive(held.pid)
                        if not stale:
                            raise LockError(
                                f"another apply holds the lock: {held.describe()}; "
                                f"if it is dead elsewhere: reconcile force-unlock {held.nonce}",
                                holder=held.holder,
                                nonce=held.nonce,
                                since=held.since,
                            )
                        log.warning("taking over the lock of dead process %s", held.describe())
                    self._db.execute(
                        "INSERT OR REPLACE INTO lock VALUES ('apply', ?, ?, ?, ?, ?, ?)",
                        (
                            mine.holder,
                            mine.nonce,
                            mine.since,
                            mine.hostname,
                            mine.pid,
                            mine.purpose,
                        ),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StateError(f"state store {self.path}: {exc}") from exc
        return mine

    def release(self, nonce: str) -> None:
        self._run("DELETE FROM lock WHERE name='apply' AND nonce=?", (nonce,))

    def force_unlock(self, nonce: str) -> base.LockInfo:
        with self._mutex:
            held = self._row()
        if held is None:
            raise LockError("the lock is not held")
        if held.nonce != nonce:
            raise LockError(f"nonce {nonce} does not match the lock: {held.describe()}")
        self.release(nonce)
        return held

    def current_lock(self) -> base.LockInfo | None:
        with self._mutex:
            return self._row()

    # -------------------------------------------------------------- journal

    def journal(self, apply_id: str) -> dict[str, base.Entry]:
        rows = self._run(
            "SELECT step, status, etag, message, updated_at FROM journal WHERE apply_id=?",
            (apply_id,),
        )
        return {r[0]: base.Entry(r[0], base.Status(r[1]), r[2], r[3], r[4]) for r in rows}

    def record(
        self,
        apply_id: str,
        step: str,
        status: base.Status,
        etag: str | None = None,
        message: str = "",
    ) -> None:
        now = _now()
        self._run(
            "INSERT OR REPLACE INTO journal VALUES (?, ?, ?, ?, ?, ?)",
            (apply_id, step, status.value, etag, message, now),
        )
        self._run(
            "INSERT INTO journal_log VALUES (?, ?, ?, ?)", (apply_id, step, status.value, now)
        )

    def journal_log(self, apply_id: str) -> list[tuple[str, str]]:
        rows = self._run(
            "SELECT step, status FROM journal_log WHERE apply_id=? ORDER BY rowid", (apply_id,)
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
        self._run(
            "INSERT INTO applies (apply_id, fleet_commit, started_at, summary, trigger, actions) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(apply_id) DO UPDATE SET "
            "attempts = attempts + 1, finished_at = NULL, trigger = excluded.trigger",
            (
                apply_id,
                commit,
                _now(),
                json.dumps(dict(summary), sort_keys=True),
                trigger or base.default_trigger(),
                json.dumps(list(actions)),
            ),
        )

    def finish_apply(self, apply_id: str, outcome: str, report: Mapping[str, Any]) -> None:
        self._run(
            "UPDATE applies SET finished_at=?, outcome=?, report=? WHERE apply_id=?",
            (_now(), outcome, json.dumps(dict(report), sort_keys=True), apply_id),
        )

    def record_plan(self, digest: str, commit: str | None, summary: Mapping[str, Any]) -> None:
        self._run(
            "INSERT INTO plans VALUES (?, ?, ?, ?)",
            (digest, commit, _now(), json.dumps(dict(summary), sort_keys=True)),
        )

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._run(
            "SELECT apply_id, fleet_commit, started_at, finished_at, outcome, summary, attempts, "
            "trigger, actions, report FROM applies ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (limit,),
        )
        out = []
        for r in rows:
            rec = dict(zip(base.HISTORY_KEYS, r, strict=True))
            for key in ("summary", "actions", "report"):
                rec[key] = json.loads(rec[key]) if rec[key] is not None else None
            out.append(rec)
        return out

    # -------------------------------------------------------------- status

    def put_status(self, name: str, doc: Mapping[str, Any]) -> None:
        self._run(
            "INSERT OR REPLACE INTO status VALUES (?, ?, ?)",
            (name, json.dumps(dict(doc), sort_keys=True), _now()),
        )

    def get_status(self, name: str) -> dict[str, Any] | None:
        rows = self._run("SELECT doc FROM status WHERE name=?", (name,))
        return dict(json.loads(rows[0][0])) if rows else None

    def close(self) -> None:
        with self._mutex:
            self._db.close()
