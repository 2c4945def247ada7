"""Pause Python's cyclic garbage collector around bulk work. I/O shell helper.

Loading a fleet and planning allocate millions of small objects (parsed JSON,
frozen specs) that form no reference cycles; the cyclic collector would scan
them again and again and takes about half of a large plan's time. The CLI
pauses it for the duration of one command; reference counting still frees
memory as usual.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
