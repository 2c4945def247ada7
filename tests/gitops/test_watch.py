"""`reconcile watch` for real: a subprocess, a bare repo, the webhook, drift, SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.core import observed
from reconciler.gitops import status
from reconciler.hosts import memory
from reconciler.state import base
from tests.core import support
from tests.gitops.gitfixtures import RECONCILE, git, make_remote, slow_hosts


class Logs:
    """Collects the watcher's JSON log lines as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[dict[str, Any]] = []
        assert proc.stderr is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            try:
                self.lines.append(json.loads(line))
            except json.JSONDecodeError:
                self.lines.append({"msg": line.rstrip()})

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20, since: int = 0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in list(self.lines)[since:]:
                if pred(rec):
                    return rec
            time.sleep(0.02)
        raise AssertionError(f"no such log line; got {self.lines[-10:]}")


def wait_status(
    state_url: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = base.open_state(state_url)
        try:
            seen = state.get_status("gitops") or {}
        finally:
            state.close()
        if pred(seen):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"status never matched: {seen}")


def cond(doc: dict[str, Any], kind: str) -> tuple[str, str, str]:
    c = status.condition(doc, kind) or {}
    return c.get("status", ""), c.get("reason", ""), c.get("observedCommit") or ""


def stop_by_hand(hosts_file: Path, app: str) -> str:
    hosts = memory.MemoryFleet(hosts_file)
    for h in hosts.hosts.values():
        for r in list(h.items.values()):
            if r.kind == "machine" and r.spec.get("app") == app:
                h.put(
                    dataclasses.replace(
                        r,
                        status=observed.Status(observed.RunState.STOPPED, observed.Health.UNKNOWN),
                    )
                )
                return r.id
    raise AssertionError("no machine to stop")


def running(hosts_file: Path, machine_id: str) -> bool:
    for h in memory.MemoryFleet(hosts_file).hosts.values():
        for r in h.items.values():
            if r.id == machine_id:
                return r.status.state is observed.RunState.RUNNING
    return False


def test_watch_applies_commits_corrects_drift_and_stops_cleanly(tmp_path: Path) -> None:
    remote = make_remote(tmp_path, hooks=False)
    assert git(remote.work, "push", "-q", "origin", "main", check=False).returncode == 0
    first = git(remote.work, "rev-parse", "HEAD").stdout.strip()
    slow_hosts(remote.hosts_file, boot_s=0.3)
    proc = subprocess.Popen(
        [
            RECONCILE,
            "watch",
            "--repo",
            str(remote.bare),
            "--path",
            "fleet",
            "--interval",
            "0.5",
            "--webhook",
            "127.0.0.1:0",
            "--hosts",
            f"memory:{remote.hosts_file}",
            "--state",
            remote.state,
            "--cache",
            str(tmp_path / "cache"),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    logs = Logs(proc)
    try:
        # 1. The first commit: Reconciling while it applies, then Ready at that commit.
        doc = wait_status(remote.state, lambda d: cond(d, "Reconciling")[0] == "True")
        assert cond(doc, "Reconciling")[2] == first and cond(doc, "Ready")[0] == "Unknown"
        doc = wait_status(remote.state, lambda d: cond(d, "Ready")[0] == "True", timeout=60)
        assert cond(doc, "Ready") == ("True", "ReconciliationSucceeded", first)
        assert doc["lastAppliedCommit"] == first and status.condition(doc, "Reconciling") is None

        # 2. A new commit, announced by the webhook.
        hook_addr = logs.wait_for(lambda r: r["msg"].startswith("webhook listening on"))[
            "msg"
        ].split()[-1]
        second = remote.commit("hello x2", regions={"ams": 2, "sea": 2})
        assert git(remote.work, "push", "-q", "origin", "main", check=False).returncode == 0
        req = urllib.request.Request(f"http://{hook_addr}/hook", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 202
        doc = wait_status(
            remote.state,
            lambda d: cond(d, "Ready") == ("True", "ReconciliationSucceeded", second),
            timeout=60,
        )
        assert len([m for m in support.machines(remote.hosts) if m[1] == "hello"]) == 4

        # 3. Drift: a machine stopped by hand is started again on the next re-plan.
        machine = stop_by_hand(remote.hosts_file, "echo")
        assert not running(remote.hosts_file, machine)
        deadline = time.monotonic() + 20
        while not running(remote.hosts_file, machine) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running(remote.hosts_file, machine)
        state = base.open_state(remote.state)
        try:
            triggers = [h["trigger"] for h in state.history()]
        finally:
            state.close()
        assert triggers[0] == "watch: re-plan (drift check)"
        assert any(t == f"watch: new commit {second[:12]}" for t in triggers)

        # 4. SIGTERM mid-apply: the step in flight finishes, the journal stays consistent.
        slow_hosts(remote.hosts_file, boot_s=1.0)
        mark = len(logs.lines)
        remote.commit("hello x4", regions={"ams": 4, "sea": 4})
        assert git(remote.work, "push", "-q", "origin", "main", check=False).returncode == 0
        with urllib.request.urlopen(
            urllib.request.Request(f"http://{hook_addr}/", data=b"", method="POST"), timeout=5
        ):
            pass
        logs.wait_for(lambda r: r.get("event") == "booting", timeout=30, since=mark)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        logs.wait_for(lambda r: r["msg"] == "stopped")
        state = base.open_state(remote.state)
        try:
            assert state.current_lock() is None
            last = state.history()[0]
            assert last["outcome"] == "incomplete"
            journal = state.journal(last["apply_id"])
            assert base.Status.STARTED not in {e.status for e in journal.values()}
            assert any(e.message.startswith("stopped: shutdown") for e in journal.values())
            doc = state.get_status("gitops") or {}
        finally:
            state.close()
        assert cond(doc, "Ready")[:2] == ("False", "ApplyIncomplete")
        assert all("ts" in r and "level" in r for r in logs.lines if r.get("logger"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_status_command_text_and_json(tmp_path: Path, capsys: Any) -> None:
    from reconciler import cli

    url = str(tmp_path / "s.db")
    assert cli.main(["status", "--state", url]) == 0
    assert "No reconciliation recorded yet" in capsys.readouterr().out
    state = base.open_state(url)
    try:
        state.put_status(
            "gitops",
            status.failed(None, "c" * 40, "ValidationFailed", "bad yaml", "t", stalled=True),
        )
    finally:
        state.close()
    assert cli.main(["status", "--state", url, "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert cond(doc, "Stalled") == ("True", "ValidationFailed", "c" * 40)
    assert cli.main(["status", "--state", url]) == 1
    out = capsys.readouterr().out
    assert "Stalled" in out and "ValidationFailed" in out and "bad yaml" in out
