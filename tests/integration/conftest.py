"""Fixtures for the microVM integration tests: a shared data directory (kernel, init and
initramfs are built once per session), images built from busybox-static, network
namespaces that are always removed, and a manager that kills every machine it started."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.images import layout, samples
from providers.vmm import machines

BOOT_TIMEOUT = 30.0


def _missing() -> str:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (scripts/setup installs it)"
    if shutil.which("gcc") is None:
        return "gcc is not installed (scripts/setup installs it)"
    return ""


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = _missing()
    if why:
        pytest.skip(why)
    return tmp_path_factory.mktemp("agent-data")


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The test images, as references: web (busybox httpd) and report (OCI semantics)."""
    root = tmp_path_factory.mktemp("images")
    refs = {}
    layout.write_oci_layout(root / "web", samples.web_image(8080))
    refs["web"] = f"oci:{root / 'web'}"
    cases = {
        # Entrypoint + Cmd, USER uid:gid, WorkingDir that does not exist yet, env, no PATH
        "both": {
            "Entrypoint": ["/bin/report", "ep"],
            "Cmd": ["c1", "c2"],
            "User": "1000:1000",
            "WorkingDir": "/srv/app",
            "Env": ["FOO=image", "BAR=image"],
        },
        # Entrypoint only, a named user with a supplementary group
        "entrypoint": {"Entrypoint": ["/bin/report", "only-ep"], "User": "app"},
        # Cmd only, bare name found through the default PATH, and an app that fails
        "cmd": {"Cmd": ["report", "only-cmd"], "Env": ["REPORT_EXIT=3"]},
        # the App overrides everything; its PATH is explicitly empty
        "override": {
            "Entrypoint": ["/bin/false"],
            "Cmd": ["image-cmd"],
            "User": "app",
            "WorkingDir": "/nope",
            "Env": ["FOO=image", "BAR=image"],
        },
    }
    for name, config in cases.items():
        layout.write_oci_layout(root / name, samples.report_image(config))
        refs[name] = f"oci:{root / name}"
    return refs


@pytest.fixture
def manager(data_dir: Path) -> Iterator[machines.MachineManager]:
    mgr = machines.MachineManager(data_dir)
    yield mgr
    for name in mgr.names():  # never leave a VM (or a tap) behind, even on failure
        mgr.remove(name, force=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of our own (the 'host namespace' of a lab host)."""
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    name = f"fltest-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
