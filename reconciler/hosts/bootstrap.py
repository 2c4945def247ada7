"""`reconcile hosts bootstrap`: put the agent on a host and keep it running.

Over one SSH connection per host: upload the agent bundle's wheels by SFTP,
install them into a fresh venv named by the bundle's build id, point
``current`` at it, write the agent's ``agent.json`` (its name and facts from
the fleet), optionally install the system packages its providers use, and
(re)start ``fleet-agent serve``: as a systemd unit where systemd runs, as a
supervised background process otherwise.

Idempotent: a host that already runs this build with this configuration is
left alone and reported unchanged. A newer build is installed beside the old
one and the supervisor restarted; machines are separate processes and keep
running through the switch.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fleet import model
from reconciler.hosts import bundle as bundle_mod

log = logging.getLogger(__name__)

DATA = "/var/lib/fleet-agent"
AGENT = f"{DATA}/current/bin/fleet-agent"
SYSTEM_PACKAGES = (
    "python3",
    "python3-venv",
    "qemu-system-x86",
    "qemu-utils",
    "busybox-static",
    "e2fsprogs",
    "cpio",
    "kmod",
    "gcc",
    "libc6-dev",
    "wireguard-go",
    "wireguard-tools",
    "bird2",
    "haproxy",
    "iproute2",
)


class Remote(Protocol):
    """What bootstrap needs of a connection to one host."""

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float = 120.0) -> str:
        """Run ``command``; return stdout; raise HostError on a non-zero exit."""
        ...

    def upload(self, data: bytes, path: str, mode: int = 0o644) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    host: str
    changed: bool
    steps: tuple[str, ...]


def agent_config(
    host: model.Host,
    prefix: str | None,
    insecure_registries: Sequence[str] = (),
    simulate_gpus: bool = False,
    lab_timers: bool = False,
) -> dict[str, object]:
    config: dict[str, object] = {
        "simulate_gpus": simulate_gpus,
        "host": host.name,
        "hypervisor": host.hypervisor.value,
        "private_prefix": prefix,
        "gpus": {g.model: g.count for g in host.capacity.gpus},
        "insecure_registries": sorted(insecure_registries),
    }
    if lab_timers:
        config.update(LAB_TIMERS)
    return config


# Short timers for labs and tests (docs/network.md, docs/proxy.md): BGP sessions in
# seconds, a 2 s graceful-shutdown period, a 3 s hold-down; autostop after 15 s idle.
LAB_TIMERS = {
    "announce_grace_s": 2.0,
    "announce_hold_down_s": 3.0,
    "bgp_timers": "lab",
    "autostop_idle_s": 15.0,
}


def _state_script() -> str:
    return (
        f"cat {DATA}/current/BUILD_ID 2>/dev/null || echo none; "
        f"cat {DATA}/agent.json 2>/dev/null | tr -d '\\n' || true; echo; "
        f'if [ -f {DATA}/serve.pid ] && kill -0 "$(cat {DATA}/serve.pid)" 2>/dev/null; '
        "then echo serving; elif systemctl is-active --quiet fleet-agent 2>/dev/null; "
        "then echo serving; else echo stopped; fi"
    )


def bootstrap(
    remote: Remote,
    host: model.Host,
    bundle: bundle_mod.Bundle,
    prefix: str | None,
    *,
    install_packages: bool = False,
    insecure_registries: Sequence[str] = (),
    kernel: bundle_mod.KernelPackage | None = None,
    simulate_gpus: bool = False,
    lab_timers: bool = False,
) -> Outcome:
    steps: list[str] = []
    config = json.dumps(
        agent_config(host, prefix, insecure_registries, simulate_gpus, lab_timers),
        indent=2,
        sort_keys=True,
    )
    lines = [*remote.run(_state_script()).splitlines(), "", "", ""]
    installed, current_config, serving = lines[0].strip(), lines[1].strip(), lines[2].strip()
    same_config = _same_json(current_config, config)
    if install_packages:
        missing = remote.run(
            "for p in " + " ".join(SYSTEM_PACKAGES) + "; do "
            "dpkg-query -W -f='${Status}' $p 2>/dev/null | grep -q 'install ok installed' "
            "|| echo $p; done"
        ).split()
        if missing:
            remote.run(
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
                + " ".join(shlex.quote(p) for p in missing),
                timeout=900,
            )
            steps.append(f"installed {' '.join(missing)}")
    if kernel is not None and _ship_kernel(remote, kernel):
        steps.append(f"shipped guest kernel {kernel.abi}")
    if installed == bundle.build_id and same_config and serving == "serving":
        return Outcome(host.name, bool(steps), (*steps, f"agent {bundle.build_id} already running"))

    if installed != bundle.build_id:
        _install(remote, bundle)
        was = f" (was {installed})" if installed != "none" else ""
        steps.append(f"installed agent {bundle.build_id}{was}")
    if not same_config:
        remote.upload(config.encode() + b"\n", f"{DATA}/agent.json", 0o644)
        steps.append("wrote agent.json")
    _restart_serve(remote)
    steps.append("started fleet-agent serve")
    return Outcome(host.name, True, tuple(steps))


def _ship_kernel(remote: Remote, kernel: bundle_mod.KernelPackage) -> bool:
    """Put the guest kernel's .deb and its ABI pin on the host; False if already there."""
    debs = f"{DATA}/kernels/debs"
    name = kernel.deb.name
    present = remote.run(f"mkdir -p {debs} && ls {debs}").split()
    pin = f"{DATA}/kernels/{bundle_mod.KERNEL_PACKAGE}.abi"
    pinned = remote.run(f"cat {pin} 2>/dev/null || true").strip()
    if name in present and pinned == kernel.abi:
        return False
    if name not in present:
        remote.upload(kernel.deb.read_bytes(), f"{debs}/{name}")
    remote.upload(f"{kernel.abi}\n".encode(), pin)
    return True


