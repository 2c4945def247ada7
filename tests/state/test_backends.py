"""Lock, journal, history and status: the same contract on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fleet.errors import LockError, StateError
from reconciler.state import base

ROOT = Path(__file__).resolve().parents[2]


def test_lock_names_holder_and_nonce_and_keeps_others_out(state_url: str) -> None:
    a, b = base.open_state(state_url), base.open_state(state_url)
    try:
        held = a.acquire("alice@laptop", "apply abc")
        assert len(held.nonce) == 16 and held.since.endswith("Z")
        with pytest.raises(LockError) as err:
            b.acquire("bob@ci", "apply def")
        assert err.value.holder == "alice@laptop" and err.value.nonce == held.nonce
        assert f"reconcile force-unlock {held.nonce}" in str(err.value)
        seen = b.current_lock()
        assert seen is not None and seen.holder == "alice@laptop" and seen.purpose == "apply abc"
        a.release(held.nonce)
        assert b.current_lock() is None
        again = b.acquire("bob@ci", "apply def")
        assert again.nonce != held.nonce
        b.release(again.nonce)
    finally:
        a.close()
        b.close()


def test_force_unlock_needs_the_right_nonce(state_url: str) -> None:
    a, b = base.open_state(state_url), base.open_state(state_url)
    try:
        held = a.acquire("alice@laptop", "apply abc")
        with pytest.raises(LockError, match="does not match"):
            b.force_unlock("0000")
        assert b.force_unlock(held.nonce).holder == "alice@laptop"
        assert b.current_lock() is None
        b.release(b.acquire("bob@ci", "apply def").nonce)
        with pytest.raises(LockError, match="not held"):
            b.force_unlock(held.nonce)
    finally:
        a.close()
        b.close()


def test_lock_of_a_killed_process_does_not_stay_held(state_url: str) -> None:
    """A holder killed with SIGKILL: its lock must not block the next apply forever."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from reconciler.state import base
        s = base.open_state({state_url!r})
        s.acquire("doomed@here", "apply doomed")
        print("held", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        state = base.open_state(state_url)
        try:
            with pytest.raises(LockError, match="doomed@here"):
                state.acquire("next@here", "apply next")
            proc.kill()
            proc.wait()
            deadline = time.monotonic() + 10
            while True:  # PostgreSQL notices the closed session a moment later
                try:
                    mine = state.acquire("next@here", "apply next")
                    break
                except LockError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            state.release(mine.nonce)
        finally:
            state.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_journal_keeps_the_last_status_and_the_full_log(backend: base.Backend) -> None:
    backend.record("p1", "a", base.Status.STARTED)
    backend.record("p1", "a", base.Status.DONE, "etag-a", "ok")
    backend.record("p1", "b", base.Status.STARTED)
    backend.record("p2", "a", base.Status.FAILED, None, "boom")
    j = backend.journal("p1")
    assert {k: (e.status, e.etag) for k, e in j.items()} == {
        "a": (base.Status.DONE, "etag-a"),
        "b": (base.Status.STARTED, None),
    }
    assert j["a"].message == "ok" and j["a"].updated_at.endswith("Z")
    assert backend.journal("p2")["a"].message == "boom"
    assert backend.journal("nope") == {}
    log = backend.journal_log("p1")  # type: ignore[attr-defined]
    assert log == [("a", "started"), ("a", "done"), ("b", "started")]


def test_history_records_commit_trigger_actions_and_results(backend: base.Backend) -> None:
    backend.begin_apply("d1", "c" * 40, {"create": 2}, "post-receive: push", ["+ app.a/x"])
    backend.finish_apply("d1", "ok", {"ok": True, "hosts": {"h": {"succeeded": ["s1"]}}})
    time.sleep(1.05)  # started_at has one-second resolution; order must not rest on ties alone
    backend.begin_apply("d2", "d" * 40, {"create": 0, "start": 1}, "", ["~ app.a/y"])
    backend.begin_apply("d2", "d" * 40, {"create": 0, "start": 1}, "watch: drift", ["~ app.a/y"])
    h = backend.history()
    assert [r["apply_id"] for r in h] == ["d2", "d1"]
    newest, oldest = h
    assert newest["attempts"] == 2 and newest["finished_at"] is None and newest["outcome"] is None
    assert newest["trigger"] == "watch: drift" and newest["actions"] == ["~ app.a/y"]
    assert oldest["fleet_commit"] == "c" * 40 and oldest["outcome"] == "ok"
    assert oldest["summary"] == {"create": 2} and oldest["report"]["hosts"]["h"]["succeeded"]
    assert oldest["trigger"] == "post-receive: push" and oldest["actions"] == ["+ app.a/x"]
    assert [r["apply_id"] for r in backend.history(limit=1)] == ["d2"]


def test_default_trigger_is_the_person_at_the_cli(backend: base.Backend) -> None:
    backend.begin_apply("d1", None, {})
    assert backend.history()[0]["trigger"] == base.default_trigger()


def test_status_documents_round_trip(backend: base.Backend) -> None:
    assert backend.get_status("watch") is None
    backend.put_status("watch", {"conditions": [{"type": "Ready", "status": "True"}]})
    backend.put_status("watch", {"conditions": [{"type": "Ready", "status": "False"}]})
    assert backend.get_status("watch") == {"conditions": [{"type": "Ready", "status": "False"}]}


def test_unreachable_postgres_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="state store postgresql://"):
        base.open_state(f"postgresql://nobody:secret@/fleet?host={tmp_path}")
    try:
        base.open_state(f"postgresql://nobody:secret@/fleet?host={tmp_path}")
    except StateError as exc:
        assert "secret" not in str(exc)
