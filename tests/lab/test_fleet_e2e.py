"""The example fleet on the lab, end to end: bootstrap, apply, drift, crashes, rollouts.

Real sshd per namespace host, the real agent installed by bootstrap, real
microVMs under QEMU. The lab has its own namespace prefix, so it never touches
the operator's lab. One module-scoped lab; the tests run in file order and each
leaves the fleet converged for the next.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet import load as fleet_load
from reconciler.core import observed, planfile, planner, snapfile
from reconciler.core import plan as P
from tests.lab.conftest import ROOT, Lab, lab_directory

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.qemu, pytest.mark.slow]
RECONCILE = str(Path(sys.executable).with_name("reconcile"))


class Fleet:
    """A copy of examples/ with the lab's environment, driven through the real CLI."""

    def __init__(self, lab: Lab, directory: Path) -> None:
        self.lab = lab
        self.dir = directory
        self.state = directory.parent / "state.db"

    def run(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [RECONCILE, *args],
            cwd=self.dir.parent,
            env=self.lab.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            command = " ".join(args)
            output = f"{result.stdout}\n{result.stderr}"
            raise AssertionError(f"reconcile {command} -> {result.returncode}\n{output}")
        return result

    def bootstrap(self) -> subprocess.CompletedProcess[str]:
        return self.run(
            "hosts",
            "bootstrap",
            "--fleet",
            str(self.dir),
            "--insecure-registry",
            "192.0.2.2",
            "--simulate-gpus",
        )

    def apply(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            "apply", "--fleet", str(self.dir), "--state", str(self.state), "--yes", *extra
        )

    def plan_code(self) -> tuple[int, str]:
        r = self.run("plan", "--fleet", str(self.dir), "--detailed-exitcode", check=False)
        return r.returncode, r.stdout + r.stderr

    def observe(self) -> dict[str, Any]:
        out = self.dir.parent / "observed.json"
        self.run("observe", "--fleet", str(self.dir), "--save", str(out))
        # The saved file pools specs (format 4); read it back as answers with specs inline.
        return observed.snapshot_to_json(snapfile.loads(out.read_text(), str(out)))

    def machines(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (h["host"], r)
            for h in self.observe()["hosts"]
            for r in h.get("resources", [])
            if r["kind"] == "machine" and r["owner"] == "fleet"
        ]

    def answer(self, host: str, spec: dict[str, Any], timeout: float = 3) -> str:
        """What the machine answers, asked from its host's network namespace."""
        port = spec["services"][0]["internal_port"]
        if port == 7000:
            cmd = ["sh", "-c", f"echo ping | timeout {timeout} busybox nc {spec['address']} 7000"]
        else:
            cmd = ["curl", "-s", "-m", str(timeout), f"http://[{spec['address']}]:{port}/"]
        netns = f"{self.lab.prefix}-h-{host}"
        return subprocess.run(
            ["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, check=False
        ).stdout.strip()

    def edit(self, rel: str, old: str, new: str) -> None:
        path = self.dir / rel
        text = path.read_text()
        assert old in text, (rel, old)
        path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(lab_directory().with_name(lab_directory().name + "-e2e"), f"fe{os.getpid() % 100000}")
    work = tmp_path_factory.mktemp("e2e")
    shutil.copytree(ROOT / "examples", work / "fleet")
    try:
        lab.reconcile("lab", "up", "--fleet", str(work / "fleet"))
        the_fleet = Fleet(lab, work / "fleet")
        the_fleet.bootstrap()
        yield the_fleet
    finally:
        lab.reconcile("lab", "down", check=False)


def test_second_bootstrap_changes_nothing(fleet: Fleet) -> None:
    out = fleet.bootstrap().stdout.splitlines()
    assert len(out) == 4
    assert all(": no changes: agent " in line for line in out), out


def test_apply_boots_real_microvms_and_every_app_answers(fleet: Fleet) -> None:
    result = fleet.apply()
    assert "Apply complete." in result.stdout, result.stdout[-2000:]
    machines = fleet.machines()
    assert len(machines) == 7
    for host, r in machines:
        assert r["status"]["state"] == "running", (host, r["id"], r["status"])
        answer = fleet.answer(host, r["spec"])
        assert answer in ("ping", f"{r['spec']['env'].get('GREETING', '')} (version 1.0)"), (
            host,
            r["id"],
            answer,
        )


def test_plan_again_has_no_changes(fleet: Fleet) -> None:
    code, out = fleet.plan_code()
    assert code == 0, out
    assert "No changes." in out


def test_the_agents_keep_the_inputs_digest_and_the_next_plan_skips_every_host(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The apply recorded its inputs digest on every real agent; a plan from their
    answers (saved as observe --save writes them) parses the resources of no host
    but those not settled (a machine failing its checks on this loaded machine)
    and says exactly what the full per-resource path says."""
    saved = fleet.dir.parent / "observed.json"
    fleet.run("observe", "--fleet", str(fleet.dir), "--save", str(saved))
    raw = json.loads(saved.read_text())
    assert raw["format_version"] == 4
    assert all(h["inputs_digest"].startswith("inputs:") for h in raw["hosts"]), raw["hosts"]
    unsettled = sorted(h["host"] for h in raw["hosts"] if not h["summary"]["settled"])
    assert len(unsettled) < len(raw["hosts"])
    the_fleet = fleet_load.load_dir(fleet.dir)
    parsed: list[str] = []
    real = observed.decoded

    def decoded(o: observed.HostObservation) -> observed.HostObservation:
        parsed.append(o.host)
        return real(o)

    with monkeypatch.context() as m:
        m.setattr(observed, "decoded", decoded)
        skipped = planner.make(
            the_fleet, snapfile.loads(saved.read_text(), lazy=True), origin=P.FleetRef(None, False)
        )
    assert parsed == unsettled and skipped.noops
    eager = snapfile.loads(saved.read_text())
    full = planner.make(
        the_fleet,
        dataclasses.replace(
            eager,
            hosts={n: dataclasses.replace(o, inputs="") for n, o in eager.hosts.items()},
        ),
        origin=P.FleetRef(None, False),
    )
    assert planfile.dumps(full) == planfile.dumps(skipped)


def test_killed_supervisor_leaves_machines_running_and_a_new_one_adopts_them(fleet: Fleet) -> None:
    before = {r["id"]: r["status"]["runtime"]["pid"] for _, r in fleet.machines()}
    serve = fleet.lab.exec("ams-1", "cat", "/var/lib/fleet-agent/serve.pid").stdout.strip()
    fleet.lab.exec("ams-1", "kill", "-9", serve)
    time.sleep(1)
    after = {r["id"]: r["status"]["runtime"]["pid"] for _, r in fleet.machines()}
    assert after == before  # nothing died with the supervisor
    out = fleet.bootstrap().stdout
    assert "ams-1: changed: started fleet-agent serve" in out, out
    time.sleep(3)
    assert {r["id"]: r["status"]["runtime"]["pid"] for _, r in fleet.machines()} == before


def test_killed_vmm_is_drift_and_the_supervisor_restarts_it(fleet: Fleet) -> None:
    host, victim = next((h, r) for h, r in fleet.machines() if r["spec"]["app"] == "echo")
    serve = fleet.lab.exec(host, "cat", "/var/lib/fleet-agent/serve.pid").stdout.strip()
    fleet.lab.exec(host, "kill", "-STOP", serve)  # hold the supervisor so the drift is seen
    try:
        fleet.lab.exec(host, "kill", "-9", str(victim["status"]["runtime"]["pid"]))
        time.sleep(1)
        code, out = fleet.plan_code()
        assert code == 2, out
        assert "app.echo/machine" in out and "drift" in out.lower(), out
    finally:
        fleet.lab.exec(host, "kill", "-CONT", serve)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = {r["id"]: r for h, r in fleet.machines() if h == host}
        r = live[victim["id"]]
        if r["status"]["state"] == "running" and fleet.answer(host, r["spec"]) == "ping":
            break
        time.sleep(1)
    else:
        raise AssertionError("the supervisor did not bring the machine back")
    code, out = fleet.plan_code()
    assert code == 0, out


def test_rolling_image_change_keeps_the_app_answering(fleet: Fleet) -> None:
    hello = [(h, r) for h, r in fleet.machines() if r["spec"]["app"] == "hello"]
    assert len(hello) == 2
    fleet.edit("apps/hello.yaml", "examples/hello:1.0", "examples/hello:2.0")
    code, out = fleet.plan_code()
    assert code == 2 and "image" in out, out
    misses: list[float] = []
    samples = [0]
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            answers = [fleet.answer(h, r["spec"], timeout=2) for h, r in hello]
            samples[0] += 1
            if not any("hello from the fleet" in a for a in answers):
                misses.append(time.monotonic())
            time.sleep(0.2)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        result = fleet.apply()
    finally:
        stop.set()
        thread.join()
    assert "Apply complete." in result.stdout, result.stdout[-2000:]
    assert samples[0] > 5
    assert misses == [], f"no machine of hello answered at {len(misses)} of {samples[0]} probes"
    versions = {
        fleet.answer(h, r["spec"]) for h, r in fleet.machines() if r["spec"]["app"] == "hello"
    }
    assert versions == {"hello from the fleet (version 2.0)"}
    assert fleet.plan_code()[0] == 0


def test_killed_reconciler_resumes_without_duplicates(fleet: Fleet) -> None:
    fleet.edit("apps/echo.yaml", "examples/echo:1.0", "examples/echo:2.0")
    plan_file = fleet.dir.parent / "echo.plan.json"
    fleet.run("plan", "--fleet", str(fleet.dir), "--out", str(plan_file))
    proc = subprocess.Popen(
        [RECONCILE, "apply", str(plan_file), "--state", str(fleet.state), "--yes"],
        cwd=fleet.dir.parent,
        env=fleet.lab.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the first machine is on its way
        if "booting" in line or "started" in line:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    resumed = fleet.run("apply", str(plan_file), "--state", str(fleet.state), "--yes")
    assert "Apply complete." in resumed.stdout, resumed.stdout[-2000:]
    code, out = fleet.plan_code()
    assert code == 0, out
    slots: dict[str, int] = {}
    for _, r in fleet.machines():
        key = f"{r['spec']['app']}/{r['spec']['slot']}"
        slots[key] = slots.get(key, 0) + 1
    assert all(n == 1 for n in slots.values()), slots


def test_changed_host_key_is_refused_with_both_fingerprints(fleet: Fleet) -> None:
    lab = fleet.lab
    key = lab.directory / "hosts" / "sea-1" / "ssh_host_ed25519_key"
    saved = key.read_bytes(), key.with_suffix(".pub").read_bytes()
    state = json.loads((lab.directory / "lab.json").read_text())
    sshd = state["hosts"]["sea-1"]["sshd_pid"]
    key.unlink()
    key.with_suffix(".pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    os.kill(sshd, signal.SIGHUP)  # sshd re-executes and loads the new key
    # An SSH session already open stays with the host it authenticated (sshd's
    # re-exec keeps it); the new key is met on the next connection. A reinstalled
    # host drops its sessions; here, end the lab's connection holder instead.
    for sock in (lab.directory / "ssh-control").glob("*.sock"):
        sock.unlink()
    time.sleep(1)
    try:
        snap = fleet.observe()
        sea1 = next(h for h in snap["hosts"] if h["host"] == "sea-1")
        assert sea1["reachable"] is False
        assert sea1["error"].count("SHA256:") >= 2, sea1["error"]
        _, out = fleet.plan_code()
        assert "sea-1" in out and "deferred" in out.lower(), out
    finally:
        key.write_bytes(saved[0])
        key.with_suffix(".pub").write_bytes(saved[1])
        new_pid = json.loads((lab.directory / "lab.json").read_text())["hosts"]["sea-1"]["sshd_pid"]
        os.kill(new_pid, signal.SIGHUP)
        time.sleep(1)
    assert fleet.plan_code()[0] == 0


def test_host_off_the_management_network_is_deferred_others_converge(fleet: Fleet) -> None:
    netns = f"{fleet.lab.prefix}-h-ams-2"
    fleet.edit("apps/echo.yaml", "    sea: 1\n", "    sea: 2\n")
    subprocess.run(["ip", "-n", netns, "link", "set", "mgmt0", "down"], check=True)
    try:
        result = fleet.run(
            "apply", "--fleet", str(fleet.dir), "--state", str(fleet.state), "--yes", check=False
        )
        out = result.stdout + result.stderr
        assert "host ams-2" in out and "deferred" in out, out[-2000:]
        echo_sea = [
            r
            for h, r in fleet.machines()
            if r["spec"]["app"] == "echo" and r["spec"]["region"] == "sea"
        ]
        assert len(echo_sea) == 2
    finally:
        subprocess.run(["ip", "-n", netns, "link", "set", "mgmt0", "up"], check=True)
    time.sleep(1)
    # ams-2 is an edge: its routes to echo gained the new sea machine, deferred
    # while it was away. The next apply delivers them, and only them.
    code, out = fleet.plan_code()
    assert code == 2 and "ams-2" in out, out
    fleet.apply()
    assert fleet.plan_code()[0] == 0


def test_git_push_over_the_labs_sshd_applies_to_the_lab(fleet: Fleet, tmp_path: Path) -> None:
    """`git push` over SSH to a repository on lab host ams-1; its hooks apply to every host."""
    lab = fleet.lab
    bare = tmp_path / "fleet.git"
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    key, pins = lab.directory / "id_ed25519", lab.directory / "known_hosts"
    fleet.run(
        "hook", "install", "--repo", str(bare), "--path", "fleet", "--state", str(fleet.state),
        "--ssh-key", str(key), "--known-hosts", str(pins),
    )  # fmt: skip
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    shutil.copytree(fleet.dir, work / "fleet")
    echo = work / "fleet" / "apps" / "echo.yaml"
    echo.write_text(echo.read_text().replace("    sea: 2\n", "    sea: 1\n"))
    ssh = f"ssh -i {key} -o UserKnownHostsFile={pins} -o StrictHostKeyChecking=yes -o BatchMode=yes"

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", f"{lab.prefix}-mgmt", "git", *identity, *args],
            cwd=work, env={**lab.env, "GIT_SSH_COMMAND": ssh}, capture_output=True,
            text=True, check=False, timeout=600,
        )  # fmt: skip

    git("add", "-A")
    git("commit", "-qm", "echo: back to one machine in sea")
    push = git("push", f"ssh://root@192.0.2.11{bare}", "main")
    assert push.returncode == 0, push.stderr[-3000:]
    assert "remote: fleet: apply complete" in push.stderr, push.stderr[-3000:]
    assert "app.echo/machine[sea#2]" in push.stderr
    echo_sea = [
        r
        for _, r in fleet.machines()
        if r["spec"]["app"] == "echo" and r["spec"]["region"] == "sea"
    ]
    assert len(echo_sea) == 1
