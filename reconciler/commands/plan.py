"""`reconcile plan`, `apply`, `force-unlock`: thin wrappers over the library.

``plan`` and ``apply`` share one path (load -> observe -> plan -> render); a
dry run is the plan itself. ``apply PLANFILE`` executes a saved plan exactly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import threading
from pathlib import Path
from typing import Any

from fleet import load as fleet_load
from fleet.errors import FleetError
from reconciler import apply as apply_mod
from reconciler import gcpause
from reconciler import observe as observe_mod
from reconciler.commands import common
from reconciler.commands import observe as observe_commands
from reconciler.core import plan as P
from reconciler.core import planfile, planner, render, snapfile
from reconciler.hosts import factory, protocol
from reconciler.state import base as state_base


def register(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="show what apply would change (exit 0 none, 2 changes, 1 error)"
    )
    common.add_fleet_options(p)
    _plan_options(p)
    p.add_argument("--out", metavar="FILE", help="save the plan (JSON) for `reconcile apply FILE`")
    p.add_argument("--format", choices=["text", "json", "markdown"], default="text")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when there are changes")
    p.set_defaults(func=plan_cmd)

    p = sub.add_parser("apply", help="apply a saved plan (or plan now and apply)")
    p.add_argument("planfile", nargs="?", metavar="PLANFILE")
    common.add_fleet_options(p)
    _plan_options(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--parallelism", type=int, default=apply_mod.DEFAULT_PARALLELISM, metavar="N")
    p.add_argument("--per-host", type=int, default=apply_mod.DEFAULT_PER_HOST, metavar="N")
    p.add_argument("--allow-dirty", action="store_true", help="apply a plan of a dirty work tree")
    p.set_defaults(func=apply_cmd)

    p = sub.add_parser("force-unlock", help="break the apply lock of a dead apply")
    p.add_argument("nonce", metavar="NONCE")
    common.add_fleet_options(p)
    common.add_state_options(p)
    p.set_defaults(func=force_unlock_cmd)


def _plan_options(p: argparse.ArgumentParser) -> None:
    common.add_state_options(p)
    observe_commands.add_hosts_option(p)
    p.add_argument("--observed", metavar="FILE", help="plan against a saved snapshot")
    p.add_argument("--target", action="append", default=[], metavar="ADDR")
    p.add_argument("--exclude", action="append", default=[], metavar="ADDR")
    p.add_argument("--allow-mass-destroy", action="store_true")
    p.add_argument("--allow-anycast-withdraw", action="store_true")
    p.add_argument("--max-destroy-share", type=float, default=0.5, metavar="FRACTION")
    p.add_argument(
        "-v", dest="sub_verbose", action="count", default=0, help="show no-ops and their reasons"
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def make_plan(args: argparse.Namespace) -> P.Plan:
    """Load, observe (or read the snapshot), plan: the path plan and apply share."""
    return _planned(args)[0]


def _planned(
    args: argparse.Namespace,
) -> tuple[P.Plan, fleet_load.Loaded, factory.Factory | None]:
    """The plan, the fleet it was made from and the host clients that observed it
    (None for a saved snapshot): ``apply`` goes on with the same ones instead of
    loading the fleet and setting up its connections a second time."""
    with gcpause.paused():
        return _make_plan(args)


def _make_plan(
    args: argparse.Namespace,
) -> tuple[P.Plan, fleet_load.Loaded, factory.Factory | None]:
    loaded = fleet_load.load(args.fleet, args.ref)
    clients: factory.Factory | None = None
    if args.observed:
        try:
            data = Path(args.observed).read_bytes()
        except OSError as exc:
            raise FleetError(f"{args.observed}: {exc.strerror}") from exc
        snap = snapfile.loads(data, args.observed, lazy=True)  # bodies read as needed
    else:
        clients = observe_commands.host_factory(args, dial_ahead=loaded.fleet.hosts.values())
        snap = observe_mod.observe_all(loaded.fleet, clients)
    options = P.Options(
        targets=tuple(args.target),
        excludes=tuple(args.exclude),
        max_destroy_share=args.max_destroy_share,
        allow_mass_destroy=args.allow_mass_destroy,
        allow_anycast_withdraw=args.allow_anycast_withdraw,
    )
    origin = P.FleetRef(loaded.origin.commit, loaded.origin.dirty, loaded.origin.ref)
    plan = planner.make(loaded.fleet, snap, origin=origin, options=options, created_at=_now())
    return plan, loaded, clients


def _verbosity(args: argparse.Namespace) -> int:
    return int(args.verbose) + int(getattr(args, "sub_verbose", 0))


def plan_cmd(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    if args.out:
        Path(args.out).write_text(planfile.dumps(plan))
    if args.format == "json":
        sys.stdout.write(planfile.dumps(plan))
    elif args.format == "markdown":
        sys.stdout.write(render.markdown(plan, _verbosity(args)))
    else:
        sys.stdout.write(render.text(plan, _verbosity(args)))
    return 2 if args.detailed_exitcode and plan.has_changes else 0


def apply_cmd(args: argparse.Namespace) -> int:
    loaded: fleet_load.Loaded | None = None
    make_client: factory.Factory | None = None
    if args.planfile:
        try:
            text = Path(args.planfile).read_text()
        except OSError as exc:
            raise FleetError(f"{args.planfile}: {exc.strerror}") from exc
        plan, digest = planfile.loads(text, args.planfile)
    else:
        plan, loaded, make_client = _planned(args)
        digest = planfile.digest_of(planfile.to_json(plan))
    sys.stdout.write(render.text(plan, _verbosity(args)))
    if plan.fleet.dirty and not args.allow_dirty:
        raise FleetError(
            "the plan was made from a dirty work tree; commit first, or pass --allow-dirty"
        )
    if not plan.steps:
        print("Nothing to apply.")
        return 0
    if not args.yes:
        answer = input("Apply these changes? Only 'yes' is accepted: ")
        if answer.strip() != "yes":
            print("Apply cancelled.")
            return 1
    if loaded is None:
        loaded = fleet_load.load(args.fleet, args.ref)
    if make_client is None:
        make_client = observe_commands.host_factory(args)
    clients: dict[str, protocol.HostClient] = {}
    for name, host in loaded.fleet.hosts.items():
        clients[name] = make_client(host)

    def client(name: str) -> protocol.HostClient:
        if name not in clients:
            raise FleetError(f"plan names host {name!r}, which is not in the fleet")
        return clients[name]

    printing = threading.Lock()

    def on_event(host: str, event: protocol.Event) -> None:
        with printing:
            print(f"  {host}: {event.action}: {event.type} {event.message}".rstrip(), flush=True)

    state = state_base.open_state(args.state, args.fleet)
    try:
        report = apply_mod.apply(
            plan,
            digest,
            clients=client,
            state=state,
            parallelism=args.parallelism,
            per_host=args.per_host,
            on_event=on_event,
        )
    finally:
        state.close()
    for line in apply_mod.summary_lines(report):
        print(line)
    print("Apply complete." if report.ok else "Apply incomplete: see above.")
    return 0 if report.ok else 1


def force_unlock_cmd(args: argparse.Namespace) -> int:
    state = state_base.open_state(args.state, args.fleet)
    try:
        held = state.force_unlock(args.nonce)
    finally:
        state.close()
    print(f"unlocked: the lock was {held.describe()}")
    return 0
