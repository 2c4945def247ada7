"""Real microVMs under QEMU, booted from OCI images these tests build from busybox-static.

At most two boots run at once (CI has two cores), each with a 30 s boot timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from providers.images import rootfs, samples
from providers.images.store import ImageStore
from providers.vmm import machines, network
from providers.vmm.spec import MachineSpec, MachineState, NetMode, NetworkSpec
from tests.integration.conftest import BOOT_TIMEOUT

pytestmark = [pytest.mark.qemu, pytest.mark.slow]
ENDED = {MachineState.STOPPED, MachineState.FAILED}


def run_to_end(mgr: machines.MachineManager, spec: MachineSpec) -> tuple[str, dict[str, str]]:
    mgr.run(spec)
    st = mgr.wait(spec.name, ENDED, BOOT_TIMEOUT)
    log = mgr.console_log(spec.name)
    return st.state.value + f" exit={st.exit_code}", samples.parse_report(log)


def test_oci_semantics_matrix(manager: machines.MachineManager, images: dict[str, str]) -> None:
    specs = [
        MachineSpec(name="sem-both", image=images["both"], env=(("FOO", "app"),)),
        MachineSpec(name="sem-entrypoint", image=images["entrypoint"]),
        MachineSpec(name="sem-cmd", image=images["cmd"]),
        MachineSpec(
            name="sem-override",
            image=images["override"],
            entrypoint=("/bin/report",),
            cmd=("from-app",),
            user="1000:1000",
            workdir="/tmp",
            env=(("PATH", ""), ("BAR", "app")),
            hostname="custom-host",
        ),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(
            zip(
                [s.name for s in specs],
                pool.map(lambda s: run_to_end(manager, s), specs),
                strict=True,
            )
        )

    for name, (_state, report) in results.items():
        assert report.get("zombies") == "0", f"{name}: PID 1 left zombies"
        assert report.get("end") == "", f"{name}: the report did not finish"
    state, r = results["sem-both"]
    assert state == "stopped exit=0", manager.console_log("sem-both")
    assert r["argv"] == "/bin/report ep c1 c2"
    assert (r["uid"], r["gid"], r["cwd"]) == ("1000", "1000", "/srv/app")
    assert (r["foo"], r["bar"]) == ("app", "image")  # the App's env wins over the image's
    assert r["path"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert r["hostname"] == "sem-both" and r["home"] == "/"

    state, r = results["sem-entrypoint"]
    assert state == "stopped exit=0"
    assert r["argv"] == "/bin/report only-ep"
    assert (r["uid"], r["gid"], r["groups"]) == ("1001", "1002", "1002")
    assert r["home"] == "/home/app"

    state, r = results["sem-cmd"]
    assert state == "failed exit=3", "a crashing app is reported failed with its status"
    assert r["argv"] == "/bin/report only-cmd"  # "report" found through the default PATH

    state, r = results["sem-override"]
    assert state == "stopped exit=0"
    assert r["argv"] == "/bin/report from-app"  # --entrypoint dropped the image's Cmd
    assert (r["uid"], r["gid"], r["cwd"]) == ("1000", "1000", "/tmp")
    assert r["path"] == ""  # an explicitly empty PATH stays empty
    assert (r["foo"], r["bar"], r["hostname"]) == ("image", "app", "custom-host")
    # the supplementary-group case needs the named user's groups: checked on sem-entrypoint
    report = manager.boot_report("sem-entrypoint")
    assert report.exit is not None and report.at("boot") is not None


def _in_ns(ns: str, *cmd: str, timeout: float = 5) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.root
def test_tap_network_http_and_stop_signal(
    manager: machines.MachineManager, images: dict[str, str], netns: str
) -> None:
    net = NetworkSpec(
        mode=NetMode.TAP,
        netns=netns,
        addresses=("203.0.113.2/24", "fd00:f1ee::2/64"),
        host_addresses=("203.0.113.1/24", "fd00:f1ee::1/64"),
    )
    spec = MachineSpec(
        name="web-tap",
        image=images["web"],
        network=net,
        kill_signal="SIGUSR1",
        kill_timeout=5,
        env=(("STOP_SIGNAL", "USR1"), ("STOP_EXIT", "42")),
    )
    manager.run(spec)
    tap = network.tap_name("web-tap")
    assert _in_ns(netns, "ip", "link", "show", tap).returncode == 0
    assert subprocess.run(["ip", "link", "show", tap], capture_output=True).returncode != 0, (
        "the tap must live in the given namespace only"
    )
    body = ""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        got = _in_ns(netns, "curl", "-sf", "-m", "2", "http://203.0.113.2:8080/")
        if got.returncode == 0:
            body = got.stdout
            break
        assert manager.status("web-tap").state not in ENDED, manager.console_log("web-tap")
        time.sleep(0.2)
    assert body == "hello from a microVM\n"
    v6 = _in_ns(netns, "curl", "-sf", "-m", "3", "-g", "http://[fd00:f1ee::2]:8080/")
    assert v6.stdout == body, v6.stderr
    assert manager.status("web-tap").state is MachineState.RUNNING

    st = manager.stop("web-tap")
    assert st.state is MachineState.STOPPED, st
    assert (st.stop_signal, st.exit_code) == (10, 42)  # SIGUSR1 reached the app; its status
    assert "web: got USR1" in manager.console_log("web-tap")
    assert _in_ns(netns, "ip", "link", "show", tap).returncode != 0, "tap removed on stop"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _agent(data: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hostagent.cli", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )


def test_cli_run_publish_ls_stop_rm(
    manager: machines.MachineManager, images: dict[str, str], data_dir: Path
) -> None:
    port = _free_port()
    got = _agent(
        data_dir,
        "machine",
        "run",
        "-d",
        "-e",
        "IGNORE_SIGNAL=TERM",  # the app ignores its kill signal: init must SIGKILL it
        "--kill-timeout",
        "1",
        "--name",
        "cli-web",
        "--publish",
        f"{port}:8080",
        images["web"],
    )
    assert got.returncode == 0, got.stderr
    body = b""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline and not body:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
        except OSError:
            time.sleep(0.2)
    assert body == b"hello from a microVM\n"
    ls = _agent(data_dir, "machine", "ls")
    assert any(line.split()[:2] == ["cli-web", "running"] for line in ls.stdout.splitlines())
    stop = _agent(data_dir, "machine", "stop", "cli-web")
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip() == "cli-web: stopped (killed by signal 9)"
    logs = _agent(data_dir, "machine", "logs", "cli-web").stdout
    assert ":stop " in logs and ":kill " in logs and "after_ms=1000" in logs
    assert _agent(data_dir, "machine", "rm", "cli-web").returncode == 0
    assert "cli-web" not in _agent(data_dir, "machine", "ls").stdout
    # attached run: the app's output on stdout, its exit status as ours
    run = _agent(
        data_dir,
        "machine",
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        images["web"],
        "--",
        "-c",
        "echo attached-output; exit 5",
    )
    assert run.returncode == 5, run.stderr
    assert run.stdout.splitlines() == ["attached-output"]
    missing = _agent(data_dir, "machine", "stop", "nope")
    assert (
        missing.returncode == 1 and missing.stderr.strip() == "fleet-agent: no machine named nope"
    )


def test_second_machine_of_a_built_image_builds_nothing(
    data_dir: Path, images: dict[str, str]
) -> None:
    mkfs_calls: list[Path] = []

    def counting_mkfs(tree: Path, out: Path, size: int) -> None:
        mkfs_calls.append(out)
        rootfs.run_mkfs_ext4(tree, out, size)

    first = machines.MachineManager(data_dir, images=ImageStore(data_dir, mkfs=counting_mkfs))
    second_store = ImageStore(data_dir, mkfs=counting_mkfs)
    second = machines.MachineManager(data_dir, images=second_store)
    try:
        first.create(MachineSpec(name="twin-1", image=images["cmd"]))
        calls_after_first = len(mkfs_calls)
        rec = second.create(MachineSpec(name="twin-2", image=images["cmd"]))
        assert second.status("twin-2").state is MachineState.CREATED
        assert len(mkfs_calls) == calls_after_first
        stats = second_store.stats
        assert (stats.layers_unpacked, stats.mkfs_runs, stats.blobs_fetched) == (0, 0, 0)
        assert rec.timings["build"] == 0.0
        assert rec.boot.rootfs == first.get("twin-1").boot.rootfs  # one base, two overlays
        layer = rec.boot.dir / "disk.qcow2"
        assert layer.exists()
        with open(layer, "ab") as f:  # stands in for what a run wrote into the layer
            f.write(b"\0" * 65536)
        grown = layer.stat().st_size
        second.reset("twin-2")
        assert layer.exists() and layer.stat().st_size < grown
        assert rec.boot.rootfs.exists()  # the shared base is untouched
    finally:
        for name in ("twin-1", "twin-2"):
            if name in first.names():
                first.remove(name, force=True)


def test_probe_boot_reaches_init_and_a_broken_one_does_not(data_dir: Path, tmp_path: Path) -> None:
    from providers.guestinit import build as initbuild
    from providers.vmm import initramfs, probe
    from providers.vmm.kernel import KernelStore

    kernel = KernelStore(data_dir).ensure()
    base_initrd = initramfs.ensure_base(data_dir, kernel, initbuild.ensure_init(data_dir))
    # the real probe asks for KVM; this machine kind has none usable, so TCG shows it works
    assert probe.probe_boot(tmp_path, kernel.image, base_initrd, "tcg", timeout=BOOT_TIMEOUT)
    bogus = tmp_path / "not-a-kernel"
    bogus.write_bytes(b"\0" * 4096)
    assert not probe.probe_boot(tmp_path, bogus, base_initrd, "tcg", timeout=BOOT_TIMEOUT)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("probe-")]
