"""The seam between the reconciler and hosts: the HostClient protocol and its implementations.

``protocol`` defines the apply request, events and results (the observe answer
is :mod:`reconciler.core.observed`); ``memory`` is an in-process host for tests
and development; ``factory`` builds a HostClient per fleet Host document.
``ssh`` is the SSH transport (the only module that imports paramiko), with
``hostkeys`` (pinning) and ``fanout`` (bounded parallelism); ``bundle`` and
``bootstrap`` put the agent on a host.
"""
