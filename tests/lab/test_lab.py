"""The local lab on its own: namespaces, links, sshd with pinned keys, teardown."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reconciler import cli
from tests.lab.conftest import RECONCILE, ROOT, Lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

HOSTS = {"ams-1": "192.0.2.11", "ams-2": "192.0.2.12", "sea-1": "192.0.2.21", "sea-2": "192.0.2.22"}


def test_every_host_answers_ssh_with_its_pinned_key(lab: Lab) -> None:
    for name, address in HOSTS.items():
        result = lab.ssh(address, "hostname")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == name


def test_a_host_with_a_foreign_key_is_refused(lab: Lab) -> None:
    known = (lab.directory / "known_hosts").read_text()
    swapped = known.replace("192.0.2.11 ", "192.0.2.99 ").replace("192.0.2.12 ", "192.0.2.11 ")
    (lab.directory / "known_hosts").write_text(swapped)
    try:
        result = lab.ssh("192.0.2.11", "true")
        assert result.returncode != 0
        assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr
    finally:
        (lab.directory / "known_hosts").write_text(known)


def test_no_namespace_has_a_default_route(lab: Lab) -> None:
    status = json.loads(lab.reconcile("lab", "status", "--format", "json").stdout)
    assert len(status["namespaces"]) == 9
    for netns in status["namespaces"]:
        for family in ("-4", "-6"):
            routes = subprocess.run(
                ["ip", "netns", "exec", netns, "ip", family, "route", "show", "default"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert routes.strip() == "", (netns, routes)


def test_links_work_inside_the_lab(lab: Lab) -> None:
    assert lab.exec("upstream-ams", "ping", "-c1", "-W2", "203.0.113.10").returncode == 0
    assert lab.exec("upstream-sea", "ping", "-c1", "-W2", "203.0.113.138").returncode == 0
    assert lab.exec("client", "ping", "-c1", "-W2", "192.0.2.129").returncode == 0
    # Hosts reach each other over the management network.
    assert lab.exec("ams-1", "ping", "-c1", "-W2", "192.0.2.22").returncode == 0


def test_the_machines_own_namespace_is_untouched(lab: Lab) -> None:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert lab.prefix not in links.stdout
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert "192.0.2.0/25" not in routes


def test_the_registry_holds_the_example_images(lab: Lab) -> None:
    tags = lab.exec("ams-1", "curl", "-s", "http://192.0.2.2:5000/v2/examples/hello/tags/list")
    assert '"1.0"' in tags.stdout and '"2.0"' in tags.stdout


def test_each_host_has_its_own_agent_directory(lab: Lab) -> None:
    lab.exec("ams-1", "sh", "-c", "echo ams > /var/lib/fleet-agent/marker")
    assert lab.exec("ams-1", "cat", "/var/lib/fleet-agent/marker").stdout.strip() == "ams"
    other = lab.exec("ams-2", "cat", "/var/lib/fleet-agent/marker", check=False)
    assert other.returncode != 0
    assert not os.path.exists("/var/lib/fleet-agent/marker")


def test_unknown_node_is_one_clear_line(lab: Lab) -> None:
    result = lab.exec("mars-1", "true", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no lab node 'mars-1'; known: ams-1")
    assert "Traceback" not in result.stderr


def test_second_up_is_refused_while_up(lab: Lab) -> None:
    result = lab.reconcile("lab", "up", "--fleet", "examples", check=False)
    assert result.returncode == 1
    assert "already up" in result.stderr


def test_down_after_a_crash_removes_everything(tmp_path: object) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from tests.lab.conftest import lab_directory

    prefix = f"fc{os.getpid() % 100000}"
    crashed = Lab(lab_directory().with_name(lab_directory().name + "-crash"), prefix)
    try:
        crashed.reconcile("lab", "up", "--fleet", "examples")
        # A crash: the state file is gone, processes and namespaces remain.
        (crashed.directory / "lab.json").unlink()
        sshd_pids = subprocess.run(
            ["ip", "netns", "pids", f"{prefix}-h-ams-1"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert sshd_pids
    finally:
        first = crashed.reconcile("lab", "down")
    assert "removed" in first.stdout
    assert not [n for n in _netns() if n.startswith(f"{prefix}-")]
    assert not crashed.directory.exists()
    for pid in sshd_pids:
        assert _gone(pid), pid
    again = crashed.reconcile("lab", "down")
    assert again.stdout.strip() == "lab down: nothing to remove"


def _runs_with(proc: Path, argument: str) -> bool:
    """Whether /proc/PID ``proc`` is a process with ``argument`` on its command line."""
    if not proc.name.isdigit():
        return False
    try:
        return argument.encode() in (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def _gone(pid: str) -> bool:
    """Ended: no such process, or a zombie its (re)parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def test_without_root_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["lab", "up", "--fleet", "examples"])
    assert code == 1
    assert (
        err.getvalue()
        == "error: the lab needs root (network namespaces, veth links, sshd): run it as root\n"
    )


def test_down_ends_the_labs_ssh_connection_holder() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from tests.lab.conftest import lab_directory

    prefix = f"fh{os.getpid() % 100000}"
    held = Lab(lab_directory().with_name(lab_directory().name + "-holder"), prefix)
    control = held.directory.with_name(held.directory.name + "-ssh")
    env_dir = {"FLEET_SSH_CONTROL_DIR": str(control)}  # outside the lab dir, which down removes
    holders: list[str] = []
    try:
        held.reconcile("lab", "up", "--fleet", "examples")
        # observe goes through a holder (the hosts have no agent: they answer unreachable)
        subprocess.run(
            [RECONCILE, "observe", "--fleet", "examples"],
            cwd=ROOT, env={**held.env, **env_dir}, capture_output=True, text=True, check=False,
        )  # fmt: skip
        sockets = list(control.glob("*.sock"))
        assert len(sockets) == 1, sockets
        holders = [p.name for p in Path("/proc").iterdir() if _runs_with(p, str(sockets[0]))]
        assert holders
    finally:
        # the lab's down, told where the operator's holders live
        down = subprocess.run(
            [RECONCILE, "lab", "down"],
            cwd=ROOT, env={**held.env, **env_dir}, capture_output=True, text=True, check=False,
        )  # fmt: skip
    try:
        assert down.returncode == 0, down.stderr
        assert not list(control.glob("*.sock"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(_gone(p) for p in holders):
            time.sleep(0.1)
        assert all(_gone(p) for p in holders), holders
    finally:
        for sock in control.glob("*.sock"):
            sock.unlink()  # a holder whose socket goes exits by itself
        shutil.rmtree(control, ignore_errors=True)
