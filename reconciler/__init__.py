"""The reconciler: observe -> schedule -> diff -> plan -> apply, and the `reconcile` CLI.

Pure computation lives in ``reconciler.core``; I/O (SSH transport, state store,
apply) lives beside it and is the only place that changes the world.
"""
