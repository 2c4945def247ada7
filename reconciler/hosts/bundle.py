"""The agent as shipped to hosts: the project and its dependencies as wheels.

Hosts need not reach a package index (the lab's cannot), so ``reconcile hosts
bootstrap`` uploads everything: the project's own wheel plus a wheel of every
dependency, built once on the operator's machine and cached by the digest of
the project's sources. That digest is also the agent's *build id*: a host
whose installed build id matches has nothing to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import FleetError

log = logging.getLogger(__name__)

PACKAGES = ("fleet", "reconciler", "providers", "hostagent")
SOURCE_SUFFIXES = (".py", ".json", ".j2", ".c", ".lua", ".sh", ".typed")


@dataclass(frozen=True, slots=True)
class Bundle:
    build_id: str
    directory: Path

    @property
    def wheels(self) -> list[Path]:
        return sorted(self.directory.glob("*.whl"))


def project_root() -> Path:
    """The source checkout this reconciler runs from (wheels are built from it)."""
    here = Path(__file__).resolve().parents[2]
    if not (here / "pyproject.toml").exists():
        raise FleetError(
            f"{here}: not a source checkout of fleet-reconciler; bootstrap builds the agent "
            "from one (clone the repository and run scripts/setup)"
        )
    return here


def build_id(root: Path) -> str:
    """A digest of everything that goes into the agent: sources, pyproject."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml"]
    for package in PACKAGES:
        files += [p for p in (root / package).rglob("*") if p.suffix in SOURCE_SUFFIXES]
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build(cache: Path, root: Path | None = None) -> Bundle:
    """The wheelhouse for the current sources, built unless cached."""
    root = root or project_root()
    bid = build_id(root)
    target = cache / bid
    if (target / ".complete").exists():
        return Bundle(bid, target)
    tmp = cache / f".{bid}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("building the agent bundle %s", bid)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    for argv in (
        [*pip, "--no-deps", "-w", str(tmp), str(root)],
        [*pip, "-w", str(tmp), str(root)],  # dependencies, from the local pip cache when it can
    ):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise FleetError(f"building the agent bundle failed: {tail}")
    (tmp / ".complete").write_text(bid + "\n")
    if target.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    return Bundle(bid, target)


KERNEL_PACKAGE = "linux-image-cloud-amd64"


@dataclass(frozen=True, slots=True)
class KernelPackage:
    """The guest kernel's .deb, fetched here once and shipped to every host."""

    abi: str
    deb: Path


def kernel_package(cache: Path, package: str = KERNEL_PACKAGE) -> KernelPackage:
    """Resolve the kernel ABI from the metapackage and download its .deb (cached)."""
    depends = subprocess.run(
        ["apt-cache", "depends", package], capture_output=True, text=True, check=False
    )
    abi = ""
    for raw in depends.stdout.splitlines():
        line = raw.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            abi = line.split("linux-image-", 1)[1].strip()
            break
    if not abi:
        raise FleetError(
            f"cannot resolve {package} (apt-cache depends): run `apt-get update` first"
        )
    target = cache / "kernels"
    found = sorted(target.glob(f"linux-image-{abi}_*.deb"))
    if found:
        return KernelPackage(abi, found[-1])
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["apt-get", "download", f"linux-image-{abi}"],
        cwd=target,
        capture_output=True,
        text=True,
        check=False,
    )
    found = sorted(target.glob(f"linux-image-{abi}_*.deb"))
    if result.returncode != 0 or not found:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise FleetError(f"downloading the guest kernel linux-image-{abi} failed: {tail}")
    return KernelPackage(abi, found[-1])
