"""The agent's own settings on a host: who it is and where it keeps its data.

``reconcile hosts bootstrap`` writes ``agent.json`` into the data directory
(``/var/lib/fleet-agent`` unless ``FLEET_AGENT_DATA`` says otherwise): the
host's name as the fleet knows it, its private prefix, hypervisor and GPUs.
Facts the machine itself can tell (cpus, memory) are read live.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hostagent
from fleet.errors import FleetError

DEFAULT_DIR = Path(os.environ.get("FLEET_AGENT_DATA", "/var/lib/fleet-agent"))
CONFIG_FILE = "agent.json"
# The supervisor's loopback observe port (hostagent/listener.py); 0 turns it off.
OBSERVE_PORT = 7930


@dataclass(frozen=True, slots=True)
class Config:
    host: str
    data_dir: Path
    hypervisor: str = "qemu"
    private_prefix: str | None = None
    gpus: dict[str, int] = field(default_factory=dict)
    insecure_registries: tuple[str, ...] = ()
    # Labs and tests only: boot GPU machines without a GPU instead of refusing them.
    simulate_gpus: bool = False
    observe_port: int = OBSERVE_PORT
    # Announcements (hostagent/announcer.py): the graceful-shutdown period before a
    # planned withdraw and the hold-down before (re-)announcing; BGP session timers
    # "default" (BIRD's) or "lab" (seconds, for labs and tests).
    announce_grace_s: float = 30.0
    announce_hold_down_s: float = 10.0
    bgp_timers: str = "default"
    # Autostop (hostagent/autostop.py): how long a machine of an auto-stop app must
    # have had no request before it stops. fly.toml has no such field (Fly's proxy
    # decides); here it is the host's, one value for every app on it.
    autostop_idle_s: float = 300.0

    @property
    def inventory_dir(self) -> Path:
        return self.data_dir / "inventory"


class ConfigError(FleetError):
    """The agent has not been bootstrapped on this host, or its config is broken."""


def load(data_dir: Path = DEFAULT_DIR) -> Config:
    path = data_dir / CONFIG_FILE
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: this host was not bootstrapped (`reconcile hosts bootstrap`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(raw.get("host"), str):
        raise ConfigError(f"{path}: 'host' must name this host")
    return Config(
        host=raw["host"],
        data_dir=data_dir,
        hypervisor=str(raw.get("hypervisor", "qemu")),
        private_prefix=raw.get("private_prefix"),
        gpus={str(k): int(v) for k, v in (raw.get("gpus") or {}).items()},
        insecure_registries=tuple(str(h) for h in raw.get("insecure_registries") or ()),
        simulate_gpus=bool(raw.get("simulate_gpus", False)),
        observe_port=_port(path, raw.get("observe_port", OBSERVE_PORT)),
        announce_grace_s=_seconds(path, raw, "announce_grace_s", 30.0),
        announce_hold_down_s=_seconds(path, raw, "announce_hold_down_s", 10.0),
        bgp_timers=_choice(path, raw, "bgp_timers", ("default", "lab")),
        autostop_idle_s=_seconds(path, raw, "autostop_idle_s", 300.0),
    )


def _seconds(path: Path, raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{path}: {key!r} must be a number of seconds >= 0")
    return float(value)


def _choice(path: Path, raw: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = raw.get(key, choices[0])
    if value not in choices:
        raise ConfigError(f"{path}: {key!r} must be one of {', '.join(choices)}")
    return str(value)


def _port(path: Path, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{path}: 'observe_port' must be a TCP port, or 0 for none")
    return value


def save(config: Config) -> Path:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    path = config.data_dir / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "host": config.host,
                "hypervisor": config.hypervisor,
                "private_prefix": config.private_prefix,
                "gpus": config.gpus,
                "insecure_registries": list(config.insecure_registries),
                "simulate_gpus": config.simulate_gpus,
                "observe_port": config.observe_port,
                "announce_grace_s": config.announce_grace_s,
                "announce_hold_down_s": config.announce_hold_down_s,
                "bgp_timers": config.bgp_timers,
                "autostop_idle_s": config.autostop_idle_s,
                "agent_version": hostagent.__version__,
            },
            indent=2,
        )
    )
    os.replace(tmp, path)
    return path


def memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0
