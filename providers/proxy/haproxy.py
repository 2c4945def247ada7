"""Render a routing table into an HAProxy configuration, and validate it with HAProxy itself.

The configuration is the table written out in full (every route, every
server), so a reload or a restart always comes back to the table the runtime
API last brought HAProxy to. HTTP listeners are grouped into one frontend per
(port, TLS) and owning app (the first route listening on an address). An
address only one app listens on goes to that app, whatever the Host; where
apps share an address and port, the frontend picks the backend by Host header
(a map), falling back to the owner. Services without handlers are raw TCP,
one frontend each.

Only :func:`validate` runs a program (``haproxy -c``); :func:`render` is pure.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jinja2

from fleet.errors import ProviderError
from providers.proxy import diff, spill
from providers.proxy import table as t

HAPROXY = "haproxy"
MAXREWRITE = 1024
HEADER_ROOM = 4096


@dataclass(frozen=True, slots=True)
class Options:
    """Where the proxy keeps its files on this host, and its timeouts and limits."""

    state_dir: Path
    certs_dir: Path | None = None
    hard_stop_after_s: int = 30
    connect_timeout_s: float = 3.0
    server_timeout_s: float = 60.0  # at least the waker's start timeout
    queue_timeout_s: float = 5.0  # a request queued behind hard_limit gets 503 after this
    # Replayable bodies are held whole in HAProxy's buffers; above 16 KiB buffers cost
    # throughput on every request (measured: 82 KiB buffers, -35% rps), so the default
    # cap keeps HAProxy's default 16 KiB buffer. Raise it knowingly.
    replay_body_cap: int = 8 * 1024
    replay_timeout_s: float = 10.0
    nbthread: int | None = None  # None: one thread per CPU (HAProxy's default)

    @property
    def admin_socket(self) -> Path:
        return self.state_dir / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.state_dir / "master.sock"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "haproxy.cfg"

    @property
    def maps_dir(self) -> Path:
        return self.state_dir / "maps"

    @property
    def replay_map(self) -> Path:
        return self.maps_dir / diff.REPLAY_MAP

    @property
    def replay_lua(self) -> Path:
        return Path(str(importlib.resources.files("providers.proxy") / "replay.lua"))

    @property
    def bufsize(self) -> int:
        """Buffers hold a whole replayable request: body cap, some headers and rewrite room.

        Bigger headers only lower the body size that can be replayed; truncation
        is still detected (Content-Length, or the buffer filling up when chunked).
        """
        return max(16384, self.replay_body_cap + HEADER_ROOM + MAXREWRITE)

    @property
    def replay_room(self) -> int:
        """Bytes of headers plus body a buffered request can hold without being cut."""
        return self.bufsize - MAXREWRITE


@dataclass(frozen=True, slots=True)
class HttpFrontend:
    """The HTTP addresses of one port (and TLS) that one app owns: to it, or by Host if shared.

    One frontend per owner rather than per port lets an address decide the
    app with no work per request (the fleet gives each app addresses of its
    own: ``validate`` refuses two apps on one address and port). Routing by
    Host costs ~2.4k instructions per request (header, ``lower``, map lookup,
    a backend found by name: ~9% of HAProxy's user-space work on loopback),
    so only a frontend whose addresses other apps share has the lookup, and
    its default is the owner (a per-port frontend needed a second lookup by
    destination address on top, ~1.7k more).
    """

    name: str
    port: int
    tls: bool
    binds: tuple[str, ...]
    owner: str  # the backend of the first route listening on these addresses
    hosts_map: Path | None  # Host -> backend of the apps sharing these addresses; None: alone
    spill: str | None = None  # the owner's spill backend, if it spills and owns these alone
    # some route on these addresses replays: HAProxy keeps each request line (see the template)
    replay: bool = False


def bind(listener: t.Listener) -> str:
    if ipaddress.ip_address(listener.address).version == 6:
        return f"[{listener.address}]:{listener.port}"
    return f"{listener.address}:{listener.port}"


def force_https_ports(route: t.Route) -> list[int]:
    return sorted({lst.port for lst in route.listeners if lst.force_https and not lst.tls})


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("providers.proxy", "templates"),
        autoescape=False,  # noqa: S701 - HAProxy configuration, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.globals.update(
        bind=bind,
        endpoint=diff.endpoint,
        force_https_ports=force_https_ports,
        check=diff.CHECK,
        spill_check=diff.SPILL_CHECK,
        spills=spill.active,
        spill_backend=spill.backend,
        main_servers=spill.main_servers,
        spill_servers=spill.spill_servers,
    )
    return env


_ENV = _environment()


def http_frontends(table: t.RoutingTable, options: Options) -> list[HttpFrontend]:
    routes_at: dict[tuple[int, bool], dict[str, list[t.Route]]] = {}
    spilling = {r.name for r in table.routes if spill.active(r)}
    for route in table.routes:
        if route.mode is not t.Mode.HTTP:
            continue
        for lst in route.listeners:
            at = routes_at.setdefault((lst.port, lst.tls), {}).setdefault(bind(lst), [])
            if all(r.name != route.name for r in at):
                at.append(route)
    out = []
    for (port, tls), by_bind in sorted(routes_at.items()):
        port_name = f"fe_http_{port}" + ("_tls" if tls else "")
        groups: dict[str, list[str]] = {}
        shared: set[str] = set()
        replays: set[str] = set()
        for address, routes in by_bind.items():
            groups.setdefault(routes[0].name, []).append(address)
            if len(routes) > 1:
                shared.add(routes[0].name)
            if any(r.replay for r in routes):
                replays.add(routes[0].name)
        for owner, binds in groups.items():
            name = f"{port_name}_{owner.removeprefix('be_')}"
            hosts_map = options.maps_dir / f"{name}.hosts" if owner in shared else None
            # where apps share addresses the backend is a map lookup: no spill there
            spills = owner in spilling and hosts_map is None
            out.append(
                HttpFrontend(
                    name,
                    port,
                    tls,
                    tuple(binds),
                    owner,
                    hosts_map,
                    spill.backend(owner) if spills else None,
                    owner in replays,
                )
            )
    return out


def host_map(table: t.RoutingTable, frontend: HttpFrontend) -> dict[str, str]:
    """Host -> backend of the HTTP routes listening on the frontend's addresses (first wins)."""
    out: dict[str, str] = {}
    for r in table.routes:
        if r.mode is t.Mode.HTTP and any(
            lst.port == frontend.port and lst.tls == frontend.tls and bind(lst) in frontend.binds
            for lst in r.listeners
        ):
            for h in r.hostnames:
                out.setdefault(h, r.name)
    return out


def render(table: t.RoutingTable, options: Options) -> dict[Path, str]:
    """Every file HAProxy reads for ``table``: the configuration and its maps."""
    frontends = http_frontends(table, options)
    http_routes = [r for r in table.routes if r.mode is t.Mode.HTTP]
    files: dict[Path, str] = {}
    for fe in frontends:
        if fe.hosts_map is not None:
            hosts = host_map(table, fe)
            files[fe.hosts_map] = "".join(f"{h} {backend}\n" for h, backend in hosts.items())
    entries = diff.replay_entries(table)
    files[options.replay_map] = "".join(f"{k} {v}\n" for k, v in entries.items())
    tcp_routes = [r for r in table.routes if r.mode is t.Mode.TCP]
    if any(lst.tls for r in table.routes for lst in r.listeners) and options.certs_dir is None:
        raise ProviderError("proxy: a route terminates TLS but no certificate directory is set")
    template = _ENV.get_template("haproxy.cfg.j2")
    files[options.config_path] = template.render(
        table=table,
        o=options,
        http_frontends=frontends,
        replay_routes=[r for r in http_routes if r.replay],
        replay_frontends=any(fe.replay for fe in frontends),
        tcp_routes=tcp_routes,
    )
    return files


def write(files: dict[Path, str], suffix: str = "") -> None:
    """Write files atomically (rename), optionally to ``name + suffix`` for a trial."""
    for path, text in files.items():
        target = path.with_name(path.name + suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(target)


def validate(config: Path) -> None:
    """Ask HAProxy whether it accepts ``config``; raise with its first alert if not."""
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr + result.stdout).splitlines() if ln.strip()]
        alerts = [ln for ln in lines if "ALERT" in ln] or lines or ["no output"]
        raise ProviderError(f"proxy: HAProxy refused the configuration: {alerts[0]}")
