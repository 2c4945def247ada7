"""The `reconcile` plan/apply/observe/force-unlock commands: exit codes and contracts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import support

from reconciler import cli
from reconciler.lab import paths as lab_paths
from reconciler.state import sqlite


def _init_git(path: Path) -> None:
    for cmd in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "fleet"],
    ):
        subprocess.run(["git", *cmd], cwd=path, check=True)


def test_plan_exit_codes_and_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = support.fleet_dir(tmp_path)
    hosts = f"memory:{tmp_path / 'hosts.json'}"
    base = ["--fleet", str(fleet), "--hosts", hosts]
    assert cli.main(["plan", *base, "--detailed-exitcode"]) == 2
    assert capsys.readouterr().out.startswith("Plan: 44 to add")
    assert cli.main(["plan", *base]) == 0  # without the flag, changes still exit 0
    capsys.readouterr()
    assert cli.main(["plan", *base, "--format", "json", "--out", str(tmp_path / "p.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["format_version"] == 1 and printed["summary"]["create"] == 44
    assert json.loads((tmp_path / "p.json").read_text())["steps"] == printed["steps"]
    assert cli.main(["plan", *base, "--format", "markdown"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("### reconcile plan: Plan: 44 to add") and "<details>" in md
    assert cli.main(["apply", *base, "--yes", "--state", str(tmp_path / "s.db")]) == 0
    capsys.readouterr()
    assert cli.main(["plan", *base, "--detailed-exitcode"]) == 0  # no-op
    assert "No changes" in capsys.readouterr().out


def test_plan_error_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = support.fleet_dir(tmp_path)
    assert cli.main(["plan", "--fleet", str(fleet), "--observed", str(tmp_path / "none.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "none.json" in err[0]
    # Live hosts go over SSH; with no key anywhere that is one clear line too.
    monkeypatch.setattr(lab_paths, "DEFAULT_DIR", tmp_path / "no-lab")
    for name in ("FLEET_SSH_KEY", "FLEET_KNOWN_HOSTS", "SSH_AUTH_SOCK", "FLEET_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["plan", "--fleet", str(fleet)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no SSH key" in err[0]


def test_observe_save_then_plan_from_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = support.fleet_dir(tmp_path)
    hosts = f"memory:{tmp_path / 'hosts.json'}"
    snap = tmp_path / "observed.json"
    assert cli.main(["observe", "--fleet", str(fleet), "--hosts", hosts, "--save", str(snap)]) == 0
    assert json.loads(snap.read_text())["format_version"] == 4
    capsys.readouterr()
    assert (
        cli.main(["plan", "--fleet", str(fleet), "--observed", str(snap), "--detailed-exitcode"])
        == 2
    )


def test_apply_refuses_a_dirty_plan_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = support.fleet_dir(tmp_path)
    _init_git(fleet)
    (fleet / "apps" / "echo.yaml").write_text(
        (fleet / "apps" / "echo.yaml").read_text() + "\n# edited\n"
    )
    hosts = f"memory:{tmp_path / 'hosts.json'}"
    base = ["--fleet", str(fleet), "--hosts", hosts, "--state", str(tmp_path / "s.db")]
    assert cli.main(["plan", *base, "--out", str(tmp_path / "p.json")]) == 0
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["fleet"]["dirty"] is True and len(saved["fleet"]["commit"]) == 40
    assert "DIRTY" in capsys.readouterr().out
    assert cli.main(["apply", str(tmp_path / "p.json"), "--yes", *base]) == 1
    assert "dirty work tree" in capsys.readouterr().err
    assert cli.main(["apply", str(tmp_path / "p.json"), "--yes", "--allow-dirty", *base]) == 0


def test_guard_refusal_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = support.fleet_dir(tmp_path)
    hosts = f"memory:{tmp_path / 'hosts.json'}"
    base = ["--fleet", str(fleet), "--hosts", hosts]
    assert cli.main(["apply", *base, "--yes", "--state", str(tmp_path / "s.db")]) == 0
    (fleet / "apps" / "echo.yaml").unlink()
    capsys.readouterr()
    assert cli.main(["plan", *base]) == 1
    assert "--allow-anycast-withdraw" in capsys.readouterr().err
    assert cli.main(["plan", *base, "--allow-anycast-withdraw", "--detailed-exitcode"]) == 2


def test_force_unlock_needs_the_nonce(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = sqlite.SqliteBackend(str(tmp_path / "s.db"))
    held = state.acquire("someone@elsewhere", "apply x")
    state.close()
    args = ["--fleet", str(tmp_path), "--state", str(tmp_path / "s.db")]
    assert cli.main(["force-unlock", "0000", *args]) == 1
    assert "does not match" in capsys.readouterr().err
    assert cli.main(["force-unlock", held.nonce, *args]) == 0
    assert "someone@elsewhere" in capsys.readouterr().out
    state = sqlite.SqliteBackend(str(tmp_path / "s.db"))
    assert state.current_lock() is None
    state.close()


def test_examples_load_and_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    hosts = f"memory:{tmp_path / 'hosts.json'}"
    args = ["plan", "--fleet", str(support.EXAMPLES), "--hosts", hosts, "--detailed-exitcode"]
    assert cli.main(args) == 2
    assert "app ledger" in capsys.readouterr().out


def test_rotate_keys_needs_an_applied_mesh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = support.fleet_dir(tmp_path)
    hosts = f"memory:{tmp_path / 'hosts.json'}"
    args = ["hosts", "rotate-keys", "--fleet", str(fleet), "--hosts", hosts, "--host", "ams-1"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no wireguard resource" in err[0] and "ams-1" in err[0]
    assert cli.main([*args[:-1], "nowhere"]) == 1
    assert "unknown host(s): nowhere" in capsys.readouterr().err
