"""The reconciler's own state: the apply lock, the apply journal, plan and apply history.

``base`` is the backend interface and ``open_state`` picks an implementation
from a URL: a SQLite path (the embedded default) today; ``postgresql://``
plugs in later behind the same interface.
"""
