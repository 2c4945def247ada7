"""The SSH transport against a real OpenSSH sshd on 127.0.0.1 (see sshd.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fleet import errors
from fleet.model import SSHTarget
from reconciler.hosts import fanout, hostkeys, ssh
from tests.hosts.sshd import SSHDaemon, free_port, keygen

pytestmark = pytest.mark.root


def conn(
    sshd: SSHDaemon,
    creds: ssh.Credentials,
    opts: ssh.SSHOptions,
    *,
    pin: bool = True,
    policy: hostkeys.HostKeyPolicy | None = None,
) -> ssh.SSHConnection:
    return ssh.SSHConnection(
        "sea-1", sshd.target(pin=pin), creds, policy or hostkeys.HostKeyPolicy(), opts
    )


# -- exec -------------------------------------------------------------------


def test_exec_feeds_stdin_and_streams_stdout_lines(sshd, creds, fast):
    c = conn(sshd, creds, fast)
    seen: list[tuple[float, str]] = []
    request = b'{"op": "observe"}\n'
    script = 'cat; echo \'{"event": "progress"}\'; sleep 0.4; echo \'{"result": 1}\''
    start = time.monotonic()
    r = c.exec(script, stdin=request, on_line=lambda s: seen.append((time.monotonic(), s)))
    end = time.monotonic()
    assert [s for _, s in seen] == ['{"op": "observe"}', '{"event": "progress"}', '{"result": 1}']
    assert r.lines() == [s for _, s in seen]
    # Streamed: the progress line arrived well before the command finished.
    assert seen[1][0] - start < (end - start) - 0.3
    c.close()


def test_exit_status_and_stderr_are_returned_not_raised(sshd, creds, fast):
    c = conn(sshd, creds, fast)
    r = c.exec("echo out; echo oops >&2; exit 7")
    assert (r.exit_status, r.stdout, r.stderr, r.ok) == (7, b"out\n", b"oops\n", False)
    assert c.exec("true").ok
    c.close()


def test_large_stdin_and_stdout_do_not_deadlock(sshd, creds, fast):
    c = conn(sshd, creds, fast)
    blob = os.urandom(3 * 1024 * 1024).hex().encode()  # 6 MiB, beyond both windows
    r = c.exec("cat", stdin=blob)
    assert r.stdout == blob
    c.close()


def test_command_that_ignores_its_stdin_still_reports_its_exit_status(sshd, creds, fast):
    c = conn(sshd, creds, fast)
    for _ in range(5):
        assert c.exec("exit 4", stdin=b"x" * 5_000_000).exit_status == 4
    c.close()


def test_command_timeout_kills_the_remote_command(sshd, creds, fast):
    c = conn(sshd, creds, fast)
    marker = f"fleet-timeout-{os.getpid()}-{time.monotonic_ns()}"
    start = time.monotonic()
    with pytest.raises(errors.HostUnreachable, match=r"timed out after 0\.5s") as info:
        c.exec(f"sleep 30; echo {marker}", timeout=0.5)
    assert time.monotonic() - start < 2
    assert info.value.retryable
    # The remote command dies too (coreutils timeout on the host), within the grace.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        ps = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
        if not ps.stdout.strip():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"remote command still running: {ps.stdout}")
    assert c.exec("echo alive").lines() == ["alive"]  # the connection survived
    c.close()


# -- host keys --------------------------------------------------------------


def test_pinned_host_key_is_accepted_and_fingerprint_matches_ssh_keygen(sshd, creds, fast):
    c = conn(sshd, creds, fast)
    c.connect()
    out = subprocess.run(
        ["ssh-keygen", "-lf", f"{sshd.host_key_path}.pub"], capture_output=True, text=True
    ).stdout
    assert c.host_key is not None and c.host_key.fingerprint == out.split()[1]
    assert ssh.host_key_fingerprint(sshd.target()) == out.split()[1]
    c.close()


def test_unknown_host_key_is_refused_with_fingerprint_and_how_to_pin(sshd, creds, fast):
    c = conn(sshd, creds, fast, pin=False)
    with pytest.raises(errors.HostKeyMismatch) as info:
        c.exec("true")
    msg = str(info.value)
    key = hostkeys.PublicKey.parse(sshd.host_key)
    assert "UNKNOWN" in msg and key.fingerprint in msg
    assert f'host_key: "{key.openssh()}"' in msg
    assert f"[127.0.0.1]:{sshd.port} {key.openssh()}" in msg and "ssh-keyscan" in msg
    assert not info.value.retryable
    assert sshd.accepts() == 1  # refused once, not retried


def test_changed_host_key_is_refused_with_both_fingerprints(sshd, creds, fast):
    old = hostkeys.PublicKey.parse(sshd.host_key)
    c = conn(sshd, creds, fast)  # pins the old key
    assert c.exec("true").ok
    new = hostkeys.PublicKey.parse(sshd.restart_with_new_host_key())
    before = sshd.accepts()
    with pytest.raises(errors.HostKeyMismatch) as info:
        c.exec("true")
    msg = str(info.value)
    assert "CHANGED" in msg and old.fingerprint in msg and new.fingerprint in msg
    assert "the Host document (ssh.host_key)" in msg and new.openssh() in msg
    assert sshd.accepts() == before + 1  # permanent: no retry


def test_known_hosts_file_pins_the_key(sshd, creds, fast, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"# lab\n[127.0.0.1]:{sshd.port} {sshd.host_key}\n")
    c = conn(sshd, creds, fast, pin=False, policy=hostkeys.load_policy(kh))
    assert c.exec("echo ok").lines() == ["ok"]
    c.close()

    other = keygen(tmp_path / "other")
    kh.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    c = conn(sshd, creds, fast, pin=False, policy=hostkeys.load_policy(kh))
    with pytest.raises(errors.HostKeyMismatch, match=f"CHANGED.*from {kh}"):
        c.exec("true")


def test_pinned_key_type_is_requested_from_a_server_with_several(sshd, creds, fast):
    rsa_path = sshd.dir / "ssh_host_rsa_key"
    rsa = keygen(rsa_path, "rsa")
    sshd.stop()
    sshd.extra_config = f"HostKey {rsa_path}\n"
    sshd.start()
    target = SSHTarget("127.0.0.1", sshd.port, "root", rsa)
    c = ssh.SSHConnection("sea-1", target, creds, hostkeys.HostKeyPolicy(), fast)
    assert c.exec("true").ok
    assert c.host_key is not None and c.host_key.key_type == "ssh-rsa"
    c.close()


# -- failures ---------------------------------------------------------------


def test_auth_failure_is_permanent_and_not_retried(sshd, fast, tmp_path):
    keygen(tmp_path / "stranger")
    stranger = ssh.load_credentials(tmp_path / "stranger")
    c = conn(sshd, stranger, fast)
    with pytest.raises(errors.HostError, match=r"login as root@127\.0\.0\.1.*refused") as info:
        c.exec("true")
    assert type(info.value) is errors.HostError and not info.value.retryable
    assert "PRIVATE KEY" not in str(info.value)
    assert sshd.accepts() == 1


def test_unreachable_port_is_retryable_host_unreachable_after_bounded_retries(creds, fast, caplog):
    target = SSHTarget("127.0.0.1", free_port(), "root", None)
    c = ssh.SSHConnection("ams-9", target, creds, hostkeys.HostKeyPolicy(), fast)
    caplog.set_level(logging.INFO, logger="reconciler.hosts.ssh")
    with pytest.raises(errors.HostUnreachable, match="host ams-9: cannot connect") as info:
        c.exec("true")
    assert info.value.retryable and isinstance(info.value.__cause__, OSError)
    assert c.connects == 0
    assert sum("retry" in r.getMessage() for r in caplog.records) == fast.retries - 1


def test_reconnects_after_the_server_restarts(sshd, creds, fast):
    c = conn(sshd, creds, fast)
    assert c.exec("true").ok
    sshd.stop()
    sshd.start()
    assert c.exec("echo back").lines() == ["back"]
    assert c.connects == 2


# -- reuse and concurrency --------------------------------------------------


def test_one_tcp_connection_serves_many_commands_from_many_threads(sshd, pool):
    c = pool.get("sea-1", sshd.target())
    assert pool.get("sea-1", sshd.target()) is c
    c.connect()
    port = c.local_port()
    outs: list[str] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        out = c.exec(f"echo {i}").lines()
        with lock:
            outs.extend(out)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(20):
        assert c.exec(f"echo {i}").ok
    assert sorted(outs, key=int) == [str(i) for i in range(16)]
    assert sshd.accepts() == 1 and c.connects == 1 and c.local_port() == port


def test_fan_out_respects_its_bound_and_collects_per_host_errors(sshd, pool):
    hosts = {f"h{i}": sshd.target() for i in range(6)}
    hosts["dead"] = SSHTarget("127.0.0.1", free_port(), "root", None)
    hosts["stranger"] = sshd.target(pin=False)
    lock = threading.Lock()
    running = peak = 0

    def observe(name: str, target: SSHTarget) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return pool.get(name, target).exec("sleep 0.2; echo ok").lines()[0]
        finally:
            with lock:
                running -= 1

    result = fanout.fan_out(hosts, observe, max_concurrency=3)
    assert peak == 3
    assert result.succeeded == {f"h{i}": "ok" for i in range(6)}
    assert set(result.failed) == {"dead", "stranger"}
    assert isinstance(result.failed["dead"], errors.HostUnreachable)
    assert isinstance(result.failed["stranger"], errors.HostKeyMismatch)
    assert result.retryable() == ["dead"] and not result.ok
    assert sshd.accepts() == 6 + 1  # one connection per host name, one refused


# -- files ------------------------------------------------------------------


def test_sftp_upload_is_atomic_with_mode(sshd, creds, fast, tmp_path):
    c = conn(sshd, creds, fast)
    dest = sshd.dir / "agent.pyz"
    dest.write_bytes(b"old")
    old_inode = dest.stat().st_ino
    payload = os.urandom(1 << 20)
    c.upload(payload, str(dest), mode=0o750)
    assert dest.read_bytes() == payload
    assert dest.stat().st_mode & 0o777 == 0o750
    assert dest.stat().st_ino != old_inode  # renamed over, never rewritten in place
    local = tmp_path / "unit"
    local.write_text("[Unit]\n")
    c.upload(local, str(sshd.dir / "fleet-agent.service"))
    assert (sshd.dir / "fleet-agent.service").read_text() == "[Unit]\n"
    assert not [p for p in os.listdir(sshd.dir) if "fleet-tmp" in p]
    with pytest.raises(errors.HostError, match=r"upload to .* failed") as info:
        c.upload(b"x", str(sshd.dir / "missing" / "f"))
    assert not info.value.retryable
    c.close()


# -- credentials ------------------------------------------------------------


def test_credentials_come_from_env_and_never_print(sshd):
    creds = ssh.load_credentials(env={"FLEET_SSH_KEY": str(sshd.client_key)})
    text = repr(creds) + str(creds)
    assert "***" in text and sshd.client_key.read_text().splitlines()[1] not in text
    assert "FLEET_SSH_KEY" in creds.source


def test_key_inside_the_fleet_repo_is_refused(tmp_path: Path):
    keygen(tmp_path / "id")
    with pytest.raises(errors.FleetError, match="inside the fleet repository"):
        ssh.load_credentials(tmp_path / "id", fleet_dir=tmp_path)
