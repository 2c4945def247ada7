"""The host's network mechanisms: the private WireGuard mesh and BGP anycast (BIRD 2).

Each concern is a pure core (addressing, peer sets and their diff, key
rotation stages, BIRD config rendering, announcement state, output parsers)
and a thin I/O shell (:mod:`providers.network.wgdriver`,
:mod:`providers.network.birdctl`) that runs commands and hands their output to
the parsers. See ``docs/network.md``.
"""
