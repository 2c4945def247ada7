"""Keeping optional imports of third-party libraries out of our start-up.

Some libraries import others only to support features we never use (paramiko
imports ``invoke`` for ``Match exec`` in ssh_config files; deepdiff imports
``pydantic``, when it is installed, to compare pydantic models). Those imports
are most of the library's import time, paid by every ``reconcile`` command
that needs it. :func:`unimportable` makes such a module fail to import while
the library loads; the library then records it as absent, as it does where it
is not installed, and other code can still import it afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def unimportable(*names: str) -> Iterator[None]:
    """Within the block, ``import NAME`` fails (unless it is already imported)."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not importable"
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
