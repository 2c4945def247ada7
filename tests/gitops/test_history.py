"""History records every apply; rollback plans an earlier commit anew, asks, and applies it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import cli
from tests.core import support
from tests.gitops.gitfixtures import git, rev


def hellos(hosts_file: Path) -> int:
    from reconciler.hosts import memory

    return len([m for m in support.machines(memory.MemoryFleet(hosts_file)) if m[1] == "hello"])


def test_history_and_rollback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = support.fleet_dir(tmp_path)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "fleet")
    first = rev(repo, "HEAD")
    hosts_file = tmp_path / "hosts.json"
    support.hosts_for(support.load(repo), hosts_file)
    base = [
        "--fleet",
        str(repo),
        "--hosts",
        f"memory:{hosts_file}",
        "--state",
        str(tmp_path / "s.db"),
    ]
    assert cli.main(["apply", *base, "--yes"]) == 0
    app = repo / "apps" / "hello.yaml"
    app.write_text(app.read_text().replace("    ams: 1\n    sea: 1\n", "    ams: 3\n    sea: 3\n"))
    git(repo, "commit", "-qam", "more hello")
    second = rev(repo, "HEAD")
    assert cli.main(["apply", *base, "--yes"]) == 0
    assert hellos(hosts_file) == 6
    capsys.readouterr()

    # Rollback shows the plan and asks; anything but "yes" changes nothing.
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    assert cli.main(["rollback", "--to", first, *base]) == 1
    out = capsys.readouterr().out
    assert f"fleet at {first[:12]}: Plan: 0 to add" in out and "to destroy" in out
    assert "Rollback cancelled." in out and hellos(hosts_file) == 6

    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    assert cli.main(["rollback", "--to", first, *base]) == 0
    assert hellos(hosts_file) == 2
    assert rev(repo, "HEAD") == second  # not a git revert: the branch is untouched
    capsys.readouterr()

    assert cli.main(["history", "--state", str(tmp_path / "s.db"), "--fleet", str(repo)]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if not line.startswith(" ")]
    assert len(lines) == 3
    assert f"{first[:12]}  ok  rollback to {first}" in lines[0]
    assert f"{second[:12]}  ok  cli: " in lines[1] and f"{first[:12]}  ok  cli: " in lines[2]
    assert "- app.hello/machine[" in text

    assert (
        cli.main(["history", "--limit", "1", "--format", "json", "--state", str(tmp_path / "s.db")])
        == 0
    )
    [rec] = json.loads(capsys.readouterr().out)
    assert rec["trigger"].startswith("rollback to") and rec["report"]["ok"] is True
    assert (
        cli.main(["history", "--show", rec["apply_id"][:12], "--state", str(tmp_path / "s.db")])
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["apply_id"] == rec["apply_id"] and shown["fleet_commit"] == first
    assert shown["actions"] and shown["report"]["hosts"]
