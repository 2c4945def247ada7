"""The local lab: a small fleet of namespace "hosts" on one Linux machine.

``up`` builds what :mod:`reconciler.lab.topology` describes: a network
namespace per host running its own sshd (own host key, pinned in the lab's
known_hosts), a router namespace per region, a client namespace, and a
management network whose only door to the machine is one veth with
``192.0.2.1``. Each host's sshd runs in a private mount namespace in which
the host gets its own ``/var/lib/fleet-agent`` and ``/run/wireguard`` and an
empty ``/root/.bashrc`` (root's real one may start slow shell tooling on every
SSH command); everything started through that sshd (agents, microVMs) sees the
same view, as on a real machine.

``down`` removes everything ``up`` made, also after a crash (names carry the
``flab-`` prefix), and is idempotent.

The lab adds nothing to the machine's own network namespace: the reconciler
reaches the hosts from inside the management namespace
(:mod:`reconciler.netns`), so the machine's real interfaces and routes are
never touched, even when they use the same documentation ranges. Only processes inside the lab's own
namespaces are ended, by PID.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleet.errors import LabError
from reconciler import netns
from reconciler.hosts import control
from reconciler.lab import images, routers, tlsca, topology
from reconciler.lab import paths as lab_paths
from reconciler.lab.topology import (
    CLIENT_NS,
    MGMT_GATEWAY,
    MGMT_NS,
    PREFIX,
    REGISTRY_ADDR,
    REGISTRY_NS,
    ROOT_LINK,
    Topology,
)

log = logging.getLogger(__name__)

# Where a lab keeps its state lives in reconciler.lab.paths; these stay for callers.
DEFAULT_DIR = lab_paths.DEFAULT_DIR
Paths = lab_paths.Paths
mgmt_netns = lab_paths.mgmt_netns
SSHD = "/usr/sbin/sshd"
HOST_BINDS = ("/var/lib/fleet-agent", "/run/wireguard")


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, veth links, sshd): run it as root")


def run(argv: Sequence[str], *, check: bool = True, input: bytes | None = None) -> str:
    """Run a system tool; a failure becomes one clear LabError line."""
    log.debug("run %s", " ".join(argv))
    result = subprocess.run(list(argv), capture_output=True, input=input, check=False)
    if check and result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        raise LabError(f"{' '.join(argv)}: {err[-1] if err else f'exit {result.returncode}'}")
    return result.stdout.decode(errors="replace")


def ns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def _sysctls(netns: str) -> None:
    for key, value in (
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.all.keep_addr_on_down", "1"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.accept_dad", "0"),
    ):
        run(ns(netns, "sysctl", "-qw", f"{key}={value}"))


def _veth(a_ns: str | None, a_name: str, b_ns: str, b_name: str) -> None:
    """A veth pair; side A in ``a_ns`` (None: the machine's own namespace)."""
    tmp_a, tmp_b = f"{PREFIX}t{os.getpid() % 10000}a", f"{PREFIX}t{os.getpid() % 10000}b"
    run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
    run(["ip", "link", "set", tmp_b, "netns", b_ns])
    run(ns(b_ns, "ip", "link", "set", tmp_b, "name", b_name))
    run(ns(b_ns, "ip", "link", "set", b_name, "up"))
    if a_ns is None:
        run(["ip", "link", "set", tmp_a, "name", a_name])
        run(["ip", "link", "set", a_name, "up"])
    else:
        run(["ip", "link", "set", tmp_a, "netns", a_ns])
        run(ns(a_ns, "ip", "link", "set", tmp_a, "name", a_name))
        run(ns(a_ns, "ip", "link", "set", a_name, "up"))


def _addr(netns: str, dev: str, address: str) -> None:
    extra = ["nodad"] if ":" in address else []
    run(ns(netns, "ip", "addr", "add", address, "dev", dev, *extra))


def _bridge(netns: str, name: str) -> None:
    run(ns(netns, "ip", "link", "add", name, "type", "bridge"))
    run(ns(netns, "ip", "link", "set", name, "up"))


def _enslave(netns: str, dev: str, bridge: str) -> None:
    run(ns(netns, "ip", "link", "set", dev, "master", bridge))


def _network(topo: Topology) -> None:
    for name in topo.namespaces():
        run(["ip", "netns", "add", name])
        run(ns(name, "ip", "link", "set", "lo", "up"))
        _sysctls(name)
    # The operator's side of the management network lives in its own namespace,
    # not in the machine's: the machine's real network may use these very ranges.
    _bridge(MGMT_NS, "br0")
    _addr(MGMT_NS, "br0", str(MGMT_GATEWAY))
    _veth(REGISTRY_NS, "mgmt0", MGMT_NS, "registry")
    _enslave(MGMT_NS, "registry", "br0")
    _addr(REGISTRY_NS, "mgmt0", str(REGISTRY_ADDR))
    for region in topo.regions:
        _bridge(region.netns, "fabric")
        _addr(region.netns, "fabric", str(region.fabric4))
        _addr(region.netns, "fabric", str(region.fabric6))
        link = f"up-{region.name}"[:15]
        _veth(CLIENT_NS, link, region.netns, "client0")
        _addr(region.netns, "client0", str(region.client4))
        _addr(region.netns, "client0", str(region.client6))
        _addr(CLIENT_NS, link, str(region.peer_client4))
        _addr(CLIENT_NS, link, str(region.peer_client6))
    for host in topo.hosts:
        region = topo.region(host.region)
        _veth(host.netns, "mgmt0", MGMT_NS, f"h{host.index}")
        _enslave(MGMT_NS, f"h{host.index}", "br0")
        _addr(host.netns, "mgmt0", str(host.mgmt))
        _veth(host.netns, "fabric0", region.netns, f"h{host.index}")
        _enslave(region.netns, f"h{host.index}", "fabric")
        _addr(host.netns, "fabric0", str(host.fabric4))
        _addr(host.netns, "fabric0", str(host.fabric6))


def _keys(paths: Paths, topo: Topology) -> None:
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(paths.root, 0o700)
    if not paths.client_key.exists():
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "fleet-lab",
                "-f",
                str(paths.client_key),
            ]
        )
    shutil.copyfile(paths.client_key.with_suffix(".pub"), paths.authorized_keys)
    os.chmod(paths.authorized_keys, 0o600)
    lines = []
    for host in topo.hosts:
        d = paths.host_dir(host.name)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = d / "ssh_host_ed25519_key"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(key)])
        public = " ".join(key.with_suffix(".pub").read_text().split()[:2])
        where = str(host.mgmt.ip) if host.ssh_port == 22 else f"[{host.mgmt.ip}]:{host.ssh_port}"
        lines.append(f"{where} {public}\n")
        for bind in HOST_BINDS:
            (d / bind.strip("/").replace("/", "_")).mkdir(parents=True, exist_ok=True)
        (d / "sshd_config").write_text(_sshd_config(paths, host, d))
    paths.known_hosts.write_text("".join(lines))


