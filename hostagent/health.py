"""Health checks the agent runs against its machines: the App's http and tcp checks.

One function per check type, each bounded by the check's timeout; the
supervisor runs them on the check's interval after its grace period and
records the result, and a rollout's health gate asks them directly.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from typing import Any

Json = Any


def _family(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def tcp(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.socket(_family(address), socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((address, port))
        return True
    except OSError:
        return False


def http_ok(
    address: str,
    port: int,
    path: str,
    timeout: float,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> bool:
    host = f"[{address}]" if ":" in address else address
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Host": f"{host}:{port}", **(headers or {})})
        status = conn.getresponse().status
        return 200 <= status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def run_checks(address: str, checks: Sequence[Mapping[str, Json]]) -> bool:
    """All of a machine's checks pass (a machine without checks is healthy once it runs)."""
    for check in checks:
        timeout = float(check.get("timeout_s", 2.0))
        port = int(check["port"])
        if check.get("type", "http") == "tcp":
            ok = tcp(address, port, timeout)
        else:
            ok = http_ok(
                address,
                port,
                str(check.get("path", "/")),
                timeout,
                method=str(check.get("method", "GET")),
                headers=check.get("headers") or {},
            )
        if not ok:
            return False
    return True
