"""One GitOps reconciliation: lock, load a commit, observe, plan, apply, record. I/O shell.

The post-receive hook, ``reconcile watch`` and ``reconcile rollback`` all go
through :func:`reconcile`, so a push, a poll and a rollback behave the same.

The lock is taken *before* the commit is resolved and the plan is made: a
second push that arrives during an apply waits (saying so), and then plans
against the hosts as the first apply left them and against the branch tip at
that moment. Applies therefore never interleave, and never go back to an
older commit than one already applied, whatever order the hooks wake up in.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet import load as fleet_load
from fleet.errors import FleetError, GuardError, LockError, ModelErrors, PlanError
from reconciler import apply as apply_mod
from reconciler import observe as observe_mod
from reconciler.core import plan as P
from reconciler.core import planfile, planner, render
from reconciler.gitops import status
from reconciler.hosts import factory, protocol
from reconciler.state import base

STATUS_NAME = "gitops"
Say = Callable[[str], None]
EventSink = Callable[[str, protocol.Event], None]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the fleet comes from and where it goes."""

    repo: str  # a Git repository (bare or not) holding the fleet
    subdir: str  # the fleet's folder inside it
    hosts: str | None  # --hosts (memory:PATH) or None for SSH
    ssh_key: str | None = None
    known_hosts: str | None = None
    state_url: str | None = None
    state_dir: str = "."  # where the default SQLite file goes


@dataclass(frozen=True, slots=True)
class Outcome:
    commit: str | None
    changes: int
    apply_id: str | None
    ok: bool
    message: str


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def rev_parse(repo: str, ref: str) -> str:
    """The commit ``ref`` names in ``repo`` now (a branch moves; the plan needs a commit)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise FleetError(f"{repo}: cannot run git: {exc.strerror}") from exc
    if out.returncode != 0:
        raise FleetError(f"{repo}: no commit {ref!r}")
    return out.stdout.strip()


def wait_for_lock(
    state: base.Backend,
    purpose: str,
    say: Say,
    stop: threading.Event | None = None,
    poll_s: float = 0.1,
) -> base.LockInfo | None:
    """Take the apply lock, waiting for it (and saying so once); None if stopped first."""
    holder, _, _ = base.me()
    told = False
    while True:
        try:
            return state.acquire(holder, purpose)
        except LockError as exc:
            if not told:
                say(f"waiting for the apply lock: {exc.holder or 'another apply'} holds it")
                told = True
        if stop is not None and stop.wait(poll_s):
            return None
        if stop is None:
            time.sleep(poll_s)


def _record(state: base.Backend, make: Callable[[status.Doc | None], status.Doc]) -> None:
    state.put_status(STATUS_NAME, make(state.get_status(STATUS_NAME)))


@dataclass(slots=True)
class _Ctx:
    target: Target
    trigger: str
    say: Say
    on_event: EventSink
    stop: threading.Event | None
    confirm: Callable[[P.Plan], bool] | None
    source: dict[str, str]


def reconcile(
    target: Target,
    ref: str,
    *,
    trigger: str,
    say: Say,
    on_event: EventSink,
    stop: threading.Event | None = None,
    confirm: Callable[[P.Plan], bool] | None = None,
    source: dict[str, str] | None = None,
    resolve: Callable[[str], str] | None = None,
) -> Outcome:
    """Apply the fleet at ``ref`` (resolved to a commit under the lock) to the hosts.

    ``resolve`` turns ``ref`` into a commit (default: ``git rev-parse`` in the
    repository). ``confirm`` sees the plan before anything changes (rollback
    asks a person); ``source`` is stored in the status (where from, branch).
    """
    ctx = _Ctx(target, trigger, say, on_event, stop, confirm, dict(source or {}))
    state = base.open_state(target.state_url, target.state_dir)
    try:
        lock = wait_for_lock(state, f"gitops: {trigger}", say, stop)
        if lock is None:
            return Outcome(None, 0, None, False, "stopped before the lock was free")
        try:
            commit = None
            try:
                commit = (resolve or (lambda r: rev_parse(target.repo, r)))(ref)
                return _locked(ctx, commit, ref, state, lock)
            except FleetError as exc:
                reason, stalled = _classify(exc)
                message = str(exc)
                _record(
                    state,
                    lambda p: status.failed(p, commit, reason, message, now(), stalled=stalled),
                )
                raise
        finally:
            state.release(lock.nonce)
    finally:
        state.close()


def _classify(exc: FleetError) -> tuple[str, bool]:
    """Flux-like reason, and whether retrying the same commit is pointless (Stalled)."""
    if isinstance(exc, ModelErrors):
        return "ValidationFailed", True
    if isinstance(exc, GuardError):
        return "GuardRefused", True
    if isinstance(exc, PlanError):
        return "PlanFailed", True
    return "ReconciliationFailed", False


def _locked(ctx: _Ctx, commit: str, ref: str, state: base.Backend, lock: base.LockInfo) -> Outcome:
    target, say = ctx.target, ctx.say
    short = commit[:12]

    def starting(prev: status.Doc | None) -> status.Doc:
        doc = status.reconciling(prev, commit, f"{ctx.trigger}: planning {short}", now())
        doc.update(ctx.source)
        return doc

    _record(state, starting)
    loaded = fleet_load.load_git(target.repo, commit, target.subdir)
    make_client = factory.from_option(
        target.hosts, ssh_key=target.ssh_key, known_hosts=target.known_hosts
    )
    snap = observe_mod.observe_all(loaded.fleet, make_client)
    origin = P.FleetRef(loaded.origin.commit, False, ref)
    plan = planner.make(loaded.fleet, snap, origin=origin, created_at=now())

    say(f"fleet at {short}: {render.summary(plan)}")
    if not plan.has_changes:
        _record(state, lambda p: status.ready(p, commit, f"applied {short}; no changes", now()))
        return Outcome(commit, 0, None, True, "no changes")
    for line in render.text(plan).rstrip().splitlines()[1:]:
        say(line)
    if ctx.confirm is not None and not ctx.confirm(plan):
        _record(
            state,
            lambda p: status.failed(
                p, commit, "Cancelled", "apply cancelled", now(), stalled=False
            ),
        )
        return Outcome(commit, len(plan.changes), None, False, "cancelled")

    digest = planfile.digest_of(planfile.to_json(plan))
    clients: dict[str, protocol.HostClient] = {}
    for name, host in loaded.fleet.hosts.items():
        clients[name] = make_client(host)
    say(f"applying {len(plan.steps)} step(s) as {digest[:12]}")
    report = apply_mod.apply(
        plan,
        digest,
        clients=clients.__getitem__,
        state=state,
        on_event=ctx.on_event,
        trigger=ctx.trigger,
        held=lock,
        stop=ctx.stop,
    )
    for line in apply_mod.summary_lines(report):
        say(line)
    if report.ok:
        msg = f"applied {short}: {render.summary(plan)}"
        _record(state, lambda p: status.ready(p, commit, msg, now()))
    else:
        stopping = ctx.stop is not None and ctx.stop.is_set()
        why = "stopped: shutdown requested" if stopping else "incomplete"
        _record(
            state,
            lambda p: status.failed(
                p, commit, "ApplyIncomplete", f"{short}: {why}", now(), stalled=False
            ),
        )
    where = target.state_url or "the default state store"
    say(
        f"{'apply complete' if report.ok else 'apply INCOMPLETE'}; full report: "
        f"reconcile history --show {digest[:12]} (state: {where})"
    )
    return Outcome(commit, len(plan.changes), digest, report.ok, "applied")
