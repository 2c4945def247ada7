"""``fleet-agent``: the program on every host. A thin argparse shell over providers.

``version``, ``machine run|ls|stop|rm|logs``, the protocol verbs ``observe``
and ``apply`` (JSON on stdin, JSON lines out: :mod:`hostagent.wire`) and
``serve`` (the supervisor: :mod:`hostagent.supervisor`). A :class:`FleetError` prints as one
line on stderr and exits 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet.errors import FleetError
from hostagent import attach, service
from providers.vmm import machines
from providers.vmm.spec import (
    MachineSpec,
    MachineState,
    NetMode,
    NetworkSpec,
    PortMapping,
    VMMKind,
)

VERSION = "0.1.0"
DEFAULT_DATA = "/var/lib/fleet-agent"
log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleet-agent", description="fleet host agent")
    p.add_argument("--data-dir", default=os.environ.get("FLEET_AGENT_DATA", DEFAULT_DATA),
                   help="agent data directory (caches, kernels, machines)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the agent version")
    sub.add_parser("observe", help="(protocol) answer an observe request read on stdin")
    sub.add_parser("apply", help="(protocol) carry out an apply request read on stdin")
    serve = sub.add_parser("serve", help="supervise this host's machines (long-running)")
    serve.add_argument("--log-format", choices=["text", "json"], default="text")
    serve.add_argument("--interval", type=float, default=1.0, help="seconds between passes")
    serve.add_argument("--observe-port", type=int, default=None, metavar="PORT",
                       help="answer observe on 127.0.0.1:PORT (default: agent.json's "
                       "observe_port, else 7930; 0: off)")  # fmt: skip
    machine = sub.add_parser("machine", help="run microVMs on this host by hand")
    msub = machine.add_subparsers(dest="machine_command", required=True)

    run = msub.add_parser("run", help="boot a microVM from an image (like docker run)")
    run.add_argument("image", help="oci:PATH[:TAG], oci-archive:PATH, docker-archive:PATH, "
                     "docker://HOST/REPO[:TAG|@DIGEST]")  # fmt: skip
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS... (replaces the Cmd)")
    run.add_argument("--name", help="machine name (default: generated)")
    run.add_argument("-p", "--publish", action="append", default=[], metavar="HOST:GUEST",
                     help="publish a guest TCP port on 127.0.0.1")  # fmt: skip
    run.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--entrypoint", help="replace the image's Entrypoint (drops its Cmd)")
    run.add_argument("-u", "--user", help="USER as docker takes it: uid, uid:gid, name")
    run.add_argument("-w", "--workdir", help="working directory")
    run.add_argument("--cpus", type=int, default=1)
    run.add_argument("--memory", type=int, default=256, help="MiB")
    run.add_argument("--kill-signal", default="SIGTERM")
    run.add_argument("--kill-timeout", type=float, default=5.0, help="seconds")
    run.add_argument(
        "--vmm",
        choices=[k.value for k in VMMKind],
        default=VMMKind.QEMU.value,
        help="hypervisor (firecracker and cloud-hypervisor need KVM and tap networking)",
    )
    run.add_argument("-d", "--detach", action="store_true", help="do not attach the console")
    run.add_argument("--rm", action="store_true", help="remove the machine when it ends")

    msub.add_parser("ls", help="list machines")
    stop = msub.add_parser("stop", help="stop a machine with its kill signal")
    stop.add_argument("name")
    stop.add_argument("--signal", help="signal instead of the machine's kill signal")
    stop.add_argument("--timeout", type=float, help="seconds before SIGKILL")
    rm = msub.add_parser("rm", help="remove a machine and its writable layer")
    rm.add_argument("name")
    rm.add_argument("-f", "--force", action="store_true", help="kill it if it runs")
    logs = msub.add_parser("logs", help="print a machine's console log")
    logs.add_argument("name")
    return p


def _spec(args: argparse.Namespace) -> MachineSpec:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    env = []
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FleetError(f"--env wants KEY=VALUE, not {item!r}")
        env.append((key, value))
    try:
        publish = tuple(PortMapping.parse(p) for p in args.publish)
    except ValueError as exc:
        raise FleetError(str(exc)) from None
    return MachineSpec(
        name=args.name or f"m-{secrets.token_hex(3)}",
        image=args.image,
        entrypoint=(args.entrypoint,) if args.entrypoint else None,
        cmd=tuple(cmd) if cmd else None,
        env=tuple(env),
        user=args.user,
        workdir=args.workdir,
        cpus=args.cpus,
        memory_mb=args.memory,
        kill_signal=args.kill_signal,
        kill_timeout=args.kill_timeout,
        network=NetworkSpec(mode=NetMode.USER, publish=publish),
        vmm=VMMKind(args.vmm),
    )


def _run(mgr: machines.MachineManager, args: argparse.Namespace) -> int:
    spec = _spec(args)
    mgr.run(spec)
    if args.detach:
        print(spec.name)
        return 0
    name = spec.name
    interrupted = False

    def on_interrupt(_sig: int, _frame: object) -> None:
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        print(f"\nstopping {name} ...", file=sys.stderr)
        mgr.stop(name)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        for line in attach.follow(lambda: mgr.console_log(name), lambda: mgr.status(name)):
            print(line, flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    st = mgr.status(name)
    if st.state is MachineState.FAILED:
        print(f"{name}: failed: {st.detail}", file=sys.stderr)
    if args.rm:
        mgr.remove(name, force=True)
    if st.exit_code is not None:
        return st.exit_code
    return 128 + st.exit_signal if st.exit_signal else 1


def _ls(mgr: machines.MachineManager) -> int:
    rows = [("NAME", "STATE", "IMAGE", "DETAIL")]
    for st in mgr.list():
        rec = mgr.get(st.name)
        rows.append((st.name, st.state.value, rec.spec.image, st.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[3])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "version":
        print(f"fleet-agent {VERSION}")
        return 0
    data_dir = Path(args.data_dir)
    if args.command in ("observe", "apply"):
        return service.request(data_dir, args.command)
    try:
        if args.command == "serve":
            return service.serve(
                data_dir,
                log_format=args.log_format,
                interval=args.interval,
                observe_port=args.observe_port,
            )
        mgr = machines.MachineManager(Path(args.data_dir))
        cmd = args.machine_command
        if cmd == "run":
            return _run(mgr, args)
        if cmd == "ls":
            return _ls(mgr)
        if cmd == "stop":
            st = mgr.stop(args.name, args.signal, args.timeout)
            print(f"{st.name}: {st.state} ({st.detail})")
            return 0
        if cmd == "rm":
            mgr.remove(args.name, force=args.force)
            return 0
        if cmd == "logs":
            sys.stdout.write(mgr.console_log(args.name))
            return 0
    except FleetError as exc:
        for line in exc.lines():
            print(f"fleet-agent: {line}", file=sys.stderr)
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
