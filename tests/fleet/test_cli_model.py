"""`reconcile validate` and `reconcile desired` through the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RECONCILE = str(Path(sys.executable).with_name("reconcile"))


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RECONCILE, *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_validate_examples() -> None:
    result = run("validate", "--fleet", "examples")
    assert result.returncode == 0, result.stderr
    assert "valid: 2 regions, 4 hosts, 4 apps, 7 machines" in result.stdout


def test_validate_at_ref_of_bare_clone(tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(EXAMPLES, work)
    env = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=work, check=True)
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run(["git", *env, "commit", "-qm", "fleet"], cwd=work, check=True)
    bare = tmp_path / "fleet.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    result = run("validate", "--fleet", str(bare), "--ref", "main")
    assert result.returncode == 0, result.stderr
    assert "valid: 2 regions" in result.stdout


def test_invalid_fleet_exits_1_with_one_line_per_error() -> None:
    case = ROOT / "tests" / "fleet" / "broken" / "many-errors-many-files"
    result = run("validate", "--fleet", "fleet", cwd=case)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "3 error(s)"


def test_missing_fleet_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    result = run("validate", "--fleet", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_desired_json_has_allocations_and_slots() -> None:
    result = run("desired", "--fleet", "examples", "--format", "json")
    assert result.returncode == 0, result.stderr
    world = json.loads(result.stdout)
    assert world["apps"]["hello"]["anycast"] == {
        "ipv4": "198.51.100.10",
        "ipv6": "2001:db8:100::10",
    }
    assert world["hosts"]["ams-1"]["private_prefix"].endswith("::/64")
    assert "ledger/ams#2" in world["machines"]


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("reconcile ")
