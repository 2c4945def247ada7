"""The SSH connection holder (control.py, holder.py) against a real sshd on loopback.

Each test starts its own holder in its own control directory and stops it by
PID. What must hold: connections are reused across "runs" (separate clients),
every request is a fresh exchange with the host, pins are verified, the socket
is private, and the holder goes away on its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import errors
from fleet.model import SSHTarget
from hostagent import listener
from reconciler.hosts import agentclient, control, hostkeys, ssh
from reconciler.hosts import holder as holder_mod
from tests.hosts.sshd import SSHDaemon, free_port, keygen
from tests.hosts.test_observe_port import agent, client, data_dir, host, line_server

pytestmark = pytest.mark.root
__all__ = ["agent", "data_dir", "host"]  # fixtures used below


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {control.ENV_DIR: str(tmp_path / "ctl")}


def pid_of(path: Path) -> int:
    return int(control.request(path, {"op": "ping"}, timeout=5)["pid"])


@contextlib.contextmanager
def holder(
    sshd: SSHDaemon, env: dict[str, str], idle: float = 30.0, *, known_hosts: bool = True
) -> Iterator[Path]:
    """A holder for ``sshd``; with ``known_hosts`` its key is pinned there too."""
    known = sshd.dir / "known_hosts"
    text = f"[127.0.0.1]:{sshd.port} {sshd.host_key}\n" if known_hosts else ""
    if not known.exists() or known.read_text() != text:  # a rewrite would make another holder
        known.write_text(text)
    settings = control.Settings(str(sshd.client_key), str(known), None, idle)
    path = control.ensure_holder(settings, env)
    assert path is not None
    pid = pid_of(path)
    try:
        yield path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # our own holder, by PID


def held(path: Path, target: SSHTarget) -> control.HeldConnection:
    def no_direct() -> object:
        raise AssertionError("no direct connection expected")

    return control.HeldConnection(path, "sea-1", target, no_direct)  # type: ignore[arg-type]


def ask(conn: control.HeldConnection, port: int, text: str) -> bytes:
    with conn.open_tcp("127.0.0.1", port, timeout=5) as chan:
        chan.sendall(text.encode(), timeout=5)
        return chan.read_line(timeout=5)


def test_runs_share_one_connection_and_every_request_reaches_the_host(sshd, env):
    accepted: list[int] = []
    with holder(sshd, env) as path, line_server(accepted) as port:
        for run in range(3):  # three "runs": new clients each time
            conn = held(path, sshd.target(pin=False))
            conn.connect()
            assert ask(conn, port, f"run {run}\n") == f"got: run {run}\n".encode()
        assert sshd.accepts() == 1  # one SSH connection for all three
        assert len(accepted) == 3  # but a real exchange with the host each time
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_changed_pin_is_verified_and_refused(sshd, env, tmp_path):
    wrong = SSHTarget("127.0.0.1", sshd.port, "root", keygen(tmp_path / "other"))
    with holder(sshd, env, known_hosts=False) as path:  # the Host document's pin only
        with pytest.raises(errors.HostKeyMismatch):
            held(path, wrong).connect()
        held(path, sshd.target()).connect()  # the right pin still works


def test_an_unreachable_host_is_host_unreachable(sshd, env):
    with holder(sshd, env) as path:
        gone = SSHTarget("127.0.0.1", free_port(), "root", None)
        with pytest.raises(errors.HostUnreachable):
            held(path, gone).connect()


def test_agent_observe_goes_through_the_holder(sshd, env, host, agent):
    with holder(sshd, env) as path, listener.ObserveListener(agent, port=0) as lst:
        conn = control.HeldConnection(path, "sea-1", host.ssh, lambda: None)  # type: ignore[arg-type,return-value]
        c = client(host, conn, agent.inventory.directory.parent, lst.port)  # type: ignore[arg-type]
        seen = c.observe()
        assert c.last_observe_via == "port"
        assert seen.reachable and seen.host == "sea-1"


def test_the_holder_leaves_when_idle_or_when_its_socket_goes(sshd, env):
    with holder(sshd, env, idle=1.0) as path:
        pid = pid_of(path)
        deadline = time.monotonic() + 10
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not path.exists()
    with holder(sshd, env) as path:
        pid = pid_of(path)
        path.unlink()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_a_dead_holders_socket_is_replaced_by_a_new_holder(sshd, env):
    with holder(sshd, env) as path:
        first = pid_of(path)
        os.kill(first, signal.SIGKILL)  # ours, by PID: leaves its socket file behind
        deadline = time.monotonic() + 10
        while control.alive(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        with holder(sshd, env) as again:
            assert again == path and pid_of(again) != first
            held(again, sshd.target()).connect()


def test_no_holder_when_turned_off_or_when_the_directory_is_not_private(sshd, env, tmp_path):
    assert control.persist_seconds({control.ENV_PERSIST: "0"}) == 0
    off = control.Settings(str(sshd.client_key), None, None, 0.0)
    assert control.ensure_holder(off, env) is None
    public = tmp_path / "public"
    public.mkdir(mode=0o755)
    public.chmod(0o755)
    with pytest.raises(errors.FleetError, match="mode 0700"):
        control.control_dir({control.ENV_DIR: str(public)})
    on = control.Settings(str(sshd.client_key), None, None, 30.0)
    assert control.ensure_holder(on, {control.ENV_DIR: str(public)}) is None  # direct, then


def test_changed_pins_or_key_or_namespace_get_another_holder(tmp_path):
    key, known = tmp_path / "key", tmp_path / "known_hosts"
    key.write_text("k")
    known.write_text("a\n")
    base = control.Settings(str(key), str(known), None, 60.0)
    first = control.socket_path(base, tmp_path)
    assert control.socket_path(base, tmp_path) == first
    known.write_text("a changed pin\n")
    assert control.socket_path(base, tmp_path) != first
    again = control.socket_path(base, tmp_path)
    assert (
        control.socket_path(control.Settings(str(key), str(known), "ns", 60.0), tmp_path) != again
    )
    other = tmp_path / "other"
    other.write_text("k")
    assert (
        control.socket_path(control.Settings(str(other), str(known), None, 60.0), tmp_path) != again
    )


def test_when_the_holder_does_not_answer_the_command_connects_itself(sshd, creds, fast, tmp_path):
    own = ssh.SSHConnection("sea-1", sshd.target(), creds, hostkeys.HostKeyPolicy(), fast)
    conn = control.HeldConnection(tmp_path / "none.sock", "sea-1", sshd.target(), lambda: own)
    with line_server() as port:
        conn.connect()
        assert ask(conn, port, "hi\n") == b"got: hi\n"
    assert conn.gone and sshd.accepts() == 1
    own.close()


def test_sigterm_removes_the_socket(sshd, env):
    with holder(sshd, env) as path:
        os.kill(pid_of(path), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not path.exists()


def test_agent_commands_run_through_the_holder_and_nothing_else(sshd, env, creds, fast):
    with holder(sshd, env) as path:
        conn = held(path, sshd.target(pin=False))
        # No agent on this machine: said as the exec channel says it (127), by the holder.
        res = conn.exec(agentclient.agent_command(agentclient.AGENT, "apply"), stdin=b"{}")
        assert res.exit_status == 127 and not conn.gone
        assert sshd.accepts() == 1
        own = ssh.SSHConnection("sea-1", sshd.target(), creds, hostkeys.HostKeyPolicy(), fast)
        other = control.HeldConnection(path, "sea-1", sshd.target(pin=False), lambda: own)
        assert other.exec("echo hi").lines() == ["hi"]  # not the holder's to run: our own
        assert sshd.accepts() == 2 and not other.gone
        own.close()


def test_the_holder_relays_each_line_as_it_comes(sshd, pool, monkeypatch):
    command = "echo one; sleep 0.5; echo two; echo oops >&2; exit 3"
    monkeypatch.setattr(holder_mod, "HELD_COMMANDS", frozenset({command}))
    target = sshd.target()
    body = {
        "host": "sea-1",
        "command": command,
        "stdin": "",
        "timeout": 20,
        "target": {"address": target.address, "port": target.port, "user": target.user,
                   "host_key": target.host_key},
    }  # fmt: skip
    seen: list[tuple[float, dict[str, object]]] = []
    answer = holder_mod.Holder(pool, 30).exec(
        body, lambda doc: seen.append((time.monotonic(), doc))
    )
    assert [doc for _, doc in seen] == [{"line": "one"}, {"line": "two"}]
    assert seen[1][0] - seen[0][0] >= 0.4  # the first line went on before the command ended
    assert answer["exit"] == 3 and answer["stderr"] == "oops\n"
    refused = holder_mod.Holder(pool, 30).exec({**body, "command": "true"}, seen.append)
    assert refused["error"]["type"] == "NotHeld"