def _sshd_config(paths: Paths, host: topology.LabHost, d: Path) -> str:
    return (
        f"Port {host.ssh_port}\n"
        f"ListenAddress {host.mgmt.ip}\n"
        f"HostKey {d / 'ssh_host_ed25519_key'}\n"
        f"PidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {paths.authorized_keys}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "MaxSessions 64\n"
        "MaxStartups 64:30:128\n"
        "Subsystem sftp internal-sftp\n"
        "LogLevel ERROR\n"
    )


CREATED_DIRS = "created-dirs"  # machine directories the lab made (mount points), one a line


def _mountpoint(paths: Paths, target: Path) -> None:
    """Make a directory the lab needs on the machine, remembering that we made it."""
    if target.exists():
        return
    target.mkdir(parents=True)
    with (paths.root / CREATED_DIRS).open("a") as f:
        f.write(f"{target}\n")


def _remove_created_dirs(paths: Paths) -> list[str]:
    """Remove the (empty) directories this lab made, unless another lab still runs."""
    record = paths.root / CREATED_DIRS
    if not record.exists():
        return []
    others = [n for n in _all_namespaces() if n.endswith("-mgmt")]
    if others:
        return []
    removed = []
    for line in reversed(record.read_text().splitlines()):
        with contextlib.suppress(OSError):
            Path(line).rmdir()
            removed.append(line)
    return removed


