"""The reconciler's own state: the apply lock, the apply journal, plan and apply history.

``base`` is the backend interface and ``open_state`` picks an implementation
from a URL: a SQLite path (the embedded default), or
``postgresql://`` (:mod:`reconciler.state.postgres`) for teams, behind the same interface.
"""
