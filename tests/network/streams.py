"""A long-lived TCP stream (iperf3) between two namespaces, checked for interruptions."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass

from tests.network.netlab import NetLab, Node, wait_for

PORT = 5201


@dataclass
class Stream:
    client: subprocess.Popen[str]
    seconds: float

    def result(self) -> dict[str, object]:
        out, _ = self.client.communicate(timeout=self.seconds + 20)
        data: dict[str, object] = json.loads(out)
        return data


def start(
    lab: NetLab,
    server: Node,
    client: Node,
    address: ipaddress.IPv6Address,
    *,
    seconds: float = 4.0,
    rate: str = "40M",
) -> Stream:
    lab.start(
        server, ["iperf3", "-s", "-1", "-B", str(address), "-p", str(PORT)], "iperf3-server.log"
    )
    wait_for(lambda: f":{PORT:04X}" in server.run("cat", "/proc/net/tcp6"), timeout=5)
    process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            client.netns,
            "iperf3",
            "-c",
            str(address),
            "-p",
            str(PORT),
            "-t",
            str(seconds),
            "-i",
            "0.25",
            "-b",
            rate,
            "-J",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lab.on_close(lambda: process.kill() if process.poll() is None else None)
    return Stream(process, seconds)


def intervals(result: dict[str, object]) -> list[int]:
    """Bytes sent in each reporting interval."""
    return [int(i["sum"]["bytes"]) for i in result["intervals"]]  # type: ignore[attr-defined,index]


def assert_uninterrupted(result: dict[str, object], *, min_share: float) -> None:
    """The stream ended without error, the receiver got every byte, no interval starved.

    ``min_share``: each interval must carry at least this share of the median one.
    """
    assert "error" not in result, result.get("error")
    end = result["end"]
    sent = int(end["sum_sent"]["bytes"])  # type: ignore[index]
    received = int(end["sum_received"]["bytes"])  # type: ignore[index]
    assert sent > 0 and received >= sent * 0.99, (sent, received)
    per = intervals(result)
    median = sorted(per)[len(per) // 2]
    assert min(per) >= median * min_share, per
