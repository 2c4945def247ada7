"""Loading fleets: the examples, .fleetignore, and Git refs (also of a bare clone)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet import load
from fleet.errors import FleetError, ModelErrors

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def git(cwd: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "HOME": str(cwd),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(EXAMPLES, work / "fleet")
    (work / "README.md").write_text("not a fleet file\n")
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "fleet")
    return work


def test_examples_load() -> None:
    loaded = load.load(EXAMPLES)
    fleet = loaded.fleet
    assert set(fleet.regions) == {"ams", "sea"}
    assert len(fleet.hosts) >= 4
    assert any(h.capacity.gpus for h in fleet.hosts.values())
    assert {"hello", "ledger", "infer", "echo"} <= set(fleet.apps)
    assert fleet.apps["ledger"].placement.jurisdiction == "eu"


def test_fly_defaults_apply() -> None:
    app = load.load(EXAMPLES).fleet.apps["hello"]
    assert app.kill_signal == "SIGINT"
    assert app.kill_timeout_s == 5.0
    assert app.deploy.strategy == "rolling"
    assert app.deploy.max_unavailable == 0.33
    assert app.services[0].concurrency.type == "requests"
    assert app.restart.policy == "on-failure"
    echo = load.load(EXAMPLES).fleet.apps["echo"]
    assert echo.services[0].concurrency.soft_limit == 20
    assert echo.services[0].concurrency.hard_limit == 25
    assert echo.services[0].concurrency.type == "connections"


def test_git_ref_of_work_tree_and_bare_clone(repo: Path, tmp_path: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    loaded = load.load(repo / "fleet", "HEAD")
    assert loaded.origin.commit == head
    assert loaded.fleet.commit == head
    bare = tmp_path / "fleet.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    # In a bare repository the fleet is the subdirectory's tree; point at the repo root.
    shutil.rmtree(repo / "fleet")
    loaded_bare = load.load_git(bare, "main")
    assert loaded_bare.origin.commit == head
    assert set(loaded_bare.fleet.apps) == set(load.load_dir(EXAMPLES).apps)


def test_git_ref_reads_the_commit_not_the_work_tree(repo: Path) -> None:
    (repo / "fleet" / "apps" / "echo.yaml").write_text("garbage: [\n")
    with pytest.raises(ModelErrors):
        load.load(repo / "fleet")
    assert "echo" in load.load(repo / "fleet", "HEAD").fleet.apps
    assert load.load_dir.__name__  # the work tree load above really failed


def test_dirty_work_tree_is_marked(repo: Path) -> None:
    git(repo, "config", "status.showUntrackedFiles", "no")  # an untracked file counts anyway
    assert load.load(repo / "fleet").origin.dirty is False
    (repo / "fleet" / "apps" / "extra.yml").write_text(
        (EXAMPLES / "apps" / "echo.yaml")
        .read_text()
        .replace("name: echo", "name: echo2")
        .replace("198.51.100.40", "198.51.100.41")
        .replace("2001:db8:100::40", "2001:db8:100::41")
    )
    assert load.load(repo / "fleet").origin.dirty is True


def test_dirty_means_a_change_under_the_fleet_directory_only(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("edited outside the fleet\n")
    (repo / "notes.txt").write_text("untracked outside the fleet\n")
    loaded = load.load(repo / "fleet")
    assert (loaded.origin.commit, loaded.origin.dirty) == (head, False)
    hello = repo / "fleet" / "apps" / "hello.yaml"
    hello.write_text(hello.read_text().replace("hello:1.0", "hello:1.1"))
    git(repo, "add", "fleet/apps/hello.yaml")  # staged, not committed
    assert load.load(repo / "fleet").origin.dirty is True


def test_a_repository_without_commits_is_dirty_with_no_commit(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "fleet")
    git(tmp_path, "init", "-q", "-b", "main")
    loaded = load.load(tmp_path / "fleet")
    assert (loaded.origin.commit, loaded.origin.dirty) == (None, True)


def test_reading_the_work_tree_state_does_not_import_gitpython(repo: Path) -> None:
    # gitpython costs ~80 ms to import: plan and apply from a work tree run git once instead
    code = (
        "import sys; from fleet import load; o = load.load(sys.argv[1]).origin; "
        "print(o.commit, o.dirty, 'git' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(repo / "fleet")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    assert out == [git(repo, "rev-parse", "HEAD"), "False", "False"]


def test_unknown_ref_is_one_clear_error(repo: Path) -> None:
    with pytest.raises(FleetError, match="cannot resolve Git ref 'nope'"):
        load.load(repo / "fleet", "nope")


def test_fleetignore_and_hidden_directories(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    shutil.copytree(EXAMPLES, fleet)
    (fleet / "ci").mkdir()
    (fleet / "ci" / "pipeline.yml").write_text("stages: [plan]\n")
    (fleet / ".github" / "workflows").mkdir(parents=True)
    (fleet / ".github" / "workflows" / "plan.yml").write_text("on: push\n")
    (fleet / "apps" / "draft.yaml").write_text("not: fleet\n")
    with pytest.raises(ModelErrors) as info:
        load.load_dir(fleet)
    assert {e.location.file.split("/")[-1] for e in info.value.errors} == {
        "pipeline.yml",
        "draft.yaml",
    }
    (fleet / ".fleetignore").write_text("# not fleet documents\nci/\n/apps/draft.yaml\n")
    assert "echo" in load.load_dir(fleet).apps


def test_missing_directory() -> None:
    with pytest.raises(FleetError, match="fleet directory does not exist"):
        load.load_dir("/nonexistent/fleet")


def test_a_directory_outside_git_records_no_commit_without_asking_git(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "fleet")
    loaded = load.load(tmp_path / "fleet")
    assert loaded.origin.commit is None and loaded.origin.dirty is False
    assert not load._maybe_git(tmp_path / "fleet")
    assert load._maybe_git(EXAMPLES)  # this checkout
