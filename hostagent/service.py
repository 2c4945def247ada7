"""Wiring for `fleet-agent observe|apply|serve`: the agent assembled from its parts.

Reads the agent's config (written by bootstrap), opens the inventory and the
machine manager in the data directory, and hands them to the protocol
(:mod:`hostagent.wire`) or the supervisor (:mod:`hostagent.supervisor`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import hostagent
from hostagent import (
    announcer,
    autostop,
    bird,
    channel,
    edge,
    images,
    listener,
    machines,
    mesh,
    supervisor,
    wake,
    wire,
)
from hostagent import config as config_mod
from hostagent import handlers as H
from hostagent.agent import Agent, Facts
from hostagent.edgehealth import EdgeHealth, LocalMachines
from hostagent.inventory import Inventory
from providers.images import store
from providers.network import announce, bgp
from providers.vmm import machines as vmm_machines
from providers.vmm.spec import VMMKind


def network_handlers(
    cfg: config_mod.Config, inventory: Inventory, edge: EdgeHealth
) -> tuple[mesh.Mesh, bird.BirdDaemon, announcer.Announcer]:
    """The mesh, BIRD and the announcer of this host; each is also a supervisor ticker."""
    timers = bgp.LAB_TIMERS if cfg.bgp_timers == "lab" else bgp.BgpTimers()
    wg = mesh.Mesh(cfg.data_dir, cfg.host, inventory)
    daemon = bird.BirdDaemon(cfg.data_dir, cfg.host, timers, inventory)
    ann = announcer.Announcer(
        cfg.data_dir,
        inventory,
        edge,
        daemon,
        announce.AnnounceTimers(cfg.announce_grace_s, cfg.announce_hold_down_s),
    )
    return wg, daemon, ann


def build_agent(data_dir: Path) -> Agent:
    cfg = config_mod.load(data_dir)
    inventory = Inventory(cfg.inventory_dir)
    defaults = store.StoreOptions()
    options = store.StoreOptions(
        registry_insecure=(*defaults.registry_insecure, *cfg.insecure_registries)
    )
    image_store = store.ImageStore(data_dir, options)
    manager = vmm_machines.MachineManager(data_dir, images=image_store)
    handler = machines.MachineHandler(
        manager, VMMKind(cfg.hypervisor), simulate_gpus=cfg.simulate_gpus
    )
    routes = route_handler(cfg, inventory, handler)
    # The announcement gate asks the edge proxy (HAProxy's health checks).
    wg, daemon, ann = network_handlers(cfg, inventory, edge.HAProxyHealth(routes.edge))
    facts = Facts(
        host=cfg.host,
        cpus=os.cpu_count() or 1,
        memory_mb=config_mod.memory_mb(),
        gpus=cfg.gpus,
        hypervisor=cfg.hypervisor,
        agent_version=hostagent.__version__,
        private_prefix=cfg.private_prefix,
    )
    kinds: dict[str, H.Handler] = {
        "machine": handler,
        "image": images.ImageHandler(image_store, data_dir),
        edge.KIND: routes,
        wg.kind: wg,
        daemon.kind: daemon,
        ann.kind: ann,
    }
    # The public half of the host's WireGuard key, generated on first use (so the
    # reconciler knows it before its first plan); read anew at every observe.
    return Agent(
        inventory, kinds, facts, live_facts=lambda: {"wireguard_public_key": wg.public_key()}
    )


def route_handler(
    cfg: config_mod.Config, inventory: Inventory, machine_kind: H.Handler
) -> edge.RouteHandler:
    """The ``route`` kind: the host's HAProxy, its state under the agent's data directory."""

    def machines() -> Iterator[tuple[str, str, H.Observed]]:
        for (kind, rid), entry in inventory.read().entries.items():
            if kind == "machine":
                app = str(entry.spec.get("app", ""))
                yield app, rid.partition("@")[0], machine_kind.observe(rid, entry.spec)

    def stopped_apps() -> frozenset[str]:
        return frozenset(app for app, _, live in machines() if live.state == "stopped")

    def stopped_machines() -> frozenset[str]:
        """Slots with a stopped machine and none running (a replacement shares the slot)."""
        states: dict[str, set[str | None]] = {}
        for _, slot, live in machines():
            states.setdefault(slot, set()).add(live.state)
        running = {"starting", "running"}
        return frozenset(slot for slot, s in states.items() if "stopped" in s and not s & running)

    def started_apps() -> dict[str, float]:
        out: dict[str, float] = {}
        for app, _, live in machines():
            at = live.runtime.get("started_at")
            if live.state in ("starting", "running") and at is not None:
                out[app] = max(out.get(app, -math.inf), float(at))
        return out

    paths = edge.EdgePaths.of(cfg.data_dir)
    return edge.RouteHandler(
        edge.Edge(paths, cfg.host), stopped_apps, started_apps, stopped_machines
    )


def autostop_ticker(
    cfg: config_mod.Config,
    routes: edge.RouteHandler,
    inventory: Inventory,
    machine_kind: H.Handler,
    waking: wake.WakeService,
) -> supervisor.Ticker:
    """Stops idle machines of auto-stop apps; shares the waker's lock (a wake waits for a stop)."""
    return autostop.AutoStopper(
        routes, inventory, machine_kind, waking.lock, idle_after_s=cfg.autostop_idle_s
    )


