"""Reading what the guest init reports on the serial console (pure).

The init writes ``FLEET:<nonce>:<event> t=<guest uptime ms> key=value ...``
lines; the nonce is per boot, so an app printing look-alike lines cannot forge
its own exit status. This module turns a console log into :class:`BootReport`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

_LINE_RE = re.compile(r"FLEET:([0-9a-f]+):([a-z]+) (.*)")


@dataclass(frozen=True, slots=True)
class Event:
    """One report line."""

    name: str
    fields: tuple[tuple[str, str], ...]

    def get(self, key: str, default: str = "") -> str:
        return dict(self.fields).get(key, default)

    def int(self, key: str) -> int | None:
        value = self.get(key)
        return int(value) if value.lstrip("-").isdigit() else None


@dataclass(frozen=True, slots=True)
class BootReport:
    """What one boot said: its events in order, and the facts drawn from them."""

    events: tuple[Event, ...]

    def first(self, name: str) -> Event | None:
        return next((e for e in self.events if e.name == name), None)

    @property
    def started(self) -> bool:
        return self.first("start") is not None

    @property
    def exit(self) -> Event | None:
        return self.first("exit")

    @property
    def stop(self) -> Event | None:
        return self.first("stop")

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(e.get("msg") for e in self.events if e.name == "error")

    def at(self, name: str) -> int | None:
        """Guest uptime (ms) of the first ``name`` event."""
        event = self.first(name)
        return event.int("t") if event else None


def parse(text: str, nonce: str) -> BootReport:
    """The report lines of boot ``nonce`` in a console log."""
    events = []
    for match in _LINE_RE.finditer(text):
        if match.group(1) != nonce:
            continue
        try:
            words = shlex.split(match.group(3))
        except ValueError:
            words = match.group(3).split()
        fields = tuple((k, v) for k, _, v in (w.partition("=") for w in words))
        events.append(Event(match.group(2), fields))
    return BootReport(tuple(events))
