"""The desired-state model: fleet YAML documents to validated, frozen objects.

This layer does no I/O beyond reading the fleet's files (from a directory or a
Git tree); everything above it works on the frozen objects it produces.
"""

__version__ = "0.1.0"