def edge_health(agent: Agent) -> EdgeHealth:
    """What the announcement gate asks: HAProxy's view, or local machines without routes."""
    routes = agent.handlers.get(edge.KIND)
    if isinstance(routes, edge.RouteHandler):
        return edge.HAProxyHealth(routes.edge)
    return LocalMachines(agent.inventory)


def request(data_dir: Path, verb: str) -> int:
    return wire.serve_request(lambda: build_agent(data_dir), verb)


def request_channel(data_dir: Path) -> channel.Channel | None:
    """``apply`` requests forwarded by the relay, answered by forks of this loaded agent.

    Must run before ``serve`` starts a thread (see :mod:`hostagent.channel`).
    """

    def warm() -> None:
        routes = build_agent(data_dir).handlers.get(edge.KIND)
        if isinstance(routes, edge.RouteHandler):
            routes.edge.warm()  # a one-route change then costs no template compile

    return channel.start(data_dir, lambda: build_agent(data_dir), warm)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        try:
            body = json.loads(message)
            if not isinstance(body, dict):
                body = {"message": message}
        except ValueError:
            body = {"message": message}
        return json.dumps(
            {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                **body,
            }
        )


def serve(
    data_dir: Path,
    *,
    log_format: str = "text",
    interval: float = 1.0,
    observe_port: int | None = None,
) -> int:
    """Supervise until SIGTERM/SIGINT; answer observe on the loopback port meanwhile.

    ``observe_port`` overrides the config's (``0``: no port).
    """
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    cfg = config_mod.load(data_dir)
    agent = build_agent(data_dir)
    requests = request_channel(data_dir)  # before any thread starts: it forks
    machine_kind = agent.handlers["machine"]
    inventory = Inventory(cfg.inventory_dir)
    # The supervisor's own network handlers (their tickers keep state between passes).
    wg, daemon, ann = network_handlers(cfg, inventory, edge_health(agent))
    tickers: list[supervisor.Ticker] = [wg.tick, daemon.tick, ann.tick]
    routes = agent.handlers.get(edge.KIND)
    waking: wake.WakeService | None = None
    if isinstance(routes, edge.RouteHandler):
        waking = wake.WakeService(routes.edge, inventory, machine_kind)
        # before the edge's ticker: a stop it makes shows in the same pass's table
        tickers.append(autostop_ticker(cfg, routes, inventory, machine_kind, waking))
        tickers.append(edge.Ticker(routes))
        waking.start()
        tickers.append(waking.tick)
    sup = supervisor.Supervisor(inventory, machine_kind, tickers=tickers)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port = cfg.observe_port if observe_port is None else observe_port
    observer = listener.start(agent, address=listener.DEFAULT_ADDRESS, port=port) if port else None
    try:
        sup.run(stop, interval)
    finally:
        if requests is not None:
            requests.close()
        if observer is not None:
            observer.close()
        if waking is not None:
            waking.close()
    return 0
