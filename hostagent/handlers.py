"""What the agent needs from each kind of resource it manages.

The agent's apply logic (preconditions, idempotency, the inventory) is the
same for every kind; what differs is how a resource is made real. A
:class:`Handler` does that for one kind: machines boot microVMs, images are
pulled and built, and later WireGuard peers, BGP announcements and proxy
routes plug in the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Json = Any
Emit = Callable[[str, str], None]  # (event type, message)


@dataclass(frozen=True, slots=True)
class Observed:
    """A resource's live state: run state, health, runtime-only details, read-back config."""

    state: str | None = None
    health: str = "unknown"
    runtime: Mapping[str, Json] = field(default_factory=dict)
    actual: Mapping[str, Json] | None = None


class Handler(Protocol):
    kind: str

    def create(self, rid: str, spec: Mapping[str, Json], emit: Emit) -> None:
        """Make the resource exist as ``spec`` says (idempotent: it may exist half-made)."""
        ...

    def update(
        self, rid: str, old: Mapping[str, Json], spec: Mapping[str, Json], emit: Emit
    ) -> None:
        """Change an existing resource in place."""
        ...

    def delete(self, rid: str, spec: Mapping[str, Json], emit: Emit) -> None:
        """Make the resource not exist (idempotent: it may already be gone)."""
        ...

    def start(self, rid: str, spec: Mapping[str, Json], emit: Emit) -> None:
        """Bring a stopped or failed resource back to running."""
        ...

    def observe(self, rid: str, spec: Mapping[str, Json]) -> Observed:
        """The live state of one managed resource."""
        ...

    def healthy(self, rid: str, spec: Mapping[str, Json]) -> bool:
        """Whether the resource passes its health checks right now."""
        ...

    def unmanaged(self) -> list[tuple[str, Observed]]:
        """Resources of this kind on the host that the fleet does not own."""
        ...
