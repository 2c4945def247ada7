"""Server-side Git hooks: a bad push never lands; a good push on the deploy branch is applied.

``install`` writes a ``pre-receive`` hook into a bare repository. Git runs it
after receiving a push and before moving any ref; it reads ``OLD NEW REF``
lines on stdin. For every updated ref the fleet is loaded and validated at the
new commit, straight from the object database (the pushed objects are still in
Git's quarantine, which the hook's environment exposes); on any error the
hook prints every ``file:line`` message, which Git relays to the pusher's
terminal, and exits 1 so that no ref moves.

``install`` also writes a ``post-receive`` hook. Git runs it after the refs
moved, with the pusher still connected: everything it prints appears on the
pusher's terminal as ``remote: ...`` while ``git push`` waits. For the
configured branch it plans and applies through :mod:`reconciler.gitops.deploy`
(waiting for the apply lock if another apply runs); pushes to any other
branch were validated by pre-receive and are only acknowledged. The host
transport, SSH settings and the state store are fixed at install time and
written into the hook's command line.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from fleet import load as fleet_load
from fleet.errors import FleetError, ModelErrors

if TYPE_CHECKING:  # the pre-receive hook must start fast: no apply machinery imported
    from reconciler.gitops import deploy
    from reconciler.hosts import protocol

ZERO = "0" * 40
MARKER = "# installed by `reconcile hook install`"


@dataclass(frozen=True, slots=True)
class Update:
    old: str
    new: str
    ref: str


def parse_updates(lines: Iterable[str]) -> list[Update]:
    updates = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            updates.append(Update(*parts))
    return updates


def pre_receive(repo: str, fleet_path: str, stdin: TextIO, out: TextIO) -> int:
    """Validate every pushed ref; 0 lets the push land, 1 rejects all of it."""
    failed = False
    for update in parse_updates(stdin):
        if update.new == ZERO:
            continue  # a deleted ref has no fleet to check
        short = update.new[:12]
        try:
            loaded = fleet_load.load_git(repo, update.new, fleet_path)
        except ModelErrors as exc:
            failed = True
            print(f"fleet: {update.ref} at {short}: {len(exc.errors)} error(s):", file=out)
            for line in exc.lines():
                print(f"  {line}", file=out)
            continue
        except FleetError as exc:
            failed = True
            print(f"fleet: {update.ref} at {short}: {exc}", file=out)
            continue
        fleet = loaded.fleet
        print(
            f"fleet: {update.ref} at {short}: valid ({len(fleet.hosts)} hosts, "
            f"{len(fleet.apps)} apps)",
            file=out,
        )
    if failed:
        print("fleet: push rejected; nothing was changed", file=out)
    return 1 if failed else 0


def _pusher() -> str:
    """Who pushed, as far as the Git server tells (gitolite, GitLab, HTTP, else the OS user)."""
    for name in ("GL_USERNAME", "GITEA_PUSHER_NAME", "REMOTE_USER", "USER", "LOGNAME"):
        if os.environ.get(name):
            return os.environ[name]
    return str(os.getuid())


def post_receive(target: deploy.Target, branch: str, stdin: TextIO, out: TextIO) -> int:
    """Apply the deploy branch's new commit, streaming progress; other refs: acknowledge."""

    def say(line: str) -> None:
        out.write(f"fleet: {line}\n")
        out.flush()

    def on_event(host: str, event: protocol.Event) -> None:
        out.write(f"fleet:   {host}: {event.action}: {event.type} {event.message}".rstrip() + "\n")
        out.flush()

    from reconciler.gitops import deploy  # noqa: PLC0415 - see the TYPE_CHECKING import

    deploy_ref = f"refs/heads/{branch}"
    code = 0
    for update in parse_updates(stdin):
        if update.ref != deploy_ref:
            say(f"{update.ref}: validated only; deploys follow {deploy_ref}")
            continue
        if update.new == ZERO:
            say(f"{update.ref} was deleted; nothing applied")
            continue
        trigger = f"post-receive: push of {update.new[:12]} to {update.ref} by {_pusher()}"
        try:
            result = deploy.reconcile(
                target,
                deploy_ref,
                trigger=trigger,
                say=say,
                on_event=on_event,
                source={"source": target.repo, "branch": branch},
            )
        except FleetError as exc:
            for line in exc.lines():
                say(f"error: {line}")
            say("nothing more was applied; the push itself has landed")
            code = 1
            continue
        if not result.ok:
            code = 1
    return code


def install(
    repo: str | os.PathLike[str],
    fleet_path: str = "",
    *,
    branch: str = "main",
    hosts: str | None = None,
    state: str | None = None,
    ssh_key: str | None = None,
    known_hosts: str | None = None,
) -> list[Path]:
    """Write the pre- and post-receive hooks into a bare repository.

    Refuses to overwrite hooks it did not write. ``state`` defaults to a
    SQLite file inside the repository (``fleet-state/state.db``).
    """
    root = Path(repo)
    if not (root / "HEAD").exists() or not (root / "objects").is_dir():
        raise FleetError(f"{repo}: not a bare Git repository (no HEAD and objects/)")
    hooks = root / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("pre-receive", "post-receive"):
        hook = hooks / name
        if hook.exists() and MARKER not in hook.read_text(errors="replace"):
            raise FleetError(f"{hook}: a {name} hook that we did not write is already there")
    reconcile = str(Path(sys.executable).with_name("reconcile"))
    where = ["--repo", str(root.resolve())] + (["--path", fleet_path] if fleet_path else [])
    pre = [reconcile, "hook", "run", "pre-receive", *where]
    post = [reconcile, "hook", "run", "post-receive", *where, "--branch", branch]
    for flag, value in (
        ("--state", state),
        ("--hosts", hosts),
        ("--ssh-key", ssh_key),
        ("--known-hosts", known_hosts),
    ):
        if value:
            post += [flag, value]
    written = [
        _write(
            hooks / "pre-receive",
            "Validates the pushed fleet; a push with errors never lands.",
            pre,
        ),
        _write(
            hooks / "post-receive",
            f"Plans and applies pushes to {branch}; progress goes to the pusher's terminal.",
            post,
        ),
    ]
    return written


def _write(hook: Path, why: str, command: list[str]) -> Path:
    hook.write_text(f"#!/bin/sh\n{MARKER}\n# {why}\nexec {shlex.join(command)}\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return hook