def _same_json(a: str, b: str) -> bool:
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


def _install(remote: Remote, bundle: bundle_mod.Bundle) -> None:
    bid = bundle.build_id
    wheels = f"{DATA}/wheels/{bid}"
    venv = f"{DATA}/venvs/{bid}"
    remote.run(f"mkdir -p {wheels} {DATA}/venvs")
    present = set(remote.run(f"ls {wheels}").split())
    for wheel in bundle.wheels:
        if wheel.name not in present:
            remote.upload(wheel.read_bytes(), f"{wheels}/{wheel.name}")
    # `current` moves (atomically, by rename) only once the new venv is complete;
    # a half-made venv of an interrupted bootstrap has no BUILD_ID and is redone.
    script = " && ".join(
        [
            f"rm -rf {venv}",
            f"python3 -m venv {venv}",
            f"{venv}/bin/pip install -q --no-index --disable-pip-version-check "
            f"--find-links {wheels} fleet-reconciler",
            f"echo {bid} > {venv}/BUILD_ID",
            f"ln -sfn venvs/{bid} {DATA}/current.new",
            f"mv -T {DATA}/current.new {DATA}/current",
        ]
    )
    remote.run(script, timeout=600)


def _restart_serve(remote: Remote) -> None:
    unit = (
        "[Unit]\nDescription=fleet-agent supervisor\nAfter=network-online.target\n\n"
        f"[Service]\nExecStart={AGENT} serve\nRestart=always\nRestartSec=2\n"
        "KillMode=process\n\n[Install]\nWantedBy=multi-user.target\n"
    )
    systemd = remote.run("[ -d /run/systemd/system ] && echo yes || echo no").strip() == "yes"
    if systemd:
        remote.upload(unit.encode(), "/etc/systemd/system/fleet-agent.service")
        remote.run("systemctl daemon-reload && systemctl enable -q fleet-agent "
                   "&& systemctl restart fleet-agent")  # fmt: skip
        return
    # No systemd (the lab, containers): a background process in its own session.
    # KillMode=process above and this stop-only-the-supervisor below both leave
    # the machines (separate VMM processes) running.
    remote.run(
        f"if [ -f {DATA}/serve.pid ]; then pid=$(cat {DATA}/serve.pid); "
        f"if grep -q fleet-agent /proc/$pid/cmdline 2>/dev/null; then kill $pid; "
        "for i in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; fi; fi; "
        f"setsid nohup {AGENT} serve --log-format json >> {DATA}/serve.log 2>&1 < /dev/null & "
        f"echo $! > {DATA}/serve.pid"
    )


def describe(outcomes: Sequence[Outcome]) -> list[str]:
    out = []
    for o in outcomes:
        verdict = "changed" if o.changed else "no changes"
        out.append(f"{o.host}: {verdict}: " + "; ".join(o.steps))
    return out
