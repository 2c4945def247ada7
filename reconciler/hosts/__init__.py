"""The seam between the reconciler and hosts: the HostClient protocol and its implementations.

``protocol`` defines the apply request, events and results (the observe answer
is :mod:`reconciler.core.observed`); ``memory`` is an in-process host for tests
and development; ``factory`` builds a HostClient per fleet Host document. The
SSH transport (a later issue) is one more implementation of the same protocol.
"""
