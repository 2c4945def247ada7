"""`reconcile watch`: pull-based GitOps. Fetch, apply new commits, correct drift. I/O shell.

Where no post-receive hook can run (a hosted Git service), the watcher keeps a
bare mirror of the source repository, fetches it every ``interval`` (or at
once when the webhook is called), and hands the branch tip to
:func:`reconciler.gitops.deploy.reconcile`. A tip it has not applied yet is a
*new commit*; the same tip again is a *re-plan*, which finds drift (a machine
stopped by hand, one that crashed) and corrects it as each kind's drift policy
says. Both go through the same lock, plan and journal as every other apply.

Shutdown (SIGTERM, SIGINT) sets ``stop``: no new step starts, the steps in
flight finish and are journaled, the status says why the apply is incomplete,
and the next start resumes by planning again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from fleet.errors import FleetError
from reconciler.gitops import deploy
from reconciler.hosts import protocol
from reconciler.state import base

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Settings:
    source: str  # URL or path of the fleet repository
    branch: str
    interval_s: float
    target: deploy.Target  # repo is replaced by the mirror
    cache_dir: str  # where the mirror lives


def _git(*args: str, cwd: str | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FleetError(f"git {args[0]}: {exc}") from exc
    if out.returncode != 0:
        raise FleetError(f"git {args[0]}: {out.stderr.strip().splitlines()[-1:] or out.returncode}")
    return out.stdout


class Watcher:
    def __init__(self, settings: Settings, stop: threading.Event, wake: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.wake = wake
        key = hashlib.sha256(settings.source.encode()).hexdigest()[:16]
        self.mirror = str(Path(settings.cache_dir) / f"{key}.git")
        self.target = replace(settings.target, repo=self.mirror)
        self.last_applied: str | None = None

    def fetch(self) -> str:
        """Update the mirror; the branch's tip commit."""
        s = self.settings
        source = s.source if "://" in s.source or ":" in s.source else os.path.abspath(s.source)
        if not Path(self.mirror, "HEAD").exists():
            Path(self.mirror).parent.mkdir(parents=True, exist_ok=True)
            _git("init", "--quiet", "--bare", self.mirror)
        refspec = f"+refs/heads/{s.branch}:refs/heads/{s.branch}"
        _git("fetch", "--quiet", "--no-tags", source, refspec, cwd=self.mirror)
        return deploy.rev_parse(self.mirror, f"refs/heads/{s.branch}")

    def _say(self, line: str) -> None:
        log.info(line)

    def _event(self, host: str, event: protocol.Event) -> None:
        log.info(
            "%s: %s: %s %s",
            host,
            event.action,
            event.type,
            event.message,
            extra={"host": host, "action": event.action, "event": event.type},
        )

    def cycle(self) -> deploy.Outcome | None:
        """One fetch and reconciliation; None when it failed (already logged and recorded)."""
        try:
            tip = self.fetch()
        except FleetError as exc:
            log.error("fetch failed: %s", exc, extra={"source": self.settings.source})
            return None
        new = tip != self.last_applied
        trigger = f"watch: new commit {tip[:12]}" if new else "watch: re-plan (drift check)"
        log.info("reconciling %s", tip[:12], extra={"commit": tip, "trigger": trigger})
        try:
            result = deploy.reconcile(
                self.target,
                tip,
                trigger=trigger,
                say=self._say,
                on_event=self._event,
                stop=self.stop,
                source={"source": self.settings.source, "branch": self.settings.branch},
                resolve=lambda ref: ref,
            )
        except FleetError as exc:
            log.error("reconciliation of %s failed: %s", tip[:12], exc, extra={"commit": tip})
            return None
        if result.ok:
            self.last_applied = tip
        log.info(
            "%s %s: %s",
            "ready at" if result.ok else "not ready at",
            tip[:12],
            result.message,
            extra={"commit": tip, "changes": result.changes, "apply_id": result.apply_id},
        )
        return result

    def run(self) -> None:
        state = base.open_state(self.target.state_url, self.target.state_dir)
        try:
            doc = state.get_status(deploy.STATUS_NAME) or {}
        finally:
            state.close()
        self.last_applied = doc.get("lastAppliedCommit")
        log.info(
            "watching %s (%s) every %gs",
            self.settings.source,
            self.settings.branch,
            self.settings.interval_s,
            extra={"last_applied": self.last_applied},
        )
        while not self.stop.is_set():
            self.wake.clear()
            self.cycle()
            if self.stop.is_set():
                break
            woken = self.wake.wait(self.settings.interval_s)
            if woken and not self.stop.is_set():
                log.info("woken by the webhook")
        log.info("stopped")
