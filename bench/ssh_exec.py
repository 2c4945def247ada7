"""Benchmark: N short commands over SSH to a local sshd, four ways, side by side.

1. our transport: one reused connection, TCP_NODELAY (with and without the
   remote ``timeout`` wrapper that kills timed-out commands on the host);
2. one reused paramiko ``SSHClient`` connection (Nagle left on, as paramiko does);
3. a new paramiko ``SSHClient`` connection per command;
4. the OpenSSH ``ssh`` binary per command.

The sshd is the test fixture's (tests/hosts/sshd.py: loopback, own keys,
``SetEnv SHLVL=1`` so root's .bashrc is not sourced). Needs root. Prints the
time per command and the ratios against the reused connection.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections.abc import Callable

import paramiko

from reconciler.hosts import hostkeys, ssh
from tests.hosts.sshd import SSHDaemon


def per_command(fn: Callable[[], object], n: int) -> float:
    fn()  # warm-up (first connection, imports)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=200, help="commands per variant")
    p.add_argument("--command", default="true")
    args = p.parse_args()
    n, cmd = args.n, args.command

    d = SSHDaemon()
    d.start()
    try:
        creds = ssh.load_credentials(d.client_key)
        policy = hostkeys.HostKeyPolicy()
        plain = ssh.SSHOptions(remote_kill=False)
        ours = ssh.SSHConnection("bench", d.target(), creds, policy, plain)
        ours_kill = ssh.SSHConnection("bench", d.target(), creds, policy)
        host_pub = hostkeys.PublicKey.parse(d.host_key)
        pkey = paramiko.PKey.from_path(d.client_key)

        def client() -> paramiko.SSHClient:
            c = paramiko.SSHClient()
            c.get_host_keys().add(
                f"[127.0.0.1]:{d.port}",
                host_pub.key_type,
                paramiko.PKey.from_type_string(host_pub.key_type, host_pub.blob),
            )
            c.connect(
                "127.0.0.1",
                d.port,
                "root",
                pkey=pkey,
                allow_agent=False,
                look_for_keys=False,
            )
            return c

        def run_client(c: paramiko.SSHClient) -> None:
            _, out, _ = c.exec_command(cmd)
            out.read()
            out.channel.recv_exit_status()

        reused_client = client()

        def fresh_client() -> None:
            c = client()
            run_client(c)
            c.close()

        ssh_argv = [
            "ssh", "-F", "/dev/null", "-i", str(d.client_key), "-p", str(d.port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={d.dir}/bench_known_hosts",
            "root@127.0.0.1", cmd,
        ]  # fmt: skip
        (d.dir / "bench_known_hosts").write_text(f"[127.0.0.1]:{d.port} {d.host_key}\n")

        variants: list[tuple[str, Callable[[], object], int]] = [
            ("ours: reused, TCP_NODELAY", lambda: ours.exec(cmd), n),
            ("ours: reused, + remote kill", lambda: ours_kill.exec(cmd), n),
            ("paramiko: reused, Nagle on", lambda: run_client(reused_client), max(20, n // 4)),
            ("paramiko: new conn per cmd", fresh_client, max(10, n // 10)),
            ("ssh binary per cmd", lambda: subprocess.run(ssh_argv, check=True),
             max(10, n // 10)),
        ]  # fmt: skip
        results = [(name, per_command(fn, k), k) for name, fn, k in variants]
        reused_client.close()
        ours.close()
        ours_kill.close()
    finally:
        d.cleanup()

    base = results[0][1]
    print(f"command: {cmd!r} against sshd on 127.0.0.1 (TCP accepts: one per connection)")
    for name, secs, k in results:
        print(f"{name:32s} {secs * 1000:8.2f} ms/command  ({k} runs)  x{secs / base:6.1f}")


if __name__ == "__main__":
    main()
