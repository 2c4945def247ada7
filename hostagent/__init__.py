"""`fleet-agent`, the program on every host: observe, apply actions, supervise machines.

It never imports the reconciler; the two meet only through the JSON protocol.
"""

__version__ = "0.1.0"
