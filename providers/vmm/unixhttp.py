"""HTTP/1.1 over a unix socket: how Firecracker and Cloud Hypervisor are driven.

A small :class:`http.client.HTTPConnection` whose socket is a unix socket;
paths of any length work (the connection goes through ``/proc/self/fd``).
Errors become :class:`VMMError` with the API's own message.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any

from fleet.errors import VMMError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        fd = os.open(self.unix_path.parent, os.O_PATH | os.O_DIRECTORY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(f"/proc/self/fd/{fd}/{self.unix_path.name}")
        except OSError:
            sock.close()
            raise
        finally:
            os.close(fd)
        self.sock = sock


def request(
    sock_path: Path, method: str, path: str, body: Any = None, *, timeout: float = 10.0
) -> Any:
    """One API call; returns the decoded JSON answer (or None for an empty one)."""
    conn = _UnixConnection(sock_path, timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as exc:
        raise VMMError(f"{method} {path} on {sock_path}: {exc}") from exc
    finally:
        conn.close()
    if resp.status >= 300:
        text = data.decode(errors="replace").strip()
        raise VMMError(f"{method} {path}: HTTP {resp.status}: {text}")
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")
