"""`fleet-agent serve`: keeps this host's machines in their desired run state.

Each pass over the inventory (once a second by default):

- a managed machine that should run but does not is restarted according to
  its restart policy (``always``; ``on-failure`` when it failed, up to
  ``max_retries``; ``never``), with exponential backoff (1 s doubling to 30 s;
  the count resets after a minute of running);
- a running machine's health checks run on their interval once the grace
  period has passed, and the result is recorded in the inventory, where
  ``observe`` reports it.

Machines are separate processes (their VMMs run in their own sessions), so
the supervisor can stop, crash or be upgraded without touching them; a new
supervisor simply picks up from the inventory ("re-adopts"). The decisions
are a pure function (:func:`decide`) so they can be tested without time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hostagent import handlers as H
from hostagent.inventory import Inventory

log = logging.getLogger(__name__)
Json = Any

# A host-level duty run after each pass: gets the pass's clock reading, returns
# what it did (for logs and tests). Handlers of host-level kinds provide these.
Ticker = Callable[[float], list[str]]

# The inventory status mark of a machine autostop stopped (hostagent/autostop.py): the
# supervisor leaves it stopped whatever its restart policy, until it runs again.
AUTOSTOPPED = ("stopped_by", "autostop")
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class Memory:
    """What the supervisor remembers about one machine between passes (not persisted)."""

    restarts: int = 0
    next_try: float = 0.0
    running_since: float | None = None
    next_check: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    restart: bool
    memory: Memory
    reason: str = ""


def decide(spec: Mapping[str, Json], state: str | None, memory: Memory, now: float) -> Decision:
    """Whether to restart a machine now, and what to remember. Pure."""
    restart = spec.get("restart") or {}
    policy = restart.get("policy", "on-failure")
    max_retries = int(restart.get("max_retries", 10))
    if state in ("running", "starting"):
        since = memory.running_since if memory.running_since is not None else now
        restarts = memory.restarts if now - since < STABLE_AFTER_S else 0
        return Decision(False, Memory(restarts, 0.0, since, memory.next_check))
    stopped_by_request = spec.get("desired_state") == "stopped"
    if stopped_by_request or policy == "never":
        return Decision(False, Memory(memory.restarts), "policy says leave it")
    if policy == "on-failure" and state not in ("failed", None):
        return Decision(False, Memory(memory.restarts), "exited cleanly")
    if policy == "on-failure" and memory.restarts >= max_retries:
        return Decision(False, memory, f"gave up after {memory.restarts} restarts")
    if now < memory.next_try:
        return Decision(False, memory, "backing off")
    delay = min(BACKOFF_MAX_S, BACKOFF_START_S * (2**memory.restarts))
    return Decision(True, Memory(memory.restarts + 1, now + delay), f"state {state}")


class Supervisor:
    def __init__(
        self,
        inventory: Inventory,
        machines: H.Handler,
        *,
        clock: Callable[[], float] = time.monotonic,
        tickers: Sequence[Ticker] = (),
    ) -> None:
        self.inventory = inventory
        self.machines = machines
        self.clock = clock
        self.tickers = tuple(tickers)
        self.memory: dict[str, Memory] = {}

    def tick(self) -> list[str]:
        """One pass; returns what it did, for logs and tests."""
        done: list[str] = []
        now = self.clock()
        state = self.inventory.read()
        health: dict[str, str] = {}
        woken: list[str] = []
        for (kind, rid), entry in sorted(state.entries.items()):
            if kind != "machine" or entry.status.get("pending"):
                continue
            live = self.machines.observe(rid, entry.spec)
            memory = self.memory.get(rid, Memory())
            spec = entry.spec
            if entry.status.get(AUTOSTOPPED[0]) == AUTOSTOPPED[1]:
                if live.state == "running":
                    woken.append(rid)  # started again (a wake, an apply): the mark goes
                else:
                    spec = {**spec, "desired_state": "stopped"}  # autostop's: leave it
            decision = decide(spec, live.state, memory, now)
            memory = decision.memory
            if decision.restart:
                done.append(f"restart {rid} ({decision.reason})")
                log.info(
                    json.dumps({"event": "restart", "machine": rid, "reason": decision.reason})
                )
                try:
                    self.machines.start(rid, entry.spec, lambda *_: None)
                except Exception as exc:  # one machine's failure must not stop the loop
                    log.warning(json.dumps({"event": "restart_failed", "machine": rid,
                                            "error": str(exc)}))  # fmt: skip
            elif live.state == "running" and now >= memory.next_check:
                grace = _grace(entry.spec)
                since = memory.running_since or now
                if now - since >= grace:
                    ok = self.machines.healthy(rid, entry.spec)
                    health[rid] = "passing" if ok else "critical"
                    memory = Memory(memory.restarts, memory.next_try, memory.running_since,
                                    now + _interval(entry.spec))  # fmt: skip
            if live.state != "running":
                health[rid] = "critical"
            self.memory[rid] = memory
        self._record(health, woken)
        for ticker in self.tickers:
            # Host-level duties (mesh, announcements, proxy) ride on the same loop;
            # one failing must not stop the machines' supervision.
            try:
                done += ticker(now)
            except Exception as exc:
                log.warning(json.dumps({"event": "ticker_failed", "ticker": _name(ticker),
                                        "error": str(exc)}))  # fmt: skip
        return done

    def _record(self, health: Mapping[str, str], woken: Sequence[str] = ()) -> None:
        current = self.inventory.read()
        changed = {
            rid: h
            for rid, h in health.items()
            if (e := current.get("machine", rid)) is not None and e.status.get("health") != h
        }
        if not changed and not woken:
            return
        with self.inventory.transaction() as state:
            for rid in woken:
                entry = state.get("machine", rid)
                if entry is not None:
                    entry.status = {k: v for k, v in entry.status.items() if k != AUTOSTOPPED[0]}
            for rid, h in changed.items():
                entry = state.get("machine", rid)
                if entry is not None:
                    entry.status = {**entry.status, "health": h}
                    log.info(json.dumps({"event": "health", "machine": rid, "health": h}))

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        log.info(json.dumps({"event": "supervisor_started"}))
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # keep supervising; the traceback goes to the log
                log.exception("supervisor pass failed")
            stop.wait(interval)
        log.info(json.dumps({"event": "supervisor_stopped"}))


def _name(ticker: Ticker) -> str:
    return getattr(ticker, "__qualname__", type(ticker).__name__)


def _checks(spec: Mapping[str, Json]) -> list[Mapping[str, Json]]:
    return list(spec.get("checks") or [])


def _grace(spec: Mapping[str, Json]) -> float:
    return max((float(c.get("grace_period_s", 1.0)) for c in _checks(spec)), default=0.0)


def _interval(spec: Mapping[str, Json]) -> float:
    return min((float(c.get("interval_s", 15.0)) for c in _checks(spec)), default=5.0)
