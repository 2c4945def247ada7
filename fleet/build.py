"""Schema-valid documents to frozen model objects, with fly.toml-compatible defaults.

Only called on documents that passed :func:`fleet.schema.validate`, so shapes
and types are known here; this is where defaults are applied and units are
normalised (durations to seconds, memory to MiB, addresses to ``ipaddress``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from fleet import model
from fleet.model import Kind

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MEMORY = re.compile(r"([0-9]+) ?([mMgG])[iI]?[bB]$")


def seconds(value: str | float) -> float:
    """``15`` / ``"15s"`` / ``"1m30s"`` / ``"500ms"`` to seconds."""
    if isinstance(value, int | float):
        return float(value)
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(value))


def mebibytes(value: str | int) -> int:
    """``256`` / ``"256mb"`` / ``"2gb"`` to MiB (fly.toml counts mb as MiB)."""
    if isinstance(value, int):
        return value
    match = _MEMORY.match(value)
    assert match is not None, value
    number, unit = int(match.group(1)), match.group(2).lower()
    return number * 1024 if unit == "g" else number


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, str]:
    return MappingProxyType({k: _text(v) for k, v in (mapping or {}).items()})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def network(name: str, spec: Mapping[str, Any], source: model.Source) -> model.Network:
    default = model.DEFAULT_NETWORK
    return model.Network(
        name=name,
        private_prefix=ipaddress.IPv6Network(
            spec.get("private_prefix", str(default.private_prefix)), strict=False
        ),
        anycast_pools=tuple(
            ipaddress.ip_network(p, strict=False) for p in spec.get("anycast_pools", [])
        ),
        wireguard_port=spec.get("wireguard_port", default.wireguard_port),
        asn=spec.get("asn", default.asn),
        shared_cpu_overcommit=float(
            spec.get("shared_cpu_overcommit", default.shared_cpu_overcommit)
        ),
        source=source,
    )


def region(name: str, spec: Mapping[str, Any], source: model.Source) -> model.Region:
    peers = tuple(
        model.UpstreamPeer(
            address=ipaddress.ip_address(p["address"]),
            asn=p["asn"],
            name=p.get("name", f"upstream{i + 1}"),
        )
        for i, p in enumerate(spec.get("upstream_peers", []))
    )
    return model.Region(
        name=name,
        jurisdiction=spec["jurisdiction"],
        asn=spec.get("asn"),
        upstream_peers=peers,
        latency_ms=MappingProxyType(dict(spec.get("latency_ms", {}))),
        source=source,
    )


def _gpus(raw: Mapping[str, Any]) -> model.Gpus:
    return model.Gpus(model=raw["model"], count=raw["count"])


def host(
    name: str, meta: Mapping[str, Any], spec: Mapping[str, Any], source: model.Source
) -> model.Host:
    ssh = spec["ssh"]
    cap = spec["capacity"]
    pinned = spec.get("private_prefix")
    return model.Host(
        name=name,
        region=spec["region"],
        ssh=model.SSHTarget(
            address=ssh["address"],
            port=ssh.get("port", 22),
            user=ssh.get("user", "root"),
            host_key=ssh.get("host_key"),
        ),
        capacity=model.Capacity(
            cpus=cap["cpus"],
            memory_mb=mebibytes(cap["memory"]),
            gpus=tuple(_gpus(g) for g in cap.get("gpus", [])),
        ),
        hypervisor=model.Hypervisor(spec.get("hypervisor", "qemu")),
        labels=_frozen(meta.get("labels")),
        cordoned=spec.get("cordoned", False),
        wireguard_endpoint=spec.get("wireguard", {}).get("endpoint"),
        private_prefix=ipaddress.IPv6Network(pinned, strict=False) if pinned else None,
        source=source,
        edge=spec.get("edge"),
    )


def _service(raw: Mapping[str, Any]) -> model.Service:
    conc = raw.get("concurrency", {})
    auto_stop = raw.get("auto_stop_machines", "off")
    if isinstance(auto_stop, bool):
        auto_stop = "stop" if auto_stop else "off"
    return model.Service(
        internal_port=raw["internal_port"],
        protocol=model.Protocol(raw.get("protocol", "tcp")),
        ports=tuple(
            model.Port(
                port=p["port"],
                handlers=tuple(model.Handler(h) for h in p.get("handlers", [])),
                force_https=p.get("force_https", False),
            )
            for p in raw.get("ports", [])
        ),
        concurrency=model.Concurrency(
            type=model.ConcurrencyType(conc.get("type", "connections")),
            soft_limit=conc.get("soft_limit", 20),
            hard_limit=conc.get("hard_limit", 25),
        ),
        auto_stop_machines=model.AutoStop(auto_stop),
        auto_start_machines=raw.get("auto_start_machines", True),
        fly_replay=raw.get("fly_replay", True),
        min_machines_running=raw.get("min_machines_running", 0),
        auto_stop_after_s=None if (after := raw.get("auto_stop_after")) is None else seconds(after),
    )


def _check(name: str, raw: Mapping[str, Any]) -> model.Check:
    return model.Check(
        name=name,
        type=model.CheckType(raw.get("type", "http")),
        port=raw["port"],
        path=raw.get("path", "/"),
        method=raw.get("method", "GET").upper(),
        interval_s=seconds(raw.get("interval", "15s")),
        timeout_s=seconds(raw.get("timeout", "2s")),
        grace_period_s=seconds(raw.get("grace_period", "1s")),
        headers=_frozen(raw.get("headers")),
    )


def app(name: str, spec: Mapping[str, Any], source: model.Source) -> model.App:
    vm = spec.get("vm", {})
    deploy = spec.get("deploy", {})
    restart = spec.get("restart", {})
    placement = spec.get("placement", {})
    anycast = spec.get("anycast", {})
    cmd = spec.get("cmd")
    entrypoint = spec.get("entrypoint")
    return model.App(
        name=name,
        image=spec["image"],
        regions=MappingProxyType(dict(spec["regions"])),
        vm=model.VMSize(
            cpus=vm.get("cpus", 1),
            memory_mb=mebibytes(vm.get("memory", 256)),
            cpu_kind=model.CpuKind(vm.get("cpu_kind", "shared")),
            gpus=_gpus(vm["gpus"]) if "gpus" in vm else None,
        ),
        env=_frozen(spec.get("env")),
        cmd=tuple(cmd) if cmd is not None else None,
        entrypoint=tuple(entrypoint) if entrypoint is not None else None,
        services=tuple(_service(s) for s in spec.get("services", [])),
        checks=tuple(_check(n, c) for n, c in sorted(spec.get("checks", {}).items())),
        deploy=model.Deploy(
            strategy=model.Strategy(deploy.get("strategy", "rolling")),
            max_unavailable=float(deploy.get("max_unavailable", 0.33)),
            max_surge=deploy.get("max_surge", 1),
            wait_timeout_s=seconds(deploy.get("wait_timeout", "5m")),
            min_healthy_s=seconds(deploy.get("min_healthy_time", 0)),
            canary_count=deploy.get("canary_count", 1),
            auto_revert=deploy.get("auto_revert", True),
        ),
        kill_signal=spec.get("kill_signal", "SIGINT"),
        kill_timeout_s=seconds(spec.get("kill_timeout", 5)),
        restart=model.Restart(
            policy=model.RestartPolicy(restart.get("policy", "on-failure")),
            max_retries=restart.get("max_retries", 10),
        ),
        placement=model.Placement(
            jurisdiction=placement.get("jurisdiction"),
            host_labels=_frozen(placement.get("host_labels")),
        ),
        anycast=model.AnycastRequest(
            ipv4=anycast.get("ipv4", "auto"), ipv6=anycast.get("ipv6", "auto")
        ),
        source=source,
    )


def build(kind: Kind, value: Mapping[str, Any], source: model.Source) -> object:
    """One schema-valid document to its model object."""
    meta = value["metadata"]
    name = meta["name"]
    spec = value.get("spec") or {}
    if kind is Kind.NETWORK:
        return network(name, spec, source)
    if kind is Kind.REGION:
        return region(name, spec, source)
    if kind is Kind.HOST:
        return host(name, meta, spec, source)
    return app(name, spec, source)
