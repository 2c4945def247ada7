"""The guest kernel: Debian's cloud kernel, unpacked into the agent's data directory.

Never installed into the host's /boot: ``apt-get download`` fetches the .deb,
``dpkg -x`` unpacks it under ``DATA/kernels/<abi>/root``, ``depmod -b`` writes
the modules.dep the package lacks, and the LZ4-compressed bzImage is unpacked
into an ELF ``vmlinux`` (PVH entry), which QEMU boots a little faster. The ABI
name is pinned by resolving the ``linux-image-cloud-amd64`` metapackage once;
a host can configure another package, a fixed ABI, or a kernel of its own.
"""

from __future__ import annotations

import fcntl
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import VMMError

log = logging.getLogger(__name__)
LZ4_MAGIC = b"\x02\x21\x4c\x18"
ELF_MAGIC = b"\x7fELF"
# What a microVM needs from modules; dependencies are added from modules.dep.
WANTED_MODULES = ("virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "erofs")


@dataclass(frozen=True, slots=True)
class KernelConfig:
    """Which kernel a host boots its machines with."""

    package: str = "linux-image-cloud-amd64"
    abi: str = ""  # e.g. "6.1.0-56-cloud-amd64"; resolved from the metapackage when empty


@dataclass(frozen=True, slots=True)
class Kernel:
    """An unpacked kernel: its image and its modules tree."""

    version: str
    image: Path  # vmlinux (ELF) when it could be unpacked, else the bzImage
    modules_dir: Path  # .../lib/modules/<version>

    def module_paths(self, wanted: tuple[str, ...] = WANTED_MODULES) -> list[Path]:
        """The .ko files for ``wanted`` and their dependencies, dependencies first."""
        deps = parse_modules_dep((self.modules_dir / "modules.dep").read_text())
        return [self.modules_dir / rel for rel in module_order(deps, wanted)]


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep -> {relative .ko path: [relative dependency paths]} (pure)."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[path.strip()] = rest.split()
    return deps


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def module_order(deps: dict[str, list[str]], wanted: tuple[str, ...]) -> list[str]:
    """Load order for ``wanted`` modules: every module after its dependencies (pure)."""
    by_name = {module_name(p): p for p in deps}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise VMMError(f"kernel module {name} not found in modules.dep")
        visit(by_name[name])
    return order


def resolve_abi(package: str) -> str:
    """The linux-image-<abi> package a metapackage depends on now (via apt-cache)."""
    proc = subprocess.run(
        ["apt-cache", "depends", package], capture_output=True, text=True, check=False
    )
    match = re.search(r"Depends:\s*linux-image-(\S+)", proc.stdout)
    if proc.returncode != 0 or not match:
        raise VMMError(f"cannot resolve kernel package {package}: {proc.stderr.strip()}")
    return match.group(1)


def unpack_bzimage(bzimage: Path, dest: Path) -> bool:
    """Write the ELF vmlinux inside an LZ4 bzImage to ``dest``; False if not possible."""
    data = bzimage.read_bytes()
    at = data.find(LZ4_MAGIC)
    if at < 0 or shutil.which("lz4") is None:
        return False
    proc = subprocess.run(["lz4", "-dc"], input=data[at:], capture_output=True, check=False)
    # lz4's legacy format has no end marker: trailing bytes make it complain after the data.
    if not proc.stdout.startswith(ELF_MAGIC):
        return False
    dest.write_bytes(proc.stdout)
    return True


class KernelStore:
    """Kernels under ``DATA/kernels``; each fetched and prepared once."""

    def __init__(self, data_dir: Path, config: KernelConfig | None = None) -> None:
        self.root = data_dir / "kernels"
        self.config = config or KernelConfig()

    def ensure(self) -> Kernel:
        abi = self.config.abi or self._pinned_abi()
        kdir = self.root / abi
        ready = kdir / "ready"
        if not ready.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / f"{abi}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not ready.exists():
                    self._fetch(abi, kdir)
        image = kdir / "vmlinux"
        if not image.exists():
            image = kdir / "root" / "boot" / f"vmlinuz-{abi}"
        return Kernel(abi, image, kdir / "root" / "lib" / "modules" / abi)

    def _pinned_abi(self) -> str:
        pin = self.root / f"{self.config.package}.abi"
        if pin.exists():
            return pin.read_text().strip()
        abi = resolve_abi(self.config.package)
        self.root.mkdir(parents=True, exist_ok=True)
        pin.write_text(abi + "\n")
        return abi

    def _fetch(self, abi: str, kdir: Path) -> None:
        log.info("fetching kernel %s", abi)
        if kdir.exists():
            shutil.rmtree(kdir)
        work = Path(tempfile.mkdtemp(prefix=f".{abi}-", dir=self.root))
        try:
            # A package shipped by `reconcile hosts bootstrap` (hosts need not reach
            # a package mirror); else download it here.
            shipped = sorted((self.root / "debs").glob(f"linux-image-{abi}_*.deb"))
            if shipped:
                shutil.copyfile(shipped[-1], work / shipped[-1].name)
            else:
                try:
                    proc = subprocess.run(
                        ["apt-get", "download", f"linux-image-{abi}"],
                        cwd=work, capture_output=True, text=True, check=False, timeout=600,
                    )  # fmt: skip
                except subprocess.TimeoutExpired as exc:
                    raise VMMError(
                        f"apt-get download linux-image-{abi} took over 10 minutes"
                    ) from exc
                if proc.returncode != 0 or not list(work.glob("*.deb")):
                    raise VMMError(
                        f"apt-get download linux-image-{abi} failed (try apt-get update): "
                        f"{proc.stderr.strip()}"
                    )
            debs = list(work.glob("*.deb"))
            root = work / "root"
            subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True, capture_output=True)
            subprocess.run(["depmod", "-b", str(root), abi], check=True, capture_output=True)
            debs[0].unlink()
            bz = root / "boot" / f"vmlinuz-{abi}"
            if not unpack_bzimage(bz, work / "vmlinux"):
                log.warning("could not unpack %s; booting the bzImage", bz)
            (work / "ready").write_text(abi + "\n")
            work.rename(kdir)
        except subprocess.CalledProcessError as exc:
            raise VMMError(f"preparing kernel {abi} failed: {exc}") from exc
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
