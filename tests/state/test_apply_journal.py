"""A real apply journals every step and records history on both backends; a stop is clean."""

from __future__ import annotations

import threading
from pathlib import Path

from reconciler import apply
from reconciler.state import base
from tests.core import support


def test_apply_journals_and_records_history(backend: base.Backend, tmp_path: Path) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    plan = support.plan(fleet, hosts)
    report = apply.apply(
        plan, "digest-1", clients=hosts.hosts.__getitem__, state=backend, trigger="test: me"
    )
    assert report.ok
    journal = backend.journal("digest-1")
    assert len(journal) == len(plan.steps)
    assert {e.status for e in journal.values()} == {base.Status.DONE}
    [rec] = backend.history()
    assert rec["trigger"] == "test: me" and rec["outcome"] == "ok"
    assert len(rec["actions"]) == len(plan.changes) and rec["actions"][0][0] in "+-~"
    assert backend.current_lock() is None


def test_stop_finishes_steps_in_flight_and_defers_the_rest(
    backend: base.Backend, tmp_path: Path
) -> None:
    fleet = support.load(support.fleet_dir(tmp_path))
    hosts = support.hosts_for(fleet)
    plan = support.plan(fleet, hosts)
    stop = threading.Event()
    seen: list[str] = []

    def on_event(host: str, event: object) -> None:
        seen.append(host)
        stop.set()  # "SIGTERM" arrives while the first steps are in flight

    report = apply.apply(
        plan,
        "digest-2",
        clients=hosts.hosts.__getitem__,
        state=backend,
        on_event=on_event,
        stop=stop,
        parallelism=1,
    )
    journal = backend.journal("digest-2")
    statuses = [e.status for e in journal.values()]
    assert base.Status.STARTED not in statuses  # nothing left half-recorded
    done = [s for s, e in journal.items() if e.status is base.Status.DONE]
    assert 1 <= len(done) < len(plan.steps)
    assert not report.ok and backend.current_lock() is None
    # Applying the same plan again resumes: done steps are not sent twice.
    again = apply.apply(plan, "digest-2", clients=hosts.hosts.__getitem__, state=backend)
    assert again.ok and again.resumed == len(done)
