"""The mechanisms the host agent drives: images, guest init, hypervisors, network, proxy.

Each provider also declares its resource's diff rules (which fields change in
place, which force replacement), so the reconciler can plan without knowing
how the mechanism works.
"""
