"""Per-kind diff rules: which spec fields update in place and which force a replacement.

Pure data. Each resource kind the reconciler manages declares here what a
change to each top-level field of its spec means (in place or replace), which
fields of an observed resource are runtime-only (never compared, never shown
as drift), and what to do when the host's live state drifts from what was last
applied (correct, warn or ignore). The planner asks these rules; it never
hard-codes a field name of a provider's resource.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Kind(StrEnum):
    """The kinds of resource a host inventory holds (protocol values)."""

    IMAGE = "image"
    MACHINE = "machine"
    ROUTE = "route"
    ANNOUNCEMENT = "announcement"
    WIREGUARD = "wireguard"  # one per host, id "mesh": the host's mesh interface and peers
    BGP = "bgp"  # one per host, id "bird": BIRD and its upstream sessions


class DriftPolicy(StrEnum):
    """What the planner does when observed state differs from last-applied state."""

    CORRECT = "correct"  # plan an action that puts it back
    WARN = "warn"  # report it, change nothing
    IGNORE = "ignore"  # not even reported


class Effect(StrEnum):
    """What changing one field of a spec means."""

    UPDATE = "update"  # the host changes it in place
    REPLACE = "replace"  # a new resource must be created and the old one destroyed


# Runtime-only fields an agent may report in a resource's ``actual`` block; they
# change by themselves (pids, uptime, handshake times) and are never compared.
RUNTIME_FIELDS = frozenset(
    {"pid", "pids", "uptime_s", "started_at", "last_handshake", "restarts", "rx_bytes", "tx_bytes"}
)


@dataclass(frozen=True, slots=True)
class Rules:
    kind: Kind
    replace_fields: frozenset[str]
    drift: DriftPolicy
    runtime_fields: frozenset[str] = RUNTIME_FIELDS

    def effect(self, path: Sequence[str | int]) -> Effect:
        """The effect of a change at ``path`` (a path into the spec)."""
        if path and str(path[0]) in self.replace_fields:
            return Effect.REPLACE
        return Effect.UPDATE


RULES: Mapping[Kind, Rules] = MappingProxyType(
    {
        # A machine's root filesystem, environment, command and size are baked in
        # at boot: changing any of them means a new machine (fly.io does the same).
        Kind.MACHINE: Rules(
            Kind.MACHINE,
            replace_fields=frozenset(
                {"image", "env", "cmd", "entrypoint", "vm", "address", "app", "slot", "region"}
            ),
            drift=DriftPolicy.CORRECT,
        ),
        # An image is identified by its reference; there is nothing to update.
        Kind.IMAGE: Rules(Kind.IMAGE, replace_fields=frozenset({"ref"}), drift=DriftPolicy.IGNORE),
        # Proxy routes and BGP announcements are updated in place (runtime API,
        # `birdc configure`), never by restarting the daemon.
        Kind.ROUTE: Rules(Kind.ROUTE, replace_fields=frozenset(), drift=DriftPolicy.CORRECT),
        Kind.ANNOUNCEMENT: Rules(
            Kind.ANNOUNCEMENT, replace_fields=frozenset(), drift=DriftPolicy.CORRECT
        ),
        # Peers change by `wg set` diff, never by recreating the interface. The
        # agent's supervisor repairs peer drift itself; a plan only reports it.
        Kind.WIREGUARD: Rules(Kind.WIREGUARD, replace_fields=frozenset(), drift=DriftPolicy.WARN),
        # BIRD's config changes by `birdc configure`; live sessions are not config.
        Kind.BGP: Rules(Kind.BGP, replace_fields=frozenset(), drift=DriftPolicy.IGNORE),
    }
)


def rules(kind: Kind) -> Rules:
    return RULES[kind]
