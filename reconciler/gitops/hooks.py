"""Server-side Git hooks: a bad push never lands.

``install`` writes a ``pre-receive`` hook into a bare repository. Git runs it
after receiving a push and before moving any ref; it reads ``OLD NEW REF``
lines on stdin. For every updated ref the fleet is loaded and validated at the
new commit, straight from the object database (the pushed objects are still in
Git's quarantine, which the hook's environment exposes); on any error the
hook prints every ``file:line`` message, which Git relays to the pusher's
terminal, and exits 1 so that no ref moves.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from fleet import load as fleet_load
from fleet.errors import FleetError, ModelErrors

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


def install(repo: str | os.PathLike[str], fleet_path: str = "") -> Path:
    """Write the pre-receive hook into a bare repository; refuses to overwrite a foreign hook."""
    root = Path(repo)
    if not (root / "HEAD").exists() or not (root / "objects").is_dir():
        raise FleetError(f"{repo}: not a bare Git repository (no HEAD and objects/)")
    hooks = root / "hooks"
    hooks.mkdir(exist_ok=True)
    hook = hooks / "pre-receive"
    if hook.exists() and MARKER not in hook.read_text(errors="replace"):
        raise FleetError(f"{hook}: a pre-receive hook that we did not write is already there")
    reconcile = Path(sys.executable).with_name("reconcile")
    command = [str(reconcile), "hook", "run", "pre-receive", "--repo", str(root.resolve())]
    if fleet_path:
        command += ["--path", fleet_path]
    hook.write_text(
        f"#!/bin/sh\n{MARKER}\n# Validates the pushed fleet; a push with errors never lands.\n"
        f"exec {shlex.join(command)}\n"
    )
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return hook
