"""Benchmark: `reconcile observe` of N lab hosts against pyinfra and ansible-core.

Why this file exists: issue 5 asks for `reconcile observe` of N >= 8 lab hosts
side by side with pyinfra and ansible-core gathering comparable facts from the
same hosts over the same sshd, with the goal of being >= 3x faster than pyinfra
and >= 10x faster than Ansible. This runs all three and prints the times and
the ratios.

What it does, as root, with ``pip install -e '.[bench]'`` (pyinfra, ansible-core):

1. waits (up to ``--wait`` seconds) until no namespace of its lab prefix
   (``$FLEET_LAB_PREFIX``, default ``flab``) exists: labs with other prefixes
   may run side by side; it never touches a lab it did not create;
2. writes its own fleet (a Network, two Regions with IPv4 upstream peers in
   203.0.113.0/24, N Hosts at 192.0.2.11...) and brings a lab up for it in its
   own state directory (``$FLEET_LAB_DIR``), then bootstraps ``fleet-agent``;
3. times, each best of several runs, every tool started as a fresh process:

   - ``reconcile observe`` (the CLI: local start-up, fleet load, each host's
     agent asked on a new channel of the SSH connection that the connection
     holder keeps between runs, docs/ssh.md; its default, as ControlPersist is
     Ansible's) and, for reference, the same with ``FLEET_SSH_PERSIST=0`` (a new
     SSH connection per host and run);
   - ``pyinfra INVENTORY fact`` of hostname, kernel version, cpus, memory and a
     listing of the agent's data directory;
   - ``ansible all -m setup`` limited to the platform and hardware subsets
     (hostname, kernel, cpus, memory), pipelining on, with Ansible's default
     ``ControlMaster=auto``/``ControlPersist=60s`` (its documented fast set-up,
     as our holder is ours), and optionally the full ``setup`` (the LAB-NOTES
     baseline); pyinfra has no connection reuse across runs;

   plus two in-process variants of our observe (new connections; reused,
   already open connections) that show where the CLI's time goes;
4. always takes its lab down again (only if its own ``lab up`` succeeded).

pyinfra and ansible run inside the lab's management namespace (``ip netns exec
PREFIX-mgmt``), as the reconciler's sockets do, with the lab's client key and
known_hosts and strict host key checking. All traffic stays in the lab's
namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LAB_PREFIX = os.environ.get("FLEET_LAB_PREFIX", "flab")  # reconciler.lab.topology.PREFIX
MGMT_NS = f"{LAB_PREFIX}-mgmt"  # reconciler.lab.topology.MGMT_NS
FIRST_ADDRESS = 11  # hosts at 192.0.2.11, .12, ...; .1 and .2 are the lab's own
MAX_HOSTS = 100  # stays inside the management /25
REGIONS = (("ra", "203.0.113.1", 64500), ("rb", "203.0.113.65", 64501))
AGENT_DATA = "/var/lib/fleet-agent"
PYINFRA_FACTS = (
    "server.Hostname",
    "server.KernelVersion",
    "hardware.Cpus",
    "hardware.Memory",
    "files.FindFiles",
    f"path={AGENT_DATA}",
)
ANSIBLE_SUBSET = "!all,!min,platform,hardware"
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------- the fleet


@dataclass(frozen=True, slots=True)
class BenchHost:
    name: str
    region: str
    address: str


def bench_hosts(n: int) -> list[BenchHost]:
    """N hosts spread over the regions, addresses from 192.0.2.11 on."""
    if not 1 <= n <= MAX_HOSTS:
        raise ValueError(f"hosts must be 1..{MAX_HOSTS}, got {n}")
    return [
        BenchHost(f"h{i + 1:02d}", REGIONS[i % len(REGIONS)][0], f"192.0.2.{FIRST_ADDRESS + i}")
        for i in range(n)
    ]


def write_fleet(directory: Path, hosts: Sequence[BenchHost]) -> Path:
    """A valid fleet for the lab: a Network, the Regions, one Host per ``hosts``."""
    (directory / "regions").mkdir(parents=True, exist_ok=True)
    (directory / "network.yaml").write_text(
        "apiVersion: fleet/v1\nkind: Network\nmetadata:\n  name: bench\nspec:\n"
        "  private_prefix: fdf1:be:1::/48\n"
        "  anycast_pools: [198.51.100.0/24]\n"
        "  asn: 65000\n"
    )
    for region, peer, asn in REGIONS:
        docs = [
            f"apiVersion: fleet/v1\nkind: Region\nmetadata:\n  name: {region}\nspec:\n"
            f"  jurisdiction: eu\n  asn: {asn + 500}\n"
            f"  upstream_peers:\n    - name: {region}-upstream\n"
            f"      address: {peer}\n      asn: {asn}\n"
        ]
        for h in hosts:
            if h.region != region:
                continue
            docs.append(
                f"apiVersion: fleet/v1\nkind: Host\nmetadata:\n  name: {h.name}\n"
                f"spec:\n  region: {region}\n"
                f"  ssh:\n    address: {h.address}\n    user: root\n"
                f"  capacity:\n    cpus: 2\n    memory: 2gb\n"
                f"  wireguard:\n    endpoint: {h.address}:51820\n"
            )
        (directory / "regions" / f"{region}.yaml").write_text("---\n".join(docs))
    return directory


def pyinfra_inventory(hosts: Sequence[BenchHost], key: Path, known_hosts: Path) -> str:
    """A pyinfra inventory (Python) of the lab hosts: the lab's key, strict pinning."""
    data = {
        "ssh_user": "root",
        "ssh_port": 22,
        "ssh_key": str(key),
        "ssh_known_hosts_file": str(known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
    }
    rows = "".join(
        f"    ({h.name!r}, {{**_DATA, 'ssh_hostname': {h.address!r}}}),\n" for h in hosts
    )
    return f"_DATA = {data!r}\n\nlab = [\n{rows}]\n"


def ansible_files(
    directory: Path, hosts: Sequence[BenchHost], key: Path, known_hosts: Path
) -> Path:
    """ansible.cfg and an INI inventory; returns the ansible.cfg path.

    Forks cover every host (as our observe and pyinfra run all hosts at once),
    pipelining is on and the interpreter is given (no discovery round trip),
    and SSH connections persist between runs as in Ansible's defaults
    (``ControlMaster=auto``, ``ControlPersist=60s``), as ours do in the holder.
    """
    directory.mkdir(parents=True, exist_ok=True)
    inventory = directory / "hosts.ini"
    lines = ["[lab]"]
    lines += [f"{h.name} ansible_host={h.address}" for h in hosts]
    lines += [
        "",
        "[lab:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={key}",
        "ansible_python_interpreter=/usr/bin/python3",
    ]
    inventory.write_text("\n".join(lines) + "\n")
    cfg = directory / "ansible.cfg"
    cfg.write_text(
        "[defaults]\n"
        f"inventory = {inventory}\n"
        f"forks = {len(hosts)}\n"
        "host_key_checking = True\n"
        f"local_tmp = {directory / 'tmp'}\n"
        "deprecation_warnings = False\n"
        "\n[ssh_connection]\n"
        "pipelining = True\n"
        f"control_path_dir = {directory / 'cp'}\n"
        "ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o BatchMode=yes "
        f"-o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts}\n"
    )
    return cfg


# ------------------------------------------------------------------- timing


@dataclass(slots=True)
class Timing:
    name: str
    runs: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def time_runs(name: str, fn: Callable[[], object], runs: int, warmup: int = 1) -> Timing:
    """Best-of timing; ``warmup`` unrecorded runs first (page cache, sshd forks)."""
    for _ in range(warmup):
        fn()
    t = Timing(name)
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        t.runs.append(time.perf_counter() - start)
    return t


def time_interleaved(variants: Sequence[tuple[str, Callable[[], object], int]]) -> list[Timing]:
    """Round-robin timing of (name, fn, runs): on a shared, noisy machine a burst of
    load then hits every variant alike instead of one of them."""
    timings = [Timing(name) for name, _, _ in variants]
    for r in range(max(runs for _, _, runs in variants)):
        for (_, fn, runs), t in zip(variants, timings, strict=True):
            if r < runs:
                start = time.perf_counter()
                fn()
                t.runs.append(time.perf_counter() - start)
    return timings


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def report(
    n: int,
    ours: Timing,
    others: Sequence[Timing],
    extra: Sequence[Timing],
    direct: Timing | None = None,
) -> list[str]:
    """The lines printed at the end: every timing, then our ratio against each baseline
    (and, for reference, that of ``direct``: ours without the connection holder)."""

    def row(t: Timing) -> str:
        return (
            f"  {t.name:<46} best {t.best:7.3f} s   median {t.median:7.3f} s   ({len(t.runs)} runs)"
        )

    lines = [f"observe of N={n} lab hosts (every tool a fresh process, all hosts in parallel)"]
    lines += [row(t) for t in (ours, *others)]
    if direct is not None:
        lines.append(row(direct))
    if extra:
        lines.append("for reference (in-process observe: no local start-up or fleet load):")
        lines += [row(t) for t in extra]
    lines.append("ratios (best against best; goal: >= 3x pyinfra, >= 10x ansible):")
    for t in others:
        lines.append(f"  {t.name:<46} / reconcile observe = {t.best / ours.best:5.1f}x")
    if direct is not None:
        lines.append("for reference, without the connection holder (FLEET_SSH_PERSIST=0):")
        for t in others:
            lines.append(f"  {t.name:<46} / {direct.name} = {t.best / direct.best:5.1f}x")
    return lines


# ---------------------------------------------------------------- processes


def lab_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{LAB_PREFIX}-")]


def wait_for_slot(limit: float, poll: float = 15.0) -> bool:
    """Wait until no lab is up; False if one still is after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        busy = lab_namespaces()
        if not busy:
            return True
        if time.monotonic() >= deadline:
            return False
        print(f"a lab is up ({len(busy)} {LAB_PREFIX}-* namespaces): waiting", file=sys.stderr)
        time.sleep(poll)


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise SystemExit(f"{name} is not installed in this venv: pip install -e '.[bench]'")
    return str(path)


def run(argv: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 600.0) -> str:
    """Run a command; its stdout, or SystemExit with its stderr tail on failure."""
    result = subprocess.run(
        list(argv), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr.strip() or result.stdout.strip()).splitlines()[-8:])
        raise SystemExit(f"{' '.join(argv)}: exit {result.returncode}\n{tail}")
    return result.stdout


def check_snapshot(path: Path, hosts: Sequence[BenchHost]) -> None:
    answers = {a["host"]: a for a in json.loads(path.read_text())["hosts"]}
    bad = [h.name for h in hosts if not (answers.get(h.name) or {}).get("reachable")]
    if bad:
        raise SystemExit(f"reconcile observe: hosts not observed: {', '.join(bad)}")


def check_pyinfra(out: str, hosts: Sequence[BenchHost]) -> None:
    start = out.find("{")
    facts = json.loads(out[start:]) if start >= 0 else {}
    names = facts.get("server.Hostname") or {}
    # The lab gives each host its own UTS namespace: its hostname proves which sshd answered.
    bad = [h.name for h in hosts if names.get(h.name) != h.name]
    if bad:
        raise SystemExit(f"pyinfra: no facts from {', '.join(bad)}:\n{out[-2000:]}")


def check_ansible(out: str, hosts: Sequence[BenchHost]) -> None:
    bad = [
        h.name
        for h in hosts
        if f"{h.name} | SUCCESS" not in out or f'"ansible_hostname": "{h.name}"' not in out
    ]
    if bad:
        raise SystemExit(f"ansible: no facts from {', '.join(bad)}:\n{out[-2000:]}")


# --------------------------------------------------------------------- main


def benchmark(args: argparse.Namespace, work: Path, lab_dir: Path) -> list[str]:
    hosts = bench_hosts(args.hosts)
    fleet_dir = write_fleet(work / "fleet", hosts)
    env = {**os.environ, "FLEET_LAB_DIR": str(lab_dir)}
    # Our own settings must not steer the run; and the project is installed
    # editable here, so let Python cache its bytecode as an installed wheel has it.
    for var in (
        "FLEET_SSH_KEY",
        "FLEET_KNOWN_HOSTS",
        "FLEET_SSH_NETNS",
        "FLEET_HOSTS",
        "PYTHONDONTWRITEBYTECODE",
        "FLEET_SSH_PERSIST",
    ):
        env.pop(var, None)
    # Our connection holder's socket in this run's directory (removing it at the end
    # stops the holder); its default lifetime, as Ansible's ControlPersist has its own.
    env["FLEET_SSH_CONTROL_DIR"] = str(work / "ssh-control")
    direct_env = {**env, "FLEET_SSH_PERSIST": "0"}
    reconcile = tool("reconcile")
    key, known_hosts = lab_dir / "id_ed25519", lab_dir / "known_hosts"
    print(f"bootstrapping fleet-agent on {len(hosts)} hosts", file=sys.stderr)
    run(
        [reconcile, "hosts", "bootstrap", "--fleet", str(fleet_dir),
         "--insecure-registry", "192.0.2.2", "--parallelism", str(min(8, len(hosts)))],
        env, work, timeout=1800,
    )  # fmt: skip

    snapshot = work / "observed.json"
    observe_argv = [reconcile, "observe", "--fleet", str(fleet_dir), "--save", str(snapshot)]
    inventory = work / "inventory.py"
    inventory.write_text(pyinfra_inventory(hosts, key, known_hosts))
    in_ns = ["ip", "netns", "exec", MGMT_NS]
    pyinfra_argv = [*in_ns, tool("pyinfra"), "--json", str(inventory), "fact", *PYINFRA_FACTS]
    cfg = ansible_files(work / "ansible", hosts, key, known_hosts)
    ansible_env = {**env, "ANSIBLE_CONFIG": str(cfg), "ANSIBLE_NOCOLOR": "1"}
    ansible_argv = [*in_ns, tool("ansible"), "all", "-m", "setup"]
    subset_argv = [*ansible_argv, "-a", f"gather_subset={ANSIBLE_SUBSET}"]

    # One checked run of each: every host answered, else the figures mean nothing.
    run(observe_argv, env, work)
    check_snapshot(snapshot, hosts)
    check_pyinfra(run(pyinfra_argv, env, work), hosts)
    check_ansible(run(subset_argv, ansible_env, work), hosts)

    run(observe_argv, direct_env, work)
    check_snapshot(snapshot, hosts)

    variants: list[tuple[str, Callable[[], object], int]] = [
        ("reconcile observe (CLI)", lambda: run(observe_argv, env, work), args.runs),
        (
            "reconcile observe, FLEET_SSH_PERSIST=0",
            lambda: run(observe_argv, direct_env, work),
            args.runs,
        ),
        ("pyinfra fact (5 facts)", lambda: run(pyinfra_argv, env, work), args.runs),
        (
            "ansible -m setup (platform,hardware)",
            lambda: run(subset_argv, ansible_env, work),
            args.ansible_runs,
        ),
    ]
    if args.ansible_full:
        variants.append(
            (
                "ansible -m setup (all facts)",
                lambda: run(ansible_argv, ansible_env, work),
                args.ansible_runs,
            )
        )
    load_before = loadavg()
    ours, direct, *others = time_interleaved(variants)
    extra = in_process(fleet_dir, key, known_hosts, args.runs)
    netns_exec = time_runs(
        "ip netns exec (pyinfra and ansible pay it)",
        lambda: run([*in_ns, "true"], env, work),
        args.runs,
    )
    lines = report(len(hosts), ours, others, [*extra, netns_exec], direct)
    lines.append(f"load average before / after timing: {load_before} / {loadavg()} (2 cores)")
    return lines


def in_process(fleet_dir: Path, key: Path, known_hosts: Path, runs: int) -> list[Timing]:
    """Our observe inside this process: new connections each run, and reused ones."""
    from fleet import load as fleet_load
    from reconciler import observe as observe_mod
    from reconciler.hosts import agentclient, hostkeys, ssh

    fleet = fleet_load.load(fleet_dir).fleet
    credentials = ssh.load_credentials(key)
    policy = hostkeys.load_policy(known_hosts)
    options = ssh.SSHOptions(netns=MGMT_NS)

    def once(pool: ssh.SSHPool) -> None:
        snap = observe_mod.observe_all(fleet, lambda h: agentclient.AgentClient(h, pool.get(h)))
        down = [name for name, o in snap.hosts.items() if not o.reachable]
        if down:
            raise SystemExit(f"in-process observe: hosts not observed: {', '.join(down)}")

    def fresh() -> None:
        with ssh.SSHPool(credentials, policy, options) as pool:
            once(pool)

    first = min(fleet.hosts.values(), key=lambda h: h.name)
    cold = time_runs("observe_all, new connections", fresh, runs)
    with ssh.SSHPool(credentials, policy, options) as pool:
        warm = time_runs("observe_all, reused connections", lambda: once(pool), runs)
        one = time_runs(
            f"one host ({first.name}): fleet-agent observe, reused",
            lambda: agentclient.AgentClient(first, pool.get(first)).observe(),
            runs,
        )
        conn = pool.get(first)
        shell = time_runs(
            f"one host ({first.name}): `true`, reused", lambda: conn.exec("true"), runs
        )
    return [cold, warm, one, shell]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hosts", type=int, default=12, help="lab hosts (default 12, at least 8)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of ours and pyinfra")
    p.add_argument("--ansible-runs", type=int, default=3, help="timed runs of each ansible")
    p.add_argument(
        "--ansible-full", action="store_true", help="also time the full `setup` (all facts)"
    )
    p.add_argument("--wait", type=float, default=1200.0, help="seconds to wait for a free lab slot")
    args = p.parse_args(argv)
    if args.hosts < 8:
        p.error("--hosts: the issue asks for at least 8")
    if os.geteuid() != 0:
        p.error("needs root (the lab: network namespaces, sshd)")
    if not wait_for_slot(args.wait):
        print(f"no free lab slot after {args.wait:.0f} s: another lab is up", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="fleet-bench-observe-"))
    # sshd's StrictModes refuses keys under /tmp: the lab's own directory lives in /var/lib.
    lab_dir = Path(tempfile.mkdtemp(prefix="fleet-lab-bench-", dir="/var/lib"))
    hosts = bench_hosts(args.hosts)
    write_fleet(work / "fleet", hosts)
    env = {**os.environ, "FLEET_LAB_DIR": str(lab_dir)}
    lab = [tool("reconcile"), "lab"]
    up = subprocess.run(
        [*lab, "up", "--fleet", str(work / "fleet"), "--lab-dir", str(lab_dir)],
        env=env, cwd=work, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if up.returncode != 0:
        # `lab up` removes what it made itself; one that was already up is not ours.
        print(f"lab up failed: {up.stderr.strip()}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(lab_dir, ignore_errors=True)
        return 1
    try:
        lines = benchmark(args, work, lab_dir)
    finally:
        down = subprocess.run(
            [*lab, "down", "--lab-dir", str(lab_dir)],
            env=env, cwd=work, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if down.returncode != 0:
            print(f"lab down failed: {down.stderr.strip()}", file=sys.stderr)
        with contextlib.suppress(OSError):
            shutil.rmtree(work)  # with it our holder's socket: the holder leaves within 1 s
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
