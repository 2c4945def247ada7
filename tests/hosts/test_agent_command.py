"""The command the reconciler runs on a host for ``fleet-agent VERB``: relay first.

Run here with ``sh`` against a venv laid out as bootstrap lays it out (its
``python`` is this interpreter, its relay the real module, its ``fleet-agent``
a stand-in that says it ran): the relay is used when it is installed and
falls back to ``fleet-agent VERB``; an agent from before the relay is run
directly; no agent at all is exit status 127, as before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hostagent import relay
from reconciler.hosts import agentclient


def venv(tmp_path: Path, *, with_relay: bool) -> str:
    root = tmp_path / "venvs" / "b1"
    (root / "bin").mkdir(parents=True)
    os.symlink(sys.executable, root / "bin" / "python")
    agent = root / "bin" / "fleet-agent"
    agent.write_text('#!/bin/sh\necho "fleet-agent $1: $(cat)"\n')
    agent.chmod(0o755)
    if with_relay:
        site = root / "lib" / "python3.11" / "site-packages" / "hostagent"
        site.mkdir(parents=True)
        shutil.copy(relay.__file__, site / "relay.py")
    return str(agent)


def run(command: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_AGENT")}
    return subprocess.run(
        ["sh", "-c", command],
        input="{}",
        capture_output=True,
        text=True,
        env={**clean, "FLEET_AGENT_DATA": str(tmp_path / "data"), **env},
        timeout=60,
        check=False,
    )


def test_the_relay_runs_and_falls_back_to_the_agent(tmp_path: Path) -> None:
    agent = venv(tmp_path, with_relay=True)
    out = run(agentclient.agent_command(agent, "apply"), tmp_path)
    assert out.returncode == 0 and out.stdout == "fleet-agent apply: {}\n", out.stderr
    # Proof that the relay ran (and not the agent directly): it refuses when told to.
    only = run(agentclient.agent_command(agent, "apply"), tmp_path, FLEET_AGENT_RELAY="only")
    assert only.returncode == 1 and "no supervisor" in only.stderr and only.stdout == ""


def test_an_agent_without_the_relay_and_no_agent_at_all(tmp_path: Path) -> None:
    agent = venv(tmp_path, with_relay=False)
    out = run(agentclient.agent_command(agent, "observe"), tmp_path, FLEET_AGENT_RELAY="only")
    assert out.returncode == 0 and out.stdout == "fleet-agent observe: {}\n"
    missing = run(
        agentclient.agent_command(str(tmp_path / "none/bin/fleet-agent"), "apply"), tmp_path
    )
    assert missing.returncode == 127


def test_a_command_line_of_its_own_is_run_as_given() -> None:
    assert (
        agentclient.agent_command("X=1 /opt/fleet-agent", "apply") == "X=1 /opt/fleet-agent apply"
    )
