"""The edge proxy: routing tables into HAProxy, TLS, wake on request, fly-replay.

- :mod:`.table`: the routing table of one host (pure), built from the desired
  world and observed machines.
- :mod:`.diff`: two tables -> the minimal runtime-API ops, or why a reload is needed (pure).
- :mod:`.haproxy`: the table rendered into HAProxy's configuration and maps; ``haproxy -c``.
- :mod:`.runtime`: one persistent admin-socket session applying ops, with rollback.
- :mod:`.reload`: the master-worker HAProxy process and its seamless reload.
- :mod:`.proxy`: :class:`EdgeProxy`, what the host agent calls.
- :mod:`.waker`: the asyncio waker that starts a stopped machine on the first request.
- :mod:`.autostop`: which idle machines to stop (pure).
- :mod:`.certs`: the lab CA and per-app certificates.
- ``replay.lua``: fly-replay, run by HAProxy only when a response asks for it.
"""
