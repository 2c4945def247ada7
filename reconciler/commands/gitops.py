"""`reconcile watch` and `reconcile status`: the pull-based GitOps loop and its conditions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from reconciler.commands import common
from reconciler.gitops import jsonlog, status
from reconciler.state import base


def register(sub: Any) -> None:
    p = sub.add_parser("watch", help="fetch a branch, apply new commits, correct drift")
    p.add_argument("--repo", required=True, metavar="URL|PATH", help="the fleet repository")
    p.add_argument("--branch", default="main")
    p.add_argument("--path", default="", help="the fleet's folder inside the repository")
    p.add_argument(
        "--interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="fetch and re-plan (drift check) this often (default 60)",
    )
    p.add_argument(
        "--webhook",
        metavar="ADDR:PORT",
        help="listen for POSTs that trigger a fetch at once (e.g. 127.0.0.1:9419)",
    )
    p.add_argument(
        "--cache",
        default=os.environ.get("FLEET_WATCH_CACHE", ".fleet-watch"),
        metavar="DIR",
        help="where the mirror of the repository is kept",
    )
    p.add_argument("--log-format", choices=["json", "text"], default="json")
    p.add_argument("--hosts", default=None, metavar="SPEC", help="memory:PATH; default SSH")
    common.add_state_options(p)
    p.set_defaults(func=watch_cmd)

    p = sub.add_parser("status", help="the GitOps conditions: Ready, Reconciling, Stalled")
    p.add_argument("--format", choices=["text", "json"], default="text")
    common.add_fleet_options(p)
    common.add_state_options(p)
    p.set_defaults(func=status_cmd)


def _logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(jsonlog.JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def watch_cmd(args: argparse.Namespace) -> int:
    from reconciler.gitops import deploy, watch, webhook  # noqa: PLC0415 - start-up

    _logging(args.log_format)
    stop, wake = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger(__name__).info(
            "%s: finishing the action in flight, then stopping", signal.Signals(signum).name
        )
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    target = deploy.Target(
        repo=args.repo,
        subdir=args.path,
        hosts=args.hosts or os.environ.get("FLEET_HOSTS"),
        ssh_key=args.ssh_key,
        known_hosts=args.known_hosts,
        state_url=args.state,
    )
    settings = watch.Settings(args.repo, args.branch, args.interval, target, args.cache)
    hook = webhook.Webhook(args.webhook, wake.set) if args.webhook else None
    if hook is not None:
        logging.getLogger(__name__).info("webhook listening on %s", hook.address)
    try:
        watch.Watcher(settings, stop, wake).run()
    finally:
        if hook is not None:
            hook.close()
    return 0


def status_cmd(args: argparse.Namespace) -> int:
    from reconciler.gitops import deploy  # noqa: PLC0415 - start-up

    state = base.open_state(args.state, args.fleet)
    try:
        doc = state.get_status(deploy.STATUS_NAME)
    finally:
        state.close()
    if args.format == "json":
        json.dump(doc or {}, sys.stdout, indent=1, sort_keys=True)
        print()
    else:
        sys.stdout.write(status.text(doc))
    ready = status.condition(doc, status.READY)
    return 0 if ready is None or ready["status"] != "False" else 1
