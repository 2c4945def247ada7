"""A real `git push` to a bare repository applies the deploy branch and streams progress."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.state import base
from tests.core import support
from tests.gitops.gitfixtures import IDENTITY, git, make_remote, rev, slow_hosts


def test_push_is_applied_with_progress_in_the_push_output(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    push = git(remote.work, "push", "origin", "main", check=False)
    assert push.returncode == 0, push.stderr
    err = push.stderr
    assert "remote: fleet: refs/heads/main at" in err and "valid (4 hosts, 4 apps)" in err
    assert "remote: fleet: fleet at " in err and "Plan: 44 to add" in err
    assert "remote: fleet:   " in err and ": running" in err  # per-action progress
    assert "remote: fleet: apply complete; full report: reconcile history --show" in err
    assert len(support.machines(remote.hosts)) > 0
    state = base.open_state(remote.state)
    try:
        [rec] = state.history()
        assert rec["fleet_commit"] == rev(remote.work, "HEAD") and rec["outcome"] == "ok"
        assert rec["trigger"].startswith("post-receive: push of ")
        assert "refs/heads/main" in rec["trigger"]
    finally:
        state.close()

    # The same push again changes nothing; another branch is validated, not applied.
    git(remote.work, "checkout", "-q", "-b", "feature")
    remote.commit("more hello", regions={"ams": 2, "sea": 2})
    push = git(remote.work, "push", "origin", "feature", check=False)
    assert push.returncode == 0, push.stderr
    assert "refs/heads/feature: validated only; deploys follow refs/heads/main" in push.stderr
    assert "Plan:" not in push.stderr


def test_two_near_simultaneous_pushes_apply_one_after_the_other(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    assert git(remote.work, "push", "-q", "origin", "main", check=False).returncode == 0
    slow_hosts(remote.hosts_file, boot_s=2.0)
    first = remote.commit("hello x2", regions={"ams": 2, "sea": 2})
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(remote.work), str(other)], check=True)
    second_remote = type(remote)(remote.bare, other, remote.hosts_file, remote.state)
    second = second_remote.commit("hello x3", regions={"ams": 3, "sea": 3})
    git(other, "remote", "set-url", "origin", str(remote.bare))

    a = subprocess.Popen(
        ["git", *IDENTITY, "push", "origin", "main"],
        cwd=remote.work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert a.stderr is not None
    lines_a: list[str] = []
    for line in a.stderr:  # wait until A's post-receive is applying, then push B
        lines_a.append(line)
        if "applying" in line:
            break
    b = git(other, "push", "origin", "main", check=False)
    _, rest = a.communicate(timeout=60)
    err_a = "".join(lines_a) + rest
    assert a.returncode == 0 and b.returncode == 0, err_a + b.stderr
    assert "waiting for the apply lock" in b.stderr  # B said why it waited
    assert "apply complete" in err_a and "apply complete" in b.stderr

    state = base.open_state(remote.state)
    try:
        history = list(reversed(state.history()))
    finally:
        state.close()
    commits = [h["fleet_commit"] for h in history]
    assert commits[-2:] == [first, second]  # in push order, never interleaved
    assert history[-1]["started_at"] >= history[-2]["finished_at"]
    hellos = [m for m in support.machines(remote.hosts) if m[1] == "hello"]
    assert len(hellos) == 6  # the second push's fleet is what runs
