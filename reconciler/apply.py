"""Execute a saved plan: the only code that changes the world. I/O shell.

It runs exactly ``plan.steps`` (never recomputes), in dependency order, with at
most ``parallelism`` steps in flight overall and ``per_host`` per host. Each
step goes to its host's :class:`~reconciler.hosts.protocol.HostClient` with
its precondition; a refused step (etag changed since the plan) fails alone and
only what depends on it is skipped. A host that cannot be reached defers its
steps. A failed health gate halts that app's remaining steps and, when the app
asks for ``auto_revert``, runs :func:`reconciler.core.rollout.revert_steps`.

Every step is journaled (``started`` before sending, the outcome after), keyed
by the plan's digest; applying the same plan again resumes: ``done`` steps are
skipped and the rest sent again, which the agent's idempotence makes safe.
The report aggregates per host: succeeded, failed, refused, deferred/skipped.
After the steps it waits (bounded, all hosts at once) until the edges announce
the announcements it created or changed (:mod:`reconciler.settle`), so that
"complete" means the edges have joined.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import HostError, HostUnreachable, StateError
from reconciler import settle
from reconciler.core import plan as P
from reconciler.core import rollout
from reconciler.hosts import protocol
from reconciler.state import base

log = logging.getLogger(__name__)

DEFAULT_PARALLELISM = 10
DEFAULT_PER_HOST = 2
Clients = Callable[[str], protocol.HostClient]


@dataclass(slots=True)
class HostReport:
    succeeded: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (step, current etag)
    deferred: list[tuple[str, str]] = field(default_factory=list)  # not run, and why
    reverted: list[str] = field(default_factory=list)
    unannounced: list[str] = field(default_factory=list)  # not exported by the end (settle)

    @property
    def clean(self) -> bool:
        """Nothing failed, was refused, deferred or reverted here (unannounced does not count)."""
        return not (self.failed or self.refused or self.deferred or self.reverted)


@dataclass(slots=True)
class Report:
    apply_id: str
    hosts: dict[str, HostReport] = field(default_factory=lambda: defaultdict(HostReport))
    halted: dict[str, str] = field(default_factory=dict)  # app -> why
    resumed: int = 0  # steps found done in the journal

    @property
    def ok(self) -> bool:
        return not any(h.failed or h.refused or h.deferred for h in self.hosts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "apply_id": self.apply_id,
            "ok": self.ok,
            "resumed": self.resumed,
            "halted": dict(self.halted),
            "hosts": {
                name: {
                    "succeeded": r.succeeded,
                    "failed": [{"step": s, "message": m} for s, m in r.failed],
                    "refused": [{"step": s, "current_etag": e} for s, e in r.refused],
                    "deferred": [{"step": s, "reason": m} for s, m in r.deferred],
                    "reverted": r.reverted,
                    "unannounced": r.unannounced,
                }
                for name, r in sorted(self.hosts.items())
            },
        }


EventCallback = Callable[[str, protocol.Event], None]


def _noop_event(host: str, event: protocol.Event) -> None:
    pass


class _Run:
    def __init__(
        self,
        plan: P.Plan,
        apply_id: str,
        *,
        clients: Clients,
        state: base.Backend,
        parallelism: int,
        per_host: int,
        on_event: EventCallback,
    ) -> None:
        self.plan = plan
        self.apply_id = apply_id
        self.clients = clients
        self.state = state
        self.parallelism = max(1, parallelism)
        self.per_host = max(1, per_host)
        self.on_event = on_event
        self.settle_s = settle.TIMEOUT_S
        self.report = Report(apply_id)
        self.status: dict[str, base.Status] = {}
        self.auto_revert = {r.app: r.auto_revert for r in plan.rollouts}
        self.stop: threading.Event | None = None
        self.generations: dict[str, int] = {}  # host -> the latest generation it answered
        self.steps_on: dict[str, int] = defaultdict(int)  # host -> how many steps the plan has
        for s in plan.steps:
            self.steps_on[s.host] += 1
        self.recorded: set[str] = set()  # hosts that answered on the digest sent with a step

    def _client(self, host: str) -> protocol.HostClient:
        return self.clients(host)

    def _send(self, step: P.Step, record: str | None = None) -> protocol.Result:
        results = self._client(step.host).apply(
            [protocol.Action.of(step)], lambda e: self.on_event(step.host, e), record
        )
        if len(results) != 1 or results[0].action != step.id:
            raise HostError(step.host, "agent answered for other actions", action=step.id)
        return results[0]

    def _digest_with(self, step: P.Step) -> str | None:
        """The host's inputs digest if ``step`` is its last and all its others succeeded here.

        Sent with the step, the agent keeps it once the step succeeds: the
        round trip :meth:`_record_inputs` would make after the run is saved (a
        one-route change touches every host once). Not after a resume, nor on a
        host where anything failed, was refused or deferred (see there).
        """
        hr = self.report.hosts[step.host]
        if not hr.clean:
            return None
        if len(hr.succeeded) != self.steps_on[step.host] - 1:  # (steps resumed not counted)
            return None
        return self.plan.inputs.get(step.host)

    def _finish(self, step: P.Step, result: protocol.Result | BaseException) -> None:
        hr = self.report.hosts[step.host]
        if isinstance(result, HostUnreachable):
            self._set(step, base.Status.DEFERRED, None, result.message)
            hr.deferred.append((step.id, f"host unreachable: {result.message}"))
            return
        if isinstance(result, BaseException):
            message = str(result)
            self._set(step, base.Status.FAILED, None, message)
            hr.failed.append((step.id, message))
            return
        if result.generation is not None:
            seen = self.generations.get(step.host, result.generation)
            self.generations[step.host] = max(seen, result.generation)
        if result.inputs_recorded is not None:
            self.recorded.add(step.host)
        if result.outcome.succeeded:
            self._set(step, base.Status.DONE, result.etag, result.outcome.value)
            hr.succeeded.append(step.id)
        elif result.outcome is protocol.Outcome.REFUSED:
            self._set(step, base.Status.REFUSED, result.etag, result.message)
            hr.refused.append((step.id, result.etag or "absent"))
        else:
            self._set(step, base.Status.FAILED, result.etag, result.message)
            hr.failed.append((step.id, f"{result.outcome.value}: {result.message}"))
            if result.outcome is protocol.Outcome.GATE_FAILED and step.app:
                self.report.halted.setdefault(
                    step.app, f"health gate failed on {step.id}: {result.message}"
                )

    def _set(self, step: P.Step, status: base.Status, etag: str | None, message: str) -> None:
        self.status[step.id] = status
        self.state.record(self.apply_id, step.id, status, etag, message)

    def _blocked(self, step: P.Step) -> str:
        """Why ``step`` can never run in this apply, or ''."""
        if self.stop is not None and self.stop.is_set():
            return "stopped: shutdown requested before this step started"
        if step.app in self.report.halted:
            return f"halted: {self.report.halted[step.app]}"
        for dep in step.deps:
            st = self.status.get(dep)
            if st is not None and st is not base.Status.DONE and st is not base.Status.STARTED:
                return f"depends on {dep} ({st.value})"
        return ""

    def run(self) -> Report:
        journal = self.state.journal(self.apply_id)
        steps = list(self.plan.steps)
        for s in steps:
            entry = journal.get(s.id)
            if entry is not None and entry.status is base.Status.DONE:
                self.status[s.id] = base.Status.DONE
                self.report.resumed += 1
        pending = [s for s in steps if self.status.get(s.id) is not base.Status.DONE]
        in_flight: dict[cf.Future[protocol.Result], P.Step] = {}
        per_host: dict[str, int] = defaultdict(int)
        with cf.ThreadPoolExecutor(max_workers=self.parallelism) as pool:
            while pending or in_flight:
                progressed = False
                still: list[P.Step] = []
                for s in pending:
                    why = self._blocked(s)
                    if why:
                        self._set(s, base.Status.SKIPPED, None, why)
                        self.report.hosts[s.host].deferred.append((s.id, why))
                        progressed = True
                        continue
                    ready = all(self.status.get(d) is base.Status.DONE for d in s.deps)
                    if (
                        ready
                        and len(in_flight) < self.parallelism
                        and per_host[s.host] < self.per_host
                    ):
                        self._set(s, base.Status.STARTED, None, "")
                        in_flight[pool.submit(self._send, s, self._digest_with(s))] = s
                        per_host[s.host] += 1
                        progressed = True
                    else:
                        still.append(s)
                pending = still
                if not in_flight:
                    if pending and not progressed:
                        raise StateError("apply is stuck: steps wait on steps not in the plan")
                    continue
                done, _ = cf.wait(list(in_flight), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    s = in_flight.pop(fut)
                    per_host[s.host] -= 1
                    try:
                        self._finish(s, fut.result())
                    except HostError as exc:
                        self._finish(s, exc)
        self._revert()
        self._record_inputs()
        self._settle()
        return self.report

    def _settle(self) -> None:
        """Wait until the edges announce what this apply created or changed (bounded)."""
        done = [s for s in self.plan.steps if self.status.get(s.id) is base.Status.DONE]
        want = settle.wanted(done)
        for host, ids in sorted(want.items()):
            told = ", ".join(sorted(ids))
            self.on_event(
                host, protocol.Event("announcements", "waiting", f"to be announced: {told}")
            )

        def announced(host: str, rid: str) -> None:
            self.on_event(host, protocol.Event(f"announcement[{rid}]", "announced", ""))

        stop = self.stop
        left = settle.wait(
            want,
            self._client,
            parallelism=self.parallelism,
            timeout=self.settle_s,
            on_announced=announced,
            stopped=(lambda: False) if stop is None else stop.is_set,
        )
        for host, still in left.items():
            self.report.hosts[host].unannounced.extend(still)

    def _record_inputs(self) -> None:
        """Record the plan's inputs digest on each host where all of it is done.

        Not on a host with a step that failed, was refused, deferred, reverted
        or done by an earlier run (its generation since is unknown): that host
        takes the full path at the next plan, which is always right. The agent
        keeps the digest only if nothing changed it after the generation given.
        """
        todo: list[tuple[str, str, int]] = []
        for host, digest in sorted(self.plan.inputs.items()):
            if host in self.recorded:  # sent with its last step, which answered on it
                continue
            hr = self.report.hosts.get(host)
            if hr is not None and not hr.clean:
                continue
            if self.steps_on[host]:
                if len(hr.succeeded if hr else ()) != self.steps_on[host]:
                    continue
                generation = self.generations.get(host)
            else:
                generation = self.plan.generations.get(host)
            if generation is None:
                continue
            todo.append((host, digest, generation))
        if not todo:
            return
        # one round trip per host: side by side, as the steps went (1,000 hosts one
        # after the other would add their round trips up)
        with cf.ThreadPoolExecutor(max_workers=max(1, min(self.parallelism, len(todo)))) as pool:
            list(pool.map(lambda t: self._record_on(*t), todo))

    def _record_on(self, host: str, digest: str, generation: int) -> None:
        try:
            kept = self._client(host).record_inputs(digest, generation)
        except HostError as exc:
            log.info("%s: inputs digest not recorded: %s", host, exc)
            return
        log.debug("%s: inputs digest %s", host, "recorded" if kept else "not recorded")

    def _revert(self) -> None:
        for app in sorted(self.report.halted):
            if not self.auto_revert.get(app, False):
                continue
            touched = [
                sid
                for sid, st in self.status.items()
                if st in (base.Status.DONE, base.Status.FAILED)
            ]
            for step in rollout.revert_steps(self.plan, app, touched):
                try:
                    result = self._send(step)
                except HostError as exc:
                    self._set(step, base.Status.FAILED, None, str(exc))
                    self.report.hosts[step.host].failed.append((step.id, str(exc)))
                    continue
                if result.outcome.succeeded:
                    self._set(step, base.Status.DONE, result.etag, "revert")
                    self.report.hosts[step.host].reverted.append(step.id)
                else:
                    self._set(step, base.Status.FAILED, result.etag, result.message)
                    self.report.hosts[step.host].failed.append((step.id, result.message))


def apply(
    plan: P.Plan,
    apply_id: str,
    *,
    clients: Clients,
    state: base.Backend,
    parallelism: int = DEFAULT_PARALLELISM,
    per_host: int = DEFAULT_PER_HOST,
    on_event: EventCallback = _noop_event,
    purpose: str = "",
    trigger: str = "",
    held: base.LockInfo | None = None,
    stop: threading.Event | None = None,
    settle_s: float = settle.TIMEOUT_S,
) -> Report:
    """Apply ``plan`` (whose digest is ``apply_id``) under the state lock; return the report.

    ``trigger`` is recorded in the history (who or what asked). A caller that
    already holds the lock (GitOps plans under it, so that its plan is never
    stale) passes it as ``held`` and keeps it afterwards. Once ``stop`` is set
    no new step starts; steps in flight finish and are journaled, the rest are
    deferred, so the journal stays consistent on shutdown. ``settle_s`` bounds
    the wait for new announcements after the steps (:mod:`reconciler.settle`).
    """
    lock = held
    if lock is None:
        holder, _, _ = base.me()
        lock = state.acquire(holder, purpose or f"apply {apply_id[:12]}")
    try:
        actions = [f"{c.symbol} {c.address}" for c in plan.changes]
        state.begin_apply(apply_id, plan.fleet.commit, plan.counts(), trigger, actions)
        run = _Run(
            plan,
            apply_id,
            clients=clients,
            state=state,
            parallelism=parallelism,
            per_host=per_host,
            on_event=on_event,
        )
        run.stop = stop
        run.settle_s = settle_s
        report = run.run()
        state.finish_apply(apply_id, "ok" if report.ok else "incomplete", report.to_json())
        return report
    finally:
        if held is None:
            state.release(lock.nonce)


def summary_lines(report: Report) -> list[str]:
    """The per-host report as an operator reads it."""
    lines = []
    for host, r in sorted(report.hosts.items()):
        lines.append(
            f"host {host}: {len(r.succeeded)} succeeded, {len(r.failed)} failed, "
            f"{len(r.refused)} refused, {len(r.deferred)} deferred"
            + (f", {len(r.reverted)} reverted" if r.reverted else "")
        )
        lines += [f"  failed   {s}: {m}" for s, m in r.failed]
        lines += [f"  refused  {s}: etag is now {e}" for s, e in r.refused]
        lines += [f"  deferred {s}: {m}" for s, m in r.deferred]
        lines += [
            f"  not announced yet {rid}: this edge reaches no healthy machine of the app "
            "(it announces once its health gate passes for the hold-down)"
            for rid in r.unannounced
        ]
    for app, why in sorted(report.halted.items()):
        lines.append(f"app {app} halted: {why}")
    if report.resumed:
        lines.append(f"resumed: {report.resumed} step(s) were already done")
    return lines
