"""The lab fixture: the example fleet's hosts as namespaces, torn down even on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECONCILE = str(Path(sys.executable).with_name("reconcile"))


@dataclass(frozen=True)
class Lab:
    directory: Path
    # Our own namespace prefix: the operator's lab (flab-*) and other test runs stay untouched.
    prefix: str = f"ft{os.getpid() % 100000}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "FLEET_LAB_DIR": str(self.directory),
            "FLEET_LAB_PREFIX": self.prefix,
            # SSH connection holders of this lab's commands live (and end) with the lab
            "FLEET_SSH_CONTROL_DIR": str(self.directory / "ssh-control"),
        }

    def reconcile(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = self.env
        result = subprocess.run(
            [RECONCILE, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"reconcile {' '.join(args)}: {result.stderr}")
        return result

    def exec(self, node: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.reconcile("lab", "exec", node, "--", *cmd, check=check)

    def ssh(self, address: str, command: str) -> subprocess.CompletedProcess[str]:
        # The lab adds nothing to this machine's namespace: reach it from inside.
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                f"{self.prefix}-mgmt",
                "ssh",
                "-i",
                str(self.directory / "id_ed25519"),
                "-o",
                f"UserKnownHostsFile={self.directory / 'known_hosts'}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                f"root@{address}",
                command,
            ],
            capture_output=True,
            text=True,
            check=False,
        )


def lab_directory() -> Path:
    # Under /var/lib, not /tmp: sshd's StrictModes refuses keys below world-writable dirs.
    return Path(f"/var/lib/fleet-lab-test-{os.getpid()}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    the_lab = Lab(lab_directory())
    try:
        the_lab.reconcile("lab", "up", "--fleet", "examples")
        yield the_lab
    finally:
        the_lab.reconcile("lab", "down", check=False)
