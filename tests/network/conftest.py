"""Fixtures for the network provider's integration tests: root, tools, a torn-down lab."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.network.netlab import NetLab

TOOLS = ("ip", "wg", "wireguard-go", "bird", "birdc", "iperf3", "nft")


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[NetLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (run scripts/setup)")
    lab = NetLab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
