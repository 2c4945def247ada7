"""The pure core of the reconciler: observed-state model, schedule, diff, plan, render.

Nothing in this package does I/O: every function takes frozen values and
returns frozen values, so a plan computed here is the same wherever it runs.
"""
