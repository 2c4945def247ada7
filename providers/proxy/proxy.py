"""The edge proxy of one host: what the host agent calls.

``EdgeProxy.start(table)`` renders, validates and starts HAProxy;
``EdgeProxy.apply(table)`` brings it to a new routing table through the
runtime API when it can and a seamless reload when it must. A malformed table
or a refused configuration raises :class:`ProviderError` *before* anything
reaches HAProxy, and a runtime command HAProxy refuses is rolled back: in
every failure the proxy keeps serving ``last_good`` and ``alarm`` says why, for
the agent to report.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fleet.errors import ProviderError
from providers.proxy import diff, haproxy, reload, runtime, spill
from providers.proxy import table as t

log = logging.getLogger(__name__)


class Method(StrEnum):
    NOOP = "noop"
    RUNTIME = "runtime"
    RELOAD = "reload"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one apply did: how, why, which commands, which backends, how long."""

    method: Method
    reason: str
    commands: tuple[str, ...]
    touched: frozenset[str]
    seconds: float


class EdgeProxy:
    """One host's HAProxy, driven from routing tables."""

    def __init__(self, options: haproxy.Options) -> None:
        self.options = options
        self.process = reload.HAProxyProcess(options)
        self.session = runtime.AdminSession(options.admin_socket)
        self.last_good: t.RoutingTable | None = None
        self.alarm: str | None = None
        self._live: t.RoutingTable | None = None
        self._files: dict[Path, str] = {}
        self._certs = ""
        self._resync = False

    def start(self, table: t.RoutingTable) -> None:
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        t.check(table)
        live = spill.number_table(table)
        self._files = self._render_checked(live)
        self.process.start()
        self._live, self.last_good = live, table
        self._certs = self._certs_fingerprint()
        self.alarm = None

    def resume(self, live: t.RoutingTable) -> bool:
        """Take over a running HAProxy that another process brought to ``live``.

        ``live`` is the table as HAProxy holds it (:attr:`live` of the process
        that last changed it). False when no such HAProxy runs.
        """
        if not self.process.adopt():
            return False
        self._files = haproxy.render(live, self.options)
        self._live = self.last_good = live
        self._certs = self._certs_fingerprint()
        self.alarm = None
        # a table saved before spill backends existed: HAProxy has none, so rewrite it whole
        self._resync = any(spill.active(r) and not spill.ids(r) for r in live.routes)
        return True

    @property
    def live(self) -> t.RoutingTable | None:
        """The table as HAProxy holds it (servers in HAProxy's order): what to resume from."""
        return self._live

    def stop(self) -> None:
        self.session.close()
        self.process.stop()

    def apply(self, table: t.RoutingTable) -> ApplyResult:
        """Bring HAProxy to ``table``; on any failure keep the last good one and raise."""
        began = time.monotonic()
        try:
            result = self._apply(table, began)
        except ProviderError as exc:
            self.alarm = str(exc)
            log.error("%s", exc)
            raise
        self.alarm = None
        return result

    def _apply(self, table: t.RoutingTable, began: float) -> ApplyResult:
        t.check(table)
        certs = self._certs_fingerprint()
        p = diff.plan(self._live, table)
        reason = p.reload
        if reason is None and certs != self._certs:
            reason = "certificates changed"
        if reason is None and self._resync:
            reason = "resync after a refused runtime update"
        if reason is not None:
            self._files = self._render_checked(p.live)
            self.session.close()
            self.process.reload()
            self._live, self.last_good = p.live, table
            self._resync = False
            self._certs = certs
            touched = frozenset(r.name for r in table.routes)
            return ApplyResult(Method.RELOAD, reason, (), touched, time.monotonic() - began)
        if not p.ops:
            return ApplyResult(Method.NOOP, "no change", (), frozenset(), time.monotonic() - began)
        try:
            commands = self.session.apply(p.ops, self.options.replay_map)
        except ProviderError:
            # rolled back, but HAProxy refused something we believed it held: it has
            # drifted from our table, so the next apply rewrites it whole
            self._resync = True
            raise
        self._live = p.live
        self.last_good = table
        self._files = haproxy.render(p.live, self.options)
        haproxy.write(self._files)  # a later reload or restart comes back to this table
        return ApplyResult(
            Method.RUNTIME, "servers changed", tuple(commands), p.touched, time.monotonic() - began
        )

    def _render_checked(self, table: t.RoutingTable) -> dict[Path, str]:
        """Write the files for ``table`` and have HAProxy check them; restore the old on refusal."""
        files = haproxy.render(table, self.options)
        haproxy.write(files)
        try:
            haproxy.validate(self.options.config_path)
        except ProviderError:
            if self._files:
                haproxy.write(self._files)
            raise
        for stale in set(self._files) - set(files):
            stale.unlink(missing_ok=True)
        return files

    def _certs_fingerprint(self) -> str:
        certs = self.options.certs_dir
        if certs is None or not certs.is_dir():
            return ""
        h = hashlib.sha256()
        for pem in sorted(certs.glob("*.pem")):
            h.update(pem.name.encode() + b"\0" + pem.read_bytes())
        return h.hexdigest()
