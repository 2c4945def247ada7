"""Benchmark (b) and (c): ``machine run`` -> app answering HTTP, against a hand-written
QEMU command line booting the same root filesystem; and QEMU's memory per VM.

Both sides boot the same kernel, initrd and read-only root image (through a
fresh qcow2 overlay each) with user-mode networking and a port published on
127.0.0.1, and stop the clock when ``GET /`` answers. Ours is timed twice:
in-process through MachineManager.run (what the agent does) and as the
``fleet-agent machine run -d`` command (Python start-up included). Phases of
ours: resolve, build, prepare (host clock); VMM start (spawn -> console socket);
kernel (guest clock at init start); init (guest clock init -> app exec); app
listening (host clock, rest of the way). Runs are sequential (TCG boots are
CPU-bound; LAB-NOTES.md). Goal: ratio <= 1.3.
Run: ``.venv/bin/python bench/machine_boot.py [--runs N]`` as root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from providers.images import layout, samples
from providers.vmm import machines, qemu
from providers.vmm.spec import MachineSpec, NetMode, NetworkSpec, PortMapping

TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, t0: float) -> float:
    while time.perf_counter() - t0 < TIMEOUT:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("no answer")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_ours(
    mgr: machines.MachineManager, ref: str, i: int
) -> tuple[float, dict[str, float], float]:
    port = free_port()
    name = f"bench-{i}"
    net = NetworkSpec(mode=NetMode.USER, publish=(PortMapping(port, 8080),))
    t0 = time.perf_counter()
    rec = mgr.run(MachineSpec(name=name, image=ref, network=net))
    total = wait_http(port, t0)
    report = mgr.boot_report(name)
    pid = mgr.status(name).pid
    mem = rss_mib(pid)
    boot_ms, start_ms = report.at("boot") or 0, report.at("start") or 0
    host = rec.timings
    phases = {
        "resolve": host["resolve"],
        "build": host["build"],
        "prepare": host["prepare"],
        "vmm start": host["vmm_start"],
        "kernel": boot_ms / 1000,
        "init": (start_ms - boot_ms) / 1000,
    }
    phases["rest: app listening"] = total - sum(phases.values())
    mgr.remove(name, force=True)
    return total, phases, mem


def run_cli(data: Path, ref: str, i: int) -> float:
    port = free_port()
    name = f"bench-cli-{i}"
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hostagent.cli",
            "--data-dir",
            str(data),
            "machine",
            "run",
            "-d",
            "--name",
            name,
            "--publish",
            f"{port}:8080",
            ref,
        ],
        check=True,
        capture_output=True,
    )
    total = wait_http(port, t0)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hostagent.cli",
            "--data-dir",
            str(data),
            "machine",
            "rm",
            "-f",
            name,
        ],
        check=True,
        capture_output=True,
    )
    return total


def run_hand(kernel: Path, initrd: Path, rootfs: Path, work: Path) -> tuple[float, float]:
    """The hand-written command line of LAB-NOTES.md, same kernel/initrd/root."""
    port = free_port()
    overlay = work / "hand.qcow2"
    t0 = time.perf_counter()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(rootfs), str(overlay)],
        check=True,
    )
    khz = qemu.host_khz(Path("/proc/cpuinfo").read_text())
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-M",
            "microvm",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "256",
            "-kernel",
            str(kernel),
            "-initrd",
            str(initrd),
            "-append",
            f"console=ttyS0 panic=-1 quiet reboot=t tsc_early_khz={khz}",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{work / 'hand.log'}",
            "-drive",
            f"id=root,file={overlay},format=qcow2,if=none",
            "-device",
            "virtio-blk-device,drive=root",
            "-netdev",
            f"user,id=n0,restrict=on,net=192.0.2.0/24,host=192.0.2.2,"
            f"hostfwd=tcp:127.0.0.1:{port}-:8080",
            "-device",
            "virtio-net-device,netdev=n0",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        total = wait_http(port, t0)
        mem = rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        overlay.unlink()
    return total, mem


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-boot-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        data = root / "data"
        layout.write_oci_layout(root / "web", samples.web_image(8080))
        ref = f"oci:{root / 'web'}"
        mgr = machines.MachineManager(data)
        # warm-up: fetch the kernel, compile the init, build the rootfs (not timed)
        # (with a NIC: the hand-written side boots this initrd, so its guest needs an address)
        user_net = NetworkSpec(mode=NetMode.USER)
        warm = mgr.create(MachineSpec(name="warm", image=ref, network=user_net))
        kernel, rootfs = warm.boot.kernel, warm.boot.rootfs
        shutil.copy(warm.boot.initrd, root / "hand-initrd.img")
        mgr.remove("warm")
        ours_t, cli_t, hand_t, ours_mem, hand_mem = [], [], [], [], []
        phases: list[dict[str, float]] = []
        for i in range(args.runs):
            t, ph, mem = run_ours(mgr, ref, i)
            ours_t.append(t)
            phases.append(ph)
            ours_mem.append(mem)
            cli_t.append(run_cli(data, ref, i))
            t, mem = run_hand(kernel, root / "hand-initrd.img", rootfs, root)
            hand_t.append(t)
            hand_mem.append(mem)
        o, c, h = (statistics.median(x) for x in (ours_t, cli_t, hand_t))
        print(
            f"accelerator: {mgr.drivers[next(iter(mgr.drivers))].accel.name}"  # type: ignore[attr-defined]
            f" ({os.cpu_count()} cores), {args.runs} runs each, medians"
        )
        print(f"{'run -> app answering (s)':34}{'ours':>8}{'hand QEMU':>11}{'ratio':>8}")
        print(f"{'  MachineManager.run (in-process)':34}{o:>8.3f}{h:>11.3f}{o / h:>8.2f}", end="")
        print("   goal <= 1.3")
        print(f"{'  fleet-agent machine run -d':34}{c:>8.3f}{h:>11.3f}{c / h:>8.2f}")

        def fmt(xs: list[float]) -> str:
            return " ".join(f"{x:.2f}" for x in xs)

        print(f"  runs: ours {fmt(ours_t)}; cli {fmt(cli_t)}; hand {fmt(hand_t)}")
        print("phases of ours (median s):")
        for key in phases[0]:
            print(f"  {key:16}{statistics.median(p[key] for p in phases):8.3f}")
        print(
            f"QEMU RSS per VM (MiB, median): ours {statistics.median(ours_mem):.0f}, "
            f"hand {statistics.median(hand_mem):.0f} (-m 256)"
        )


if __name__ == "__main__":
    main()
