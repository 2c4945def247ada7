"""A bounded probe boot: does this QEMU + accelerator + kernel reach the guest init?

The only trustworthy test of KVM: a PVM host has /dev/kvm and accepts
KVM_CREATE_VM, yet a stock kernel never reaches init there. The probe boots
the real kernel and initramfs with a config that makes the init report
``probe`` and end the VM at once; no root filesystem is involved. The answer
is cached per kernel, QEMU version and CPU model in ``DATA/accel.json``.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from providers.guestinit import conf as guestconf
from providers.guestinit.launch import Launch
from providers.vmm import initramfs, qemu

log = logging.getLogger(__name__)
CACHE = "accel.json"


def probe_boot(
    work_root: Path, kernel: Path, base_initrd: Path, accel: str, *, timeout: float = 20.0
) -> bool:
    """Boot once under ``accel``; True if the init reported within ``timeout`` seconds."""
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="probe-", dir=work_root))
    nonce = secrets.token_hex(8)
    try:
        cfg = guestconf.GuestConfig(
            launch=Launch(("/probe",), (), 0, 0, (0,), "/"), nonce=nonce, hostname="probe",
            probe=True,
        )  # fmt: skip
        initramfs.write_machine_initrd(base_initrd, cfg, work / "initrd.img")
        cmdline = "console=ttyS0 panic=-1 quiet reboot=t"
        if accel == "tcg":
            khz = qemu.host_khz(Path("/proc/cpuinfo").read_text())
            cmdline += f" tsc_early_khz={khz}" if khz else ""
        argv = [
            qemu.QEMU, "-M", "microvm", "-accel", accel,
            "-cpu", "host" if accel == "kvm" else "max",
            "-m", "128", "-kernel", str(kernel), "-initrd", str(work / "initrd.img"),
            "-append", cmdline, "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-serial", f"file:{work / 'console.log'}",
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_text = (
            (work / "console.log").read_text(errors="replace")
            if (work / "console.log").exists()
            else ""
        )
        return f"FLEET:{nonce}:probe" in log_text
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cached_probe(data_dir: Path, key: str, run: Callable[[], bool]) -> bool:
    """``run()`` once per ``key``; the answer is kept in ``DATA/accel.json``."""
    path = data_dir / CACHE
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return bool(cache[key]["ok"])
    t0 = time.monotonic()
    ok = bool(run())
    cache[key] = {"ok": ok, "seconds": round(time.monotonic() - t0, 2)}
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache, indent=1, sort_keys=True))
    log.info("KVM probe %s: %s", key, "booted" if ok else "did not reach the guest init")
    return ok
