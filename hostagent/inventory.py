"""The host's inventory on disk: every managed resource, its last-applied spec and etag.

The inventory is the host's memory of what the reconciler asked for, and the
ground truth `fleet-agent observe` reports. It must survive crashes of the
agent and of the machine, so every change is written atomically: the new
document goes to a temporary file, is fsynced, renamed over the old one, and
the directory is fsynced. A monotonic ``generation`` counts changes.

Writers (``fleet-agent apply``, the supervisor) serialise on an flock, so a
precondition check and the write that follows it are one atomic step: an
action whose expected etag no longer holds is refused, never half-applied.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
Json = Any


@dataclass(slots=True)
class Entry:
    """One resource as stored: mutable only inside a :meth:`Inventory.transaction`."""

    kind: str
    id: str
    etag: str
    spec: dict[str, Json]
    owner: str = "fleet"
    status: dict[str, Json] = field(default_factory=dict)

    def to_json(self) -> dict[str, Json]:
        return {
            "kind": self.kind,
            "id": self.id,
            "owner": self.owner,
            "etag": self.etag,
            "spec": self.spec,
            "status": self.status,
        }

    @staticmethod
    def from_json(raw: dict[str, Json]) -> Entry:
        return Entry(
            kind=raw["kind"],
            id=raw["id"],
            etag=raw["etag"],
            spec=raw.get("spec") or {},
            owner=raw.get("owner", "fleet"),
            status=raw.get("status") or {},
        )


@dataclass(slots=True)
class State:
    generation: int = 0
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    applied: dict[str, str] = field(default_factory=dict)  # action id -> outcome, recent first
    # The reconciler's inputs digest and the generation it was recorded at: void
    # once any change moves the generation on (see Inventory.record_inputs).
    inputs: str = ""
    inputs_generation: int = -1
    # The generation of the last change to what the digest vouches for (the resources'
    # kinds, ids, owners, etags and specs, or an action started): statuses aside.
    changed_at: int = 0
    voided: bool = False  # set in a transaction by an action about to change a resource

    def void_inputs(self) -> None:
        self.voided = True

    @property
    def inputs_digest(self) -> str:
        """The recorded inputs digest while nothing changed since; else ""."""
        return self.inputs if self.inputs_generation == self.generation else ""

    def get(self, kind: str, rid: str) -> Entry | None:
        return self.entries.get((kind, rid))

    def put(self, entry: Entry) -> None:
        self.entries[(entry.kind, entry.id)] = entry

    def remove(self, kind: str, rid: str) -> None:
        self.entries.pop((kind, rid), None)


MAX_REMEMBERED_ACTIONS = 10_000


class Inventory:
    """The inventory file under the agent's data directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "inventory.json"
        self.lock_path = self.directory / "inventory.lock"

    def read(self) -> State:
        """A consistent snapshot, without taking the write lock (writes are atomic renames)."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return State()
        state = State(generation=int(raw.get("generation", 0)))
        for item in raw.get("resources", []):
            entry = Entry.from_json(item)
            state.put(entry)
        state.applied = dict(raw.get("applied", {}))
        inputs = raw.get("inputs") or {}
        state.inputs = str(inputs.get("digest", ""))
        state.inputs_generation = int(inputs.get("generation", -1))
        state.changed_at = int(inputs.get("changed_at", state.generation))
        return state

    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """Lock, read, let the caller change the state, and write it back if it changed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.read()
                before, identity = self._serialise(state), self._identity(state)
                kept = state.inputs_digest  # "" if none
                yield state
                if self._serialise(state) != before or state.voided:
                    # A status-only change (the supervisor's health, autostop) keeps the
                    # digest: plans check statuses themselves. Anything else voids it.
                    changed = state.voided or self._identity(state) != identity
                    state.generation += 1
                    if changed:
                        state.changed_at = state.generation
                    state.inputs, state.inputs_generation = (
                        (kept, state.generation) if kept and not changed else ("", -1)
                    )
                    self._write(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def record_inputs(self, digest: str, generation: int) -> bool:
        """Keep the reconciler's inputs digest if no resource changed after ``generation``.

        ``generation`` is the one the reconciler last saw (its apply's last
        answer, or its observe): a change to a resource made since by anything
        else leaves the digest unrecorded, and any later one voids it. Status
        updates (health, autostop) in between do not count.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.read()
                if state.changed_at > generation or generation > state.generation:
                    return False
                state.inputs, state.inputs_generation = digest, state.generation
                self._write(state)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _identity(state: State) -> list[tuple[str, str, str, str, str]]:
        """What the inputs digest vouches for: each resource's kind, id, owner, etag, spec."""
        return [
            (e.kind, e.id, e.owner, e.etag, json.dumps(e.spec, sort_keys=True))
            for _, e in sorted(state.entries.items())
        ]

    @staticmethod
    def _serialise(state: State) -> str:
        return json.dumps(
            {
                "resources": [e.to_json() for _, e in sorted(state.entries.items())],
                "applied": state.applied,
            },
            sort_keys=True,
        )

    def _write(self, state: State) -> None:
        applied = dict(list(state.applied.items())[-MAX_REMEMBERED_ACTIONS:])
        document = {
            "format_version": FORMAT_VERSION,
            "generation": state.generation,
            "resources": [e.to_json() for _, e in sorted(state.entries.items())],
            "applied": applied,
            "inputs": {
                "digest": state.inputs,
                "generation": state.inputs_generation,
                "changed_at": state.changed_at,
            },
        }
        fd, tmp = tempfile.mkstemp(prefix=".inventory.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(document, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
