"""Benchmark: HAProxy's instructions per request, generated config vs the minimal one.

rps on a shared machine swings too much to see a 5% difference (see
bench/proxy.py); the instructions HAProxy executes per request do not. Each
configuration runs under ``valgrind --tool=callgrind`` behind the same
backend as bench/proxy.py; after a warm-up the counters are zeroed, wrk sends
requests over one connection (no batching differences), and the counters are
dumped: user-space instructions / requests, repeatable to about +-30. Health
checks run hourly instead of every second here (``bench.proxy.quiet_checks``):
they are timer work, not per-request work, and counted in, their share per
request would follow how fast valgrind happened to run on a loaded machine
(seen: 27k to 43k for the same configuration). The
kernel's share (system calls) is the same for both configurations and is not
counted; on loopback it is about half of HAProxy's CPU per request, so the
ratio printed here overstates the CPU ratio.

Needs valgrind (Debian package ``valgrind``). Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench import proxy as bench
from providers.proxy import haproxy


def wait_listening(port: int, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


# what a browser sends besides Host (~560 bytes): the replay bookkeeping copies the
# request's headers, so its cost grows with them (--browser-headers)
BROWSER_HEADERS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "Accept-Language: en-US,en;q=0.5",
    "Accept-Encoding: gzip, deflate, br",
    "Cookie: session=0123456789abcdef0123456789abcdef; theme=dark; _ga=GA1.2.123456789.1700000000",
    "Upgrade-Insecure-Requests: 1",
    "Sec-Fetch-Dest: document",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-Site: none",
    "Sec-Fetch-User: ?1",
    "DNT: 1",
)


def instructions_per_request(
    config: Path, port: int, seconds: int, work: Path, headers: tuple[str, ...] = ()
) -> float:
    out = work / f"{config.stem}.callgrind"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    proc = subprocess.Popen(
        bench.pinned(0, [*argv, haproxy.HAPROXY, "-f", str(config)]),
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_listening(port)
        bench.wrk_result(bench.start_wrk(port, 2, 1, headers), 2)  # warm-up
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        requests = bench.wrk_result(bench.start_wrk(port, seconds, 1, headers), seconds)[3]
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(30)
    dump = out.with_name(out.name + ".1").read_text()  # the one written by "-d"
    total = re.search(r"^(?:summary|totals):\s*(\d+)", dump, re.MULTILINE)
    assert total is not None, "no totals in the callgrind dump"
    return int(total.group(1)) / max(requests, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--apps", type=int, default=100)
    p.add_argument(
        "--shared-address", action="store_true", help="all apps on one address: routed by Host"
    )
    p.add_argument("--no-replay", action="store_true", help="every app with fly_replay: false")
    p.add_argument("--single-region", action="store_true", help="no remote machines: no spill rule")
    p.add_argument(
        "--browser-headers", action="store_true", help="requests with a browser's dozen headers"
    )
    args = p.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("bench.proxy_cost: needs valgrind (apt-get install valgrind)")

    work = Path(tempfile.mkdtemp(prefix="bench-proxy-cost-"))
    backend: subprocess.Popen[bytes] | None = None
    try:
        b1, minimal, ours = bench.free_port(), bench.free_port(), bench.free_port()
        (work / "backend.cfg").write_text(bench.BACKEND_CFG.format(p1=b1, p2=bench.free_port()))
        backend = subprocess.Popen(
            bench.pinned(1, [haproxy.HAPROXY, "-f", str(work / "backend.cfg")]),
            start_new_session=True,
        )
        (work / "minimal.cfg").write_text(bench.MINIMAL_CFG.format(port=minimal, backend=b1))
        options = haproxy.Options(state_dir=work / "ours", nbthread=1)
        table = bench.fleet_table(
            ours,
            b1,
            args.apps,
            shared=args.shared_address,
            replay=not args.no_replay,
            single_region=args.single_region,
        )
        files = haproxy.render(table, options)
        files[options.config_path] = bench.quiet_checks(files[options.config_path])
        haproxy.write(files)
        headers = BROWSER_HEADERS if args.browser_headers else ()
        counts = {
            "minimal": instructions_per_request(
                work / "minimal.cfg", minimal, args.seconds, work, headers
            ),
            "ours": instructions_per_request(
                options.config_path, ours, args.seconds, work, headers
            ),
        }
        shape = "Host and a browser's headers" if headers else "Host only"
        print(f"HAProxy user-space instructions per request ({shape}; callgrind, wrk -c1 ", end="")
        print(f"{args.seconds}s)")
        for name, n in counts.items():
            print(f"  {name:8s} {n:>9,.0f}")
        print(f"  generated / minimal: {counts['ours'] / counts['minimal']:.3f}")
    finally:
        if backend is not None:
            backend.terminate()
            backend.wait(5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