def _start_sshd(paths: Paths, host: topology.LabHost) -> int:
    d = paths.host_dir(host.name)
    binds = []
    for target in HOST_BINDS:
        _mountpoint(paths, Path(target))
        binds.append(f"mount --bind {d / target.strip('/').replace('/', '_')} {target}")
    empty = paths.root / "empty"
    empty.touch()
    if Path("/root/.bashrc").exists():
        binds.append(f"mount --bind {empty} /root/.bashrc")
    _mountpoint(paths, Path("/run/sshd"))
    script = " && ".join(
        [*binds, f"hostname {host.name}", f"exec {SSHD} -D -e -f {d / 'sshd_config'}"]
    )
    log_file = (d / "sshd.log").open("ab")
    proc = subprocess.Popen(
        ns(
            host.netns,
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            script,
        ),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        start_new_session=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )
    log_file.close()
    return proc.pid


def _start_registry(paths: Paths) -> int:
    """A Distribution (docker-registry) server on the management network, plain HTTP."""
    storage = paths.root / "registry"
    storage.mkdir(parents=True, exist_ok=True)
    conf = paths.root / "registry.yml"
    conf.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {REGISTRY_ADDR.ip}:5000\n"
    )
    log_file = (paths.root / "registry.log").open("ab")
    proc = subprocess.Popen(
        ns(REGISTRY_NS, "docker-registry", "serve", str(conf)),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        start_new_session=True,
    )
    log_file.close()
    return proc.pid


