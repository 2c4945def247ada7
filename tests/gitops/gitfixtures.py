"""Real Git for the GitOps tests: bare repositories, clones, pushes, in-process hosts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fleet import load as fleet_load
from reconciler.hosts import memory
from tests.core import support

ROOT = Path(__file__).resolve().parents[2]
RECONCILE = str(Path(sys.executable).with_name("reconcile"))
IDENTITY = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=check
    )


def rev(repo: Path, ref: str) -> str:
    return git(repo, "rev-parse", ref, check=False).stdout.strip()


@dataclass
class Remote:
    bare: Path
    work: Path
    hosts_file: Path
    state: str

    @property
    def hosts(self) -> memory.MemoryFleet:
        return memory.MemoryFleet(self.hosts_file)

    def commit(self, message: str, app: str = "hello", **changes: object) -> str:
        """Edit App ``app`` in the clone (e.g. regions=...) and commit; returns the commit."""
        edit = support.app_edit(app, **changes)
        support.fleet_dir(self.work, edit, name="fleet.tmp")
        for f in (self.work / "fleet.tmp").rglob("*.yaml"):
            dst = self.work / "fleet" / f.relative_to(self.work / "fleet.tmp")
            if dst.read_text() != f.read_text():
                dst.write_text(f.read_text())
        shutil.rmtree(self.work / "fleet.tmp")
        git(self.work, "commit", "-qam", message)
        return rev(self.work, "HEAD")


def make_remote(tmp: Path, state: str | None = None, *, hooks: bool = True) -> Remote:
    """A bare repo (hooks installed with in-process hosts) and a clone holding examples/."""
    bare = tmp / "fleet.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    hosts_file = tmp / "hosts.json"
    support.hosts_for(fleet_load.load_dir(support.EXAMPLES), hosts_file)
    state = state or str(tmp / "state.db")
    if hooks:
        result = subprocess.run(
            [
                RECONCILE,
                "hook",
                "install",
                "--repo",
                str(bare),
                "--path",
                "fleet",
                "--hosts",
                f"memory:{hosts_file}",
                "--state",
                state,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    work = tmp / "work"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, capture_output=True)
    shutil.copytree(support.EXAMPLES, work / "fleet")
    git(work, "checkout", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "the fleet")
    return Remote(bare, work, hosts_file, state)


def slow_hosts(hosts_file: Path, boot_s: float) -> None:
    hosts = memory.MemoryFleet(hosts_file)
    for h in hosts.hosts.values():
        h.behaviour.boot_delay_s = boot_s
        h.behaviour.time_scale = 1.0
    hosts.save()
