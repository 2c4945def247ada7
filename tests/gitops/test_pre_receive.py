"""A real `git push` to a bare repository with our pre-receive hook installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECONCILE = str(Path(sys.executable).with_name("reconcile"))
IDENTITY = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=check
    )


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    bare = tmp_path / "fleet.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    result = subprocess.run(
        [RECONCILE, "hook", "install", "--repo", str(bare), "--path", "fleet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, capture_output=True)
    shutil.copytree(ROOT / "examples", work / "fleet")
    git(work, "checkout", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "the fleet")
    return bare, work


def rev(repo: Path, ref: str) -> str:
    return git(repo, "rev-parse", ref, check=False).stdout.strip()


def test_valid_push_lands(remote: tuple[Path, Path]) -> None:
    bare, work = remote
    push = git(work, "push", "-q", "origin", "main", check=False)
    assert push.returncode == 0, push.stderr
    assert "remote: fleet: refs/heads/main at" in push.stderr
    assert "valid (4 hosts, 4 apps)" in push.stderr
    assert rev(bare, "main") == rev(work, "HEAD")


def test_invalid_push_is_rejected_with_file_and_line(remote: tuple[Path, Path]) -> None:
    bare, work = remote
    assert git(work, "push", "-q", "origin", "main", check=False).returncode == 0
    good = rev(bare, "main")
    app = work / "fleet" / "apps" / "hello.yaml"
    app.write_text(app.read_text().replace("internal_port: 8080", "internal_port: eighty"))
    git(work, "commit", "-qam", "typo")
    push = git(work, "push", "origin", "main", check=False)
    assert push.returncode != 0
    assert (
        "remote:   fleet/apps/hello.yaml:17:22: App/hello: spec.services[0].internal_port: "
        "must be integer, got string 'eighty'"
    ) in push.stderr
    assert "remote: fleet: push rejected; nothing was changed" in push.stderr
    assert "pre-receive hook declined" in push.stderr
    assert rev(bare, "main") == good  # the ref did not move


def test_install_refuses_a_non_bare_path(tmp_path: Path) -> None:
    result = subprocess.run(
        [RECONCILE, "hook", "install", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "not a bare Git repository" in result.stderr
