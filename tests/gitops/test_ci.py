"""The CI dry-run as the workflows run it: a clean checkout, no SSH key, a saved snapshot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from reconciler.core import observed, snapfile
from tests.core import support
from tests.gitops.gitfixtures import RECONCILE, git

ROOT = Path(__file__).resolve().parents[2]
PLAN_SH = ROOT / "docs" / "ci" / "plan.sh"


def clean_env(home: Path) -> dict[str, str]:
    """No SSH key, no agent, no known_hosts, no in-process hosts: only what CI has."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLEET_", "SSH_", "GIT_")) and k not in ("HOME",)
    }
    env["HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def reconcile(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RECONCILE, *args], cwd=cwd, capture_output=True, text=True)


def ci_plan(repo: Path, tmp: Path, name: str) -> tuple[int, str, str]:
    """Clone ``repo`` afresh and run docs/ci/plan.sh in it: (exit code, plan.md, stderr)."""
    checkout = tmp / name
    subprocess.run(["git", "clone", "-q", str(repo), str(checkout)], check=True)
    (checkout / "docs" / "ci").mkdir(parents=True)
    shutil.copy(PLAN_SH, checkout / "docs" / "ci" / "plan.sh")  # as the docs say to
    home = tmp / f"{name}-home"
    home.mkdir()
    out = subprocess.run(
        ["bash", "docs/ci/plan.sh"],
        cwd=checkout,
        env=clean_env(home),
        capture_output=True,
        text=True,
    )
    assert not list(home.rglob("*")), "the dry-run wrote into HOME (SSH config?)"
    return out.returncode, (checkout / "plan.md").read_text(), out.stderr


def observe(repo: Path, hosts_file: Path) -> None:
    out = reconcile(
        "observe",
        "--fleet",
        ".",
        "--hosts",
        f"memory:{hosts_file}",
        "--save",
        "observed.json",
        cwd=repo,
    )
    assert out.returncode == 0, out.stderr
    git(repo, "add", "observed.json")
    git(repo, "commit", "-qm", "snapshot")


def test_ci_dry_run_exit_codes_from_a_clean_checkout(tmp_path: Path) -> None:
    repo = support.fleet_dir(tmp_path, name="fleet-repo")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "fleet")
    hosts_file = tmp_path / "hosts.json"
    support.hosts_for(support.load(repo), hosts_file)
    observe(repo, hosts_file)

    rc, md, err = ci_plan(repo, tmp_path, "pr1")
    assert rc == 2, err
    assert md.startswith("### reconcile plan: Plan: 44 to add") and "<details>" in md

    applied = reconcile(
        "apply",
        "--fleet",
        ".",
        "--hosts",
        f"memory:{hosts_file}",
        "--yes",
        "--state",
        str(tmp_path / "s.db"),
        cwd=repo,
    )
    assert applied.returncode == 0, applied.stderr
    observe(repo, hosts_file)
    rc, md, err = ci_plan(repo, tmp_path, "pr2")
    assert rc == 0, err
    assert "No changes" in md

    app = repo / "apps" / "hello.yaml"
    app.write_text(app.read_text().replace("internal_port: 8080", "internal_port: eighty"))
    git(repo, "commit", "-qam", "typo")
    rc, md, err = ci_plan(repo, tmp_path, "pr3")
    assert rc == 1
    assert "apps/hello.yaml:17:22" in md and md.startswith("### reconcile plan: error")


def test_workflows_run_the_tested_script() -> None:
    for name in ("github-actions.yml", "gitlab-ci.yml"):
        text = (ROOT / "docs" / "ci" / name).read_text()
        yaml.safe_load(text)  # well-formed
        assert "bash docs/ci/plan.sh" in text
    gh = yaml.safe_load((ROOT / "docs" / "ci" / "github-actions.yml").read_text())
    steps = gh["jobs"]["plan"]["steps"]
    assert any("gh pr comment" in s.get("run", "") for s in steps)
    assert any(s.get("if") == "steps.plan.outputs.exitcode == '1'" for s in steps)


SECRET_KEYS = re.compile(r"private_?key|secret|password|passphrase|token|psk|credential", re.I)


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k in value] + [x for v in value.values() for x in _keys(v)]
    if isinstance(value, list):
        return [x for v in value for x in _keys(v)]
    return []


def test_observed_snapshot_holds_no_secrets(tmp_path: Path) -> None:
    fleet = support.fleet_dir(tmp_path)
    hosts_file = tmp_path / "hosts.json"
    support.hosts_for(support.load(fleet), hosts_file)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {**os.environ, "FLEET_SSH_KEY": str(key)}
    base = ["--fleet", str(fleet), "--hosts", f"memory:{hosts_file}"]
    for args in (
        ["apply", *base, "--yes", "--state", str(tmp_path / "s.db")],
        ["observe", *base, "--save", str(tmp_path / "observed.json")],
    ):
        out = subprocess.run([RECONCILE, *args], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
    text = (tmp_path / "observed.json").read_text()
    # the saved file keeps resources apart from their hosts (bodies): scan them decoded too
    snap = {"saved": json.loads(text), **observed.snapshot_to_json(snapfile.loads(text))}
    assert snap["hosts"] and any(h["resources"] for h in snap["hosts"])
    private_body = "".join(key.read_text().splitlines()[1:-1])
    public = key.with_suffix(".pub").read_text().split()[1]
    assert private_body[:40] not in text and public not in text
    assert "PRIVATE KEY" not in text and "ssh-ed25519" not in text and "ssh-rsa" not in text
    assert str(key) not in text and "known_hosts" not in text
    assert [k for k in _keys(snap) if SECRET_KEYS.search(k)] == []
