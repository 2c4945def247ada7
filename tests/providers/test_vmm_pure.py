"""Pure parts of the microVM layer: initramfs archives, guest config, console reports,
state decisions, kernel module order, the QEMU command line and the KVM decision."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from fleet.errors import VMMError
from hostagent import attach
from providers.guestinit import conf, cpio
from providers.guestinit.launch import Launch
from providers.vmm import base, console, kernel, network, qemu, status
from providers.vmm.spec import MachineState, NetMode, NetworkSpec, PortMapping

LAUNCH = Launch(("/bin/app", "a b"), ("PATH=/bin", "X=1"), 1000, 1000, (1000, 5), "/srv")


def test_cpio_archive_unpacks_with_cpio(tmp_path: Path) -> None:
    data = cpio.archive(
        [cpio.directory("etc"), cpio.regular("etc/f", b"hello", 0o600), cpio.symlink("l", "etc/f")]
    )
    assert len(data) % 512 == 0
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed")
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "etc/f").read_text() == "hello"
    assert (tmp_path / "l").readlink() == Path("etc/f")


def test_guest_config_records() -> None:
    cfg = conf.GuestConfig(
        launch=LAUNCH,
        nonce="ab12",
        hostname="m1",
        addresses=("203.0.113.2/24",),
        gateways=("203.0.113.1",),
        kill_signal=10,
        kill_timeout_ms=1500,
    )
    records = conf.encode(cfg).split(b"\0")[:-1]
    assert b"arg=/bin/app" in records and b"arg=a b" in records
    assert records.index(b"arg=/bin/app") < records.index(b"arg=a b")
    assert b"groups=1000,5" in records and b"kill_signal=10" in records
    assert b"addr=203.0.113.2/24" in records and b"gw=203.0.113.1" in records
    with pytest.raises(VMMError, match="NUL"):
        conf.encode(
            conf.GuestConfig(launch=Launch(("a\0b",), (), 0, 0, (0,), "/"), nonce="1", hostname="h")
        )


def test_signal_names() -> None:
    assert conf.signal_number("SIGUSR1") == signal.SIGUSR1
    assert conf.signal_number("int") == signal.SIGINT
    assert conf.signal_number("9") == 9
    with pytest.raises(VMMError):
        conf.signal_number("SIGNOPE")


LOG = """[    0.4] PCI: whatever
FLEET:aa11:boot t=1600 args=2
FLEET:aa11:start t=2000 pid=86 uid=0 gid=0
app says FLEET:ffff:exit t=1 code=0
FLEET:aa11:error t=2100 msg="mount /tmp: No such file"
FLEET:aa11:stop t=2500 pid=86 signal=10 timeout_ms=3000
FLEET:aa11:exit t=2510 code=42
"""


def test_console_report_ignores_forged_lines() -> None:
    report = console.parse(LOG, "aa11")
    assert [e.name for e in report.events] == ["boot", "start", "error", "stop", "exit"]
    assert report.exit is not None and report.exit.int("code") == 42
    assert report.errors == ("mount /tmp: No such file",)
    assert report.at("start") == 2000
    forged = console.parse(LOG, "ffff")
    assert forged.exit is not None and not forged.started  # but another nonce sees only it


@pytest.mark.parametrize(
    ("running", "log", "state", "code"),
    [
        (True, "FLEET:aa:boot t=1\n", MachineState.STARTING, None),
        (True, "FLEET:aa:start t=1 pid=2\n", MachineState.RUNNING, None),
        (False, "FLEET:aa:start t=1\nFLEET:aa:exit t=2 code=0\n", MachineState.STOPPED, 0),
        (False, "FLEET:aa:start t=1\nFLEET:aa:exit t=2 code=3\n", MachineState.FAILED, 3),
        (False, "FLEET:aa:stop t=1 signal=15\nFLEET:aa:exit t=2 code=1\n", MachineState.STOPPED, 1),
        (False, "FLEET:aa:start t=1\nFLEET:aa:exit t=2 signal=9\n", MachineState.FAILED, None),
        (False, "kernel panic\n", MachineState.FAILED, None),
    ],
)
def test_state_decision(running: bool, log: str, state: MachineState, code: int | None) -> None:
    st = status.decide("m", running, console.parse(log, "aa"))
    assert (st.state, st.exit_code) == (state, code)


def test_a_vm_killed_after_its_requested_stop_is_stopped_not_failed() -> None:
    # the init saw the stop but the VM was killed before it reported the exit (a slow
    # guest past kill timeout + grace): alone this reads failed, and the supervisor
    # restarted it while the waker stayed off (issue 8's wrk-during-wake failure)
    killed = status.decide(
        "m", False, console.parse("FLEET:aa:start t=1\nFLEET:aa:stop t=2\n", "aa")
    )
    assert killed.state is MachineState.FAILED
    asked = status.after_requested_stop(killed, stop_requested=True)
    assert asked.state is MachineState.STOPPED
    assert asked.detail == f"stopped on request ({killed.detail})"
    assert status.after_requested_stop(killed, stop_requested=False) == killed
    crashed = status.decide("m", False, console.parse("FLEET:aa:exit t=2 code=3\n", "aa"))
    running = status.decide("m", True, console.parse("FLEET:aa:start t=1 pid=2\n", "aa"))
    # a request changes only how a failed end reads, never a running machine
    assert status.after_requested_stop(running, stop_requested=True) == running
    assert status.after_requested_stop(crashed, stop_requested=True).state is MachineState.STOPPED


MODULES_DEP = """kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
"""  # noqa: E501


def test_module_order_puts_dependencies_first() -> None:
    deps = kernel.parse_modules_dep(MODULES_DEP)
    order = [kernel.module_name(p) for p in kernel.module_order(deps, ("virtio_blk", "virtio_net"))]
    assert order == [
        "virtio_ring",
        "virtio",
        "virtio_blk",
        "failover",
        "net_failover",
        "virtio_net",
    ]
    with pytest.raises(VMMError, match="erofs"):
        kernel.module_order(deps, ("erofs",))


CPU_PVM = "processor\t: 0\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu sse2 hypervisor\n"
CPU_VTX = "processor\t: 0\ncpu MHz\t\t: 3000.5\nflags\t\t: fpu vmx sse2\n"


def test_kvm_only_with_vmx_and_a_probe_that_boots() -> None:
    probes: list[int] = []

    def probe_ok() -> bool:
        probes.append(1)
        return True

    assert qemu.choose_accel(CPU_PVM, True, probe_ok).name == "tcg"
    assert not probes  # no vmx/svm: never even probe (a PVM /dev/kvm hangs stock kernels)
    assert qemu.choose_accel(CPU_VTX, False, probe_ok).name == "tcg"
    assert qemu.choose_accel(CPU_VTX, True, lambda: False).reason.startswith("a probe boot")
    assert qemu.choose_accel(CPU_VTX, True, probe_ok).name == "kvm"
    assert qemu.host_khz(CPU_VTX) == 3000500


def _boot(net: NetworkSpec) -> base.BootConfig:
    return base.BootConfig(
        name="web-1",
        dir=Path("/d/m"),
        kernel=Path("/k/vmlinux"),
        initrd=Path("/d/m/initrd.img"),
        cmdline="console=ttyS0",
        rootfs=Path("/r/rootfs.ext4"),
        cpus=2,
        memory_mb=384,
        network=net,
        tap=network.tap_name("web-1"),
        mac=network.mac_address("web-1"),
        nonce="n",
    )


def test_qemu_command_line_user_net() -> None:
    net = NetworkSpec(mode=NetMode.USER, publish=(PortMapping(18080, 8080),))
    argv = qemu.qemu_argv(_boot(net), qemu.Accel("tcg"), 2100000)
    text = " ".join(argv)
    assert argv[0] == qemu.QEMU
    assert "-M microvm -accel tcg -cpu max -smp 2 -m 384" in text
    assert argv[argv.index("-append") + 1] == "console=ttyS0 tsc_early_khz=2100000"
    netdev = argv[argv.index("-netdev") + 1]
    assert "restrict=on" in netdev and "hostfwd=tcp:127.0.0.1:18080-:8080" in netdev
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_qemu_command_line_tap_in_namespace_and_kvm() -> None:
    net = NetworkSpec(mode=NetMode.TAP, netns="lab-sea-1", host_addresses=("203.0.113.1/24",))
    argv = qemu.qemu_argv(_boot(net), qemu.Accel("kvm"), 2100000)
    assert argv[:4] == ["ip", "netns", "exec", "lab-sea-1"]
    assert "tsc_early_khz" not in argv[argv.index("-append") + 1]
    assert "-cpu" in argv and argv[argv.index("-cpu") + 1] == "host"
    assert f"tap,id=n0,ifname={network.tap_name('web-1')},script=no,downscript=no" in argv
    none = qemu.qemu_argv(_boot(NetworkSpec()), qemu.Accel("tcg"), 0)
    assert "-netdev" not in none and "tsc_early_khz" not in " ".join(none)


def test_network_names() -> None:
    assert len(network.tap_name("x" * 60)) <= 15
    assert network.tap_name("a") != network.tap_name("b")
    mac = network.mac_address("a")
    assert int(mac.split(":")[0], 16) & 0b10  # locally administered
    net = NetworkSpec(mode=NetMode.TAP, host_addresses=("203.0.113.1/24", "fd00:1::1/64"))
    assert network.gateways(net) == ("203.0.113.1", "fd00:1::1")


def test_attach_shows_only_app_output() -> None:
    assert attach.app_lines(LOG + "plain line\r\n") == [
        "app says FLEET:ffff:exit t=1 code=0",
        "plain line",
    ]


def test_probe_answer_is_cached(tmp_path: Path) -> None:
    from providers.vmm import probe

    runs: list[int] = []

    def run() -> bool:
        runs.append(1)
        return False

    assert probe.cached_probe(tmp_path, "kvm|k1", run) is False
    assert probe.cached_probe(tmp_path, "kvm|k1", run) is False
    assert len(runs) == 1
    assert probe.cached_probe(tmp_path, "kvm|k2", lambda: True) is True
