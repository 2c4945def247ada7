"""The machine lifecycle on one host: spec in, microVM out. What the host agent calls.

``create`` resolves the image and builds what is missing (root filesystem per
digest, kernel, init, initramfs per kernel), then gives the machine its own
directory ``DATA/machines/<name>/`` with its writable layer, initrd and record;
``start``/``stop``/``status``/``remove`` drive the hypervisor. Records are
JSON, so another process (a later ``fleet-agent machine ls``) sees the same
machines. Phase timings (resolve, build, prepare, VMM start, and from the
guest's own clock kernel and init) are kept in the record.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import VMMError
from providers.guestinit import build as initbuild
from providers.guestinit import conf as guestconf
from providers.guestinit import launch
from providers.images.store import ImageStore
from providers.vmm import (
    base,
    cloud_hypervisor,
    console,
    firecracker,
    initramfs,
    network,
    probe,
    qemu,
)
from providers.vmm import status as status_mod
from providers.vmm.kernel import KernelStore
from providers.vmm.spec import (
    MachineSpec,
    MachineState,
    MachineStatus,
    NetMode,
    NetworkSpec,
    PortMapping,
    VMMKind,
)

log = logging.getLogger(__name__)
RECORD = "machine.json"
# wall time of the last stop asked of the machine (status: ended after it means stopped)
STOP_REQUESTED = "stop_requested_at"
CMDLINE = "console=ttyS0 panic=-1 quiet reboot=t"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def spec_to_dict(spec: MachineSpec) -> dict[str, Any]:
    return asdict(spec)


def spec_from_dict(raw: dict[str, Any]) -> MachineSpec:
    net = dict(raw.get("network") or {})
    network_spec = NetworkSpec(
        mode=NetMode(net.get("mode", "none")),
        addresses=tuple(net.get("addresses", ())),
        host_addresses=tuple(net.get("host_addresses", ())),
        gateways=tuple(net.get("gateways", ())),
        publish=tuple(PortMapping(**p) for p in net.get("publish", ())),
        netns=net.get("netns", ""),
        mtu=int(net.get("mtu", 0)),
    )

    def opt(key: str) -> tuple[str, ...] | None:
        value = raw.get(key)
        return None if value is None else tuple(value)

    return MachineSpec(
        name=raw["name"],
        image=raw["image"],
        entrypoint=opt("entrypoint"),
        cmd=opt("cmd"),
        env=tuple((k, v) for k, v in raw.get("env", ())),
        user=raw.get("user"),
        workdir=raw.get("workdir"),
        hostname=raw.get("hostname", ""),
        cpus=int(raw.get("cpus", 1)),
        memory_mb=int(raw.get("memory_mb", 256)),
        kill_signal=str(raw.get("kill_signal", "SIGTERM")),
        kill_timeout=float(raw.get("kill_timeout", 5.0)),
        network=network_spec,
        vmm=VMMKind(raw.get("vmm", "qemu")),
        pci_devices=tuple(raw.get("pci_devices", ())),
    )


@dataclass(frozen=True, slots=True)
class MachineRecord:
    """A created machine: its spec and everything derived for it."""

    spec: MachineSpec
    boot: base.BootConfig
    image_digest: str
    created_at: float
    timings: dict[str, float] = field(default_factory=dict)


def _guest_network(spec: MachineSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    net = spec.network
    if net.mode is NetMode.USER:
        return net.addresses or (qemu.USER_GUEST,), net.gateways or (qemu.USER_HOST,)
    if net.mode is NetMode.TAP:
        return net.addresses, network.gateways(net)
    return (), ()


class MachineManager:
    """Machines under ``DATA/machines`` on this host."""

    def __init__(
        self,
        data_dir: Path,
        *,
        images: ImageStore | None = None,
        kernels: KernelStore | None = None,
        drivers: dict[VMMKind, base.Hypervisor] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.images = images or ImageStore(data_dir)
        self.kernels = kernels or KernelStore(data_dir)
        if drivers is None:
            drivers = {
                VMMKind.QEMU: qemu.QemuDriver(probe=self._probe_kvm),
                VMMKind.FIRECRACKER: firecracker.FirecrackerDriver(),
                VMMKind.CLOUD_HYPERVISOR: cloud_hypervisor.CloudHypervisorDriver(),
            }
        self.drivers = drivers
        self.machines_dir = data_dir / "machines"
        self.machines_dir.mkdir(parents=True, exist_ok=True)

    def _probe_kvm(self) -> bool:
        """Asked by the QEMU driver only when the CPU has vmx/svm and /dev/kvm opens."""
        kernel = self.kernels.ensure()
        base_initrd = initramfs.ensure_base(
            self.data_dir, kernel, initbuild.ensure_init(self.data_dir)
        )
        version = subprocess.run([qemu.QEMU, "--version"], capture_output=True, text=True,
                                 check=False).stdout.split("\n", 1)[0]  # fmt: skip
        cpu = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")  # fmt: skip
        key = f"kvm|{kernel.version}|{version}|{cpu.partition(':')[2].strip()}"
        return probe.cached_probe(
            self.data_dir, key,
            lambda: probe.probe_boot(self.data_dir / "tmp", kernel.image, base_initrd, "kvm"),
        )  # fmt: skip

    # -- records ---------------------------------------------------------

    def _dir(self, name: str) -> Path:
        if not _NAME_RE.match(name):
            raise VMMError(f"invalid machine name {name!r} (a-z, 0-9, '.', '_', '-'; 63 at most)")
        return self.machines_dir / name

    def _save(self, rec: MachineRecord) -> None:
        boot = rec.boot
        doc = {
            "spec": spec_to_dict(rec.spec),
            "image_digest": rec.image_digest,
            "created_at": rec.created_at,
            "timings": rec.timings,
            "boot": {
                "kernel": str(boot.kernel), "initrd": str(boot.initrd),
                "cmdline": boot.cmdline, "rootfs": str(boot.rootfs),
                "tap": boot.tap, "mac": boot.mac, "nonce": boot.nonce,
            },
        }  # fmt: skip
        tmp = boot.dir / (RECORD + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        tmp.replace(boot.dir / RECORD)

    def get(self, name: str) -> MachineRecord:
        mdir = self._dir(name)
        try:
            doc = json.loads((mdir / RECORD).read_text())
        except FileNotFoundError:
            raise VMMError(f"no machine named {name}") from None
        spec = spec_from_dict(doc["spec"])
        b = doc["boot"]
        boot = base.BootConfig(
            name=spec.name, dir=mdir, kernel=Path(b["kernel"]), initrd=Path(b["initrd"]),
            cmdline=b["cmdline"], rootfs=Path(b["rootfs"]), cpus=spec.cpus,
            memory_mb=spec.memory_mb, network=spec.network, tap=b["tap"], mac=b["mac"],
            nonce=b["nonce"], pci_devices=spec.pci_devices,
        )  # fmt: skip
        return MachineRecord(spec, boot, doc["image_digest"], doc["created_at"], doc["timings"])

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.machines_dir.glob(f"*/{RECORD}"))

    def driver(self, kind: VMMKind) -> base.Hypervisor:
        drv = self.drivers.get(kind)
        if drv is None:
            raise VMMError(f"no {kind} driver configured on this host")
        why = drv.available()
        if why:
            raise VMMError(f"{kind} cannot run here: {why}")
        return drv

    # -- lifecycle -------------------------------------------------------

    def create(self, spec: MachineSpec) -> MachineRecord:
        """Prepare everything for ``spec`` (building only what is missing); boots nothing."""
        mdir = self._dir(spec.name)
        if (mdir / RECORD).exists():
            raise VMMError(f"machine {spec.name} already exists (remove it first)")
        drv = self.driver(spec.vmm)
        timings: dict[str, float] = {}
        image = self.images.prepare(spec.image, timings)
        t0 = time.monotonic()
        hostname = spec.hostname or spec.name
        plan = launch.compute(
            image.config,
            launch.Overrides(spec.entrypoint, spec.cmd, spec.env, spec.user, spec.workdir),
            passwd=image.passwd, group=image.group, hostname=hostname,
        )  # fmt: skip
        kernel = self.kernels.ensure()
        init_binary = initbuild.ensure_init(self.data_dir)
        base_initrd = initramfs.ensure_base(self.data_dir, kernel, init_binary)
        addresses, gws = _guest_network(spec)
        nonce = secrets.token_hex(8)
        cfg = guestconf.GuestConfig(
            launch=plan, nonce=nonce, hostname=hostname, rootfstype=image.fstype,
            addresses=addresses, gateways=gws, mtu=spec.network.mtu,
            kill_signal=guestconf.signal_number(spec.kill_signal),
            kill_timeout_ms=int(spec.kill_timeout * 1000), halt=drv.guest_halt,
        )  # fmt: skip
        try:
            mdir.mkdir(parents=True)
        except FileExistsError:
            raise VMMError(f"machine {spec.name} is being created by another process") from None
        try:
            initrd = mdir / "initrd.img"
            initramfs.write_machine_initrd(base_initrd, cfg, initrd)
            boot = base.BootConfig(
                name=spec.name, dir=mdir, kernel=kernel.image, initrd=initrd, cmdline=CMDLINE,
                rootfs=image.rootfs, cpus=spec.cpus, memory_mb=spec.memory_mb,
                network=spec.network,
                tap=network.tap_name(spec.name) if spec.network.mode is NetMode.TAP else "",
                mac=network.mac_address(spec.name), nonce=nonce, pci_devices=spec.pci_devices,
            )  # fmt: skip
            drv.prepare(boot)
            timings["prepare"] = time.monotonic() - t0
            rec = MachineRecord(spec, boot, image.manifest_digest, time.time(), timings)
            self._save(rec)
        except BaseException:
            shutil.rmtree(mdir, ignore_errors=True)
            raise
        log.info("created machine %s from %s", spec.name, image.manifest_digest)
        return rec

    def start(self, name: str) -> MachineStatus:
        rec = self.get(name)
        drv = self.driver(rec.spec.vmm)
        if drv.running(rec.boot):
            raise VMMError(f"machine {name} is already running")
        boot = rec.boot
        boot.console_log.unlink(missing_ok=True)
        if rec.spec.network.mode is NetMode.TAP:
            network.create_tap(boot.tap, rec.spec.network)
        t0 = time.monotonic()
        try:
            drv.start(boot)
        except BaseException:
            if rec.spec.network.mode is NetMode.TAP:
                network.delete_tap(boot.tap, rec.spec.network)
            raise
        rec.timings["vmm_start"] = time.monotonic() - t0
        rec.timings["started_at"] = time.time()
        self._save(rec)
        return drv.status(boot)

    def run(self, spec: MachineSpec) -> MachineRecord:
        """``create`` then ``start``."""
        self.create(spec)
        self.start(spec.name)
        return self.get(spec.name)

    def status(self, name: str) -> MachineStatus:
        rec = self.get(name)
        if "started_at" not in rec.timings:
            return MachineStatus(name, MachineState.CREATED, image_digest=rec.image_digest)
        st = self.driver(rec.spec.vmm).status(rec.boot)
        requested = rec.timings.get(STOP_REQUESTED, 0.0) >= rec.timings["started_at"]
        st = status_mod.after_requested_stop(st, requested)
        return MachineStatus(
            st.name, st.state, st.pid, st.exit_code, st.exit_signal, st.stop_signal,
            st.detail, rec.image_digest, rec.timings["started_at"],
        )  # fmt: skip

    def list(self) -> list[MachineStatus]:
        return [self.status(n) for n in self.names()]

    def stop(
        self, name: str, signal: str | None = None, timeout: float | None = None
    ) -> MachineStatus:
        """Send the app its kill signal (or ``signal``), SIGKILL after the timeout, wait."""
        rec = self.get(name)
        sig = guestconf.signal_number(signal or rec.spec.kill_signal)
        wait = rec.spec.kill_timeout if timeout is None else timeout
        if self.driver(rec.spec.vmm).running(rec.boot):
            rec.timings[STOP_REQUESTED] = time.time()  # however it ends now, it was asked to
            self._save(rec)
        self.driver(rec.spec.vmm).stop(rec.boot, sig, wait)
        if rec.spec.network.mode is NetMode.TAP:
            network.delete_tap(rec.boot.tap, rec.spec.network)
        return self.status(name)

    def wait(self, name: str, states: set[MachineState], timeout: float) -> MachineStatus:
        """Poll until the machine is in one of ``states``; raises VMMError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(name)
            if st.state in states:
                return st
            if time.monotonic() > deadline:
                raise VMMError(f"machine {name}: still {st.state} after {timeout:.0f} s")
            time.sleep(0.05)

    def boot_report(self, name: str) -> console.BootReport:
        rec = self.get(name)
        return console.parse(self.console_log(name), rec.boot.nonce)

    def console_log(self, name: str) -> str:
        rec = self.get(name)
        return self.driver(rec.spec.vmm).console_log(rec.boot)

    def reset(self, name: str) -> None:
        """Discard the machine's writable layer (a stopped machine boots from the image again)."""
        rec = self.get(name)
        drv = self.driver(rec.spec.vmm)
        if drv.running(rec.boot):
            raise VMMError(f"machine {name} is running; stop it before resetting it")
        drv.destroy(rec.boot)  # removes the writable layer and the VMM's leftovers
        drv.prepare(rec.boot)  # a fresh layer over the same read-only base

    def remove(self, name: str, *, force: bool = False) -> None:
        """Destroy the machine and its writable layer; a running one only with ``force``."""
        rec = self.get(name)
        drv = self.driver(rec.spec.vmm)
        if drv.running(rec.boot) and not force:
            raise VMMError(f"machine {name} is running; stop it first or force")
        drv.destroy(rec.boot)
        if rec.spec.network.mode is NetMode.TAP:
            network.delete_tap(rec.boot.tap, rec.spec.network)
        shutil.rmtree(rec.boot.dir, ignore_errors=True)