def _wait_port(address: str, port: int, timeout: float) -> bool:
    """Whether ``address:port`` accepts TCP, asked from the management namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with netns.connect(MGMT_NS, address, port, 0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def up(topo: Topology, paths: Paths) -> dict[str, Any]:
    """Build the lab; on any failure remove what was made and raise."""
    require_root()
    if _existing_namespaces():
        raise LabError("a lab is already up (or left over): run `reconcile lab down` first")
    try:
        _network(topo)
        _keys(paths, topo)
        pids = {h.name: _start_sshd(paths, h) for h in topo.hosts}
        registry_pid = _start_registry(paths)
        for host in topo.hosts:
            if not _wait_port(str(host.mgmt.ip), host.ssh_port, 10.0):
                log_text = (paths.host_dir(host.name) / "sshd.log").read_text(errors="replace")
                tail = log_text.strip().splitlines()[-1:] or ["no output"]
                raise LabError(f"host {host.name}: sshd did not start: {tail[0]}")
        if not _wait_port(str(REGISTRY_ADDR.ip), 5000, 10.0):
            raise LabError("the lab's image registry did not start (see registry.log)")
        pushed = images.push_all()
        ca_cert = tlsca.install(
            paths.root, [paths.host_dir(h.name) / "var_lib_fleet-agent" for h in topo.hosts]
        )
        router_pids = routers.start(topo, paths.root, lambda p: _mountpoint(paths, p))
        state = {
            "hosts": {
                h.name: {
                    "netns": h.netns,
                    "sshd_pid": pids[h.name],
                    "address": str(h.mgmt.ip),
                    "port": h.ssh_port,
                }
                for h in topo.hosts
            },
            "regions": {r.name: {"netns": r.netns} for r in topo.regions},
            "client": CLIENT_NS,
            "routers": router_pids,
            "prefix": PREFIX,
            "mgmt_netns": MGMT_NS,
            "registry": {
                "address": f"{REGISTRY_ADDR.ip}:5000",
                "pid": registry_pid,
                "images": pushed,
            },
            "ca": str(ca_cert),
            "known_hosts": str(paths.known_hosts),
            "ssh_key": str(paths.client_key),
        }
        paths.state.write_text(json.dumps(state, indent=2))
        return state
    except BaseException:
        down(paths)
        raise


def _all_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _existing_namespaces() -> list[str]:
    return [n for n in _all_namespaces() if n.startswith(f"{PREFIX}-")]


def _pids_in(netns: str) -> list[int]:
    out = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def _end(pids: Sequence[int], grace: float = 3.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and _state(pid) != "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, IndexError):
        return "Z"


def down(paths: Paths) -> list[str]:
    """Remove every lab namespace, link, process and file. Idempotent; returns what it removed."""
    require_root()
    removed = []
    names = _existing_namespaces()
    # The SSH connection holder of this lab's commands (it lives in the machine's
    # namespace with sockets into the lab's) ends with the lab.
    held = control.end_holder(
        control.Settings(str(paths.client_key), str(paths.known_hosts), mgmt_netns(paths), 0.0)
    )
    if held is not None:
        removed.append(str(held))
    # Processes inside the lab's namespaces were started by the lab (sshd and what
    # came through it): end them by PID before their namespaces go away.
    # Again until none is left: an agent's supervisor ending at the same moment
    # may restart a daemon (BIRD, HAProxy) it just saw die, in the same namespace.
    for _ in range(5):
        pids = sorted({p for n in names for p in _pids_in(n)})
        if not pids:
            break
        _end(pids)
    for name in names:
        run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    if Path(f"/sys/class/net/{ROOT_LINK}").exists():
        run(["ip", "link", "del", ROOT_LINK], check=False)
        removed.append(ROOT_LINK)
    removed += _remove_created_dirs(paths)
    if paths.root.exists():
        shutil.rmtree(paths.root, ignore_errors=True)
        removed.append(str(paths.root))
    return removed


def status(paths: Paths) -> dict[str, Any]:
    """What is up: namespaces, and for each host whether sshd answers."""
    names = _existing_namespaces()
    state: dict[str, Any] = json.loads(paths.state.read_text()) if paths.state.exists() else {}
    hosts = {}
    for name, info in state.get("hosts", {}).items():
        answering = _wait_port(info["address"], info["port"], 0.5)
        hosts[name] = {**info, "namespace": info["netns"] in names, "ssh": answering}
    return {"up": bool(names), "namespaces": names, "hosts": hosts, "state": str(paths.root)}


def exec_argv(paths: Paths, node: str, command: Sequence[str]) -> list[str]:
    """The command line that runs ``command`` inside a lab node."""
    if not paths.state.exists():
        raise LabError("the lab is not up: run `reconcile lab up` first")
    state = json.loads(paths.state.read_text())
    cmd = list(command) or ["/bin/sh"]
    router = state.get("routers", {}).get(node)
    if router is not None and _alive(router):
        # The router's own mount namespace: its /run/bird, so plain `birdc` works.
        return ["nsenter", "-t", str(router), "-m", "-n", "--", *cmd]
    if node in state["hosts"]:
        pid = state["hosts"][node]["sshd_pid"]
        if not _alive(pid):
            raise LabError(f"host {node}: its sshd (pid {pid}) is not running")
        return ["nsenter", "-t", str(pid), "-m", "-n", "-u", "--", *cmd]
    if node == "client":
        return ns(CLIENT_NS, *cmd)
    if node.startswith("upstream-") and node[len("upstream-") :] in state["regions"]:
        return ns(state["regions"][node[len("upstream-") :]]["netns"], *cmd)
    known = ", ".join([*state["hosts"], *(f"upstream-{r}" for r in state["regions"]), "client"])
    raise LabError(f"no lab node {node!r}; known: {known}")
