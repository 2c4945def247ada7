"""Kill -9 an apply for real, then resume it from the SQLite journal: nothing is duplicated."""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import support

from reconciler.hosts import memory

CLI = [sys.executable, "-m", "reconciler.cli"]


def _done(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(
                conn.execute("SELECT count(*) FROM journal WHERE status='done'").fetchone()[0]
            )
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_sigkill_mid_apply_then_resume_duplicates_nothing(tmp_path: Path) -> None:
    fleet_path = support.fleet_dir(
        tmp_path, support.app_edit("hello", regions={"ams": 3, "sea": 3})
    )
    hosts_file = tmp_path / "hosts.json"
    hosts = support.hosts_for(support.load(fleet_path), hosts_file)
    for h in hosts.hosts.values():
        h.behaviour.boot_delay_s = 1.0
        h.behaviour.time_scale = 0.15
    hosts.save()
    state = tmp_path / "state.db"
    common = ["--fleet", str(fleet_path), "--hosts", f"memory:{hosts_file}"]
    plan_file = tmp_path / "plan.json"
    out = subprocess.run(
        [*CLI, "plan", *common, "--out", str(plan_file)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    total = out.stdout.count("\n    + ") or 1
    apply_cmd = [
        *CLI,
        "apply",
        str(plan_file),
        "--yes",
        *common,
        "--state",
        str(state),
        "--parallelism",
        "2",
    ]

    proc = subprocess.Popen(apply_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while _done(state) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "apply finished before it could be killed; slow the hosts down"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = _done(state)
    assert 5 <= done_before < 30 and total

    resumed = subprocess.run(apply_cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "already done" in resumed.stdout  # it resumed rather than starting over

    after = memory.MemoryFleet(hosts_file)
    for name, h in after.hosts.items():
        creates = collections.Counter(tuple(e[1:3]) for e in h.log if e[0] == "create")
        dupes = {k: n for k, n in creates.items() if n > 1}
        assert not dupes, f"{name} created twice: {dupes}"
    fleet = support.load(fleet_path)
    assert len(support.machines(after)) == sum(a.machine_count for a in fleet.apps.values())
    replan = subprocess.run(
        [*CLI, "plan", *common, "--detailed-exitcode"], capture_output=True, text=True
    )
    assert replan.returncode == 0, replan.stdout + replan.stderr
