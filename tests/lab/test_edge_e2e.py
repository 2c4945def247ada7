"""The edge on the lab, end to end: clients reach apps through anycast, HAProxy and the mesh.

Real sshd per namespace host, the agent installed by bootstrap, real microVMs
under QEMU, BIRD announcing anycast to each region's upstream router, the
client namespace routing to the best region, WireGuard between hosts and
HAProxy on every host (driven by the ``route`` kind). One module-scoped lab
with its own prefix; the tests run in file order and each leaves the fleet
converged for the next.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.conftest import RECONCILE, ROOT, Lab, lab_directory
from tests.lab.test_fleet_e2e import Fleet

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.qemu, pytest.mark.slow]

HELLO = "198.51.100.10"
LEDGER = "198.51.100.20"
INFER = "198.51.100.30"  # machines in sea only
ECHO = "198.51.100.40"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(
        lab_directory().with_name(lab_directory().name + "-edge"), f"fg{os.getpid() % 100000}"
    )
    work = tmp_path_factory.mktemp("edge")
    shutil.copytree(ROOT / "examples", work / "fleet")
    try:
        lab.reconcile("lab", "up", "--fleet", str(work / "fleet"))
        the_fleet = Fleet(lab, work / "fleet")
        the_fleet.bootstrap()
        result = the_fleet.apply()
        assert "Apply complete." in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
        yield the_fleet
    finally:
        lab.reconcile("lab", "down", check=False)


def client(fleet: Fleet, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", f"{fleet.lab.prefix}-client", *cmd],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def curl(fleet: Fleet, url: str, *extra: str) -> str:
    ca = fleet.lab.directory / "ca" / "ca.pem"
    out = client(fleet, "curl", "-s", "-m", "5", "--cacert", str(ca), *extra, url)
    return out.stdout.strip() or f"(no answer: exit {out.returncode} {out.stderr.strip()})"


def wait_for(check: object, timeout: float = 60.0, step: float = 0.5) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last is True:
            return
        time.sleep(step)
    raise AssertionError(f"not true after {timeout}s: {last}")


def test_every_host_runs_haproxy_for_every_public_app(fleet: Fleet) -> None:
    for host in ("ams-1", "ams-2", "sea-1", "sea-2"):
        out = fleet.lab.exec(host, "ss", "-ltnH").stdout
        for address, port in ((HELLO, 80), (HELLO, 443), (LEDGER, 80), (INFER, 80), (ECHO, 7000)):
            assert f"{address}:{port} " in out, (host, address, port, out)
    hosts = fleet.observe()["hosts"]
    assert all(h.get("reachable") for h in hosts), [h for h in hosts if not h.get("reachable")]
    routes = [r for h in hosts for r in h.get("resources", []) if r["kind"] == "route"]
    assert len(routes) == 16
    assert all(r["status"]["health"] == "passing" for r in routes), routes


def test_client_reaches_apps_through_anycast_and_tls(fleet: Fleet) -> None:
    # The announcement gate waits for the proxy's health checks: give it a moment.
    wait_for(lambda: curl(fleet, f"http://{HELLO}/") == "hello from the fleet (version 1.0)")
    assert curl(fleet, f"https://{HELLO}/") == "hello from the fleet (version 1.0)"
    named = curl(
        fleet,
        "https://hello.fleet.internal/",
        "--resolve",
        f"hello.fleet.internal:443:{HELLO}",
    )
    assert named == "hello from the fleet (version 1.0)"
    # each app's announcement has its own health gate: each may come up a little later
    wait_for(lambda: curl(fleet, f"http://{LEDGER}/") == "ledger (eu only) (version 1.0)")

    def echo() -> str:
        out = client(fleet, "sh", "-c", f"echo ping | timeout 3 busybox nc {ECHO} 7000")
        return out.stdout.strip()

    wait_for(lambda: echo() == "ping")


def test_app_with_machines_only_in_another_region_is_reached_over_the_mesh(fleet: Fleet) -> None:
    # The client prefers ams (the lab's first region); infer runs only in sea.
    wait_for(lambda: curl(fleet, f"http://{INFER}/") == "inference on a GPU (version 1.0)")
    ams_edge = fleet.lab.exec(
        "ams-1", "curl", "-s", "-m", "5", f"http://{INFER}/", check=False
    ).stdout.strip()
    assert ams_edge == "inference on a GPU (version 1.0)"


def _wrk(fleet: Fleet, seconds: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            f"{fleet.lab.prefix}-client",
            "wrk",
            "-t1",
            "-c4",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            f"http://{HELLO}/",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wrk_result(proc: subprocess.Popen[str]) -> tuple[int, int, int, str]:
    """(requests, non-2xx/3xx answers, socket errors, wrk's output)."""
    out, _ = proc.communicate(timeout=600)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    found = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(found.group(1)) if found else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in errors.groups()) if errors else 0
    return requests, bad, socket_errors, out


def _apply_under_load(fleet: Fleet, socket_errors: int = 0) -> None:
    """``reconcile apply`` while wrk loads hello from the client: no answer but 2xx.

    ``socket_errors``: how many broken connections are tolerated (a host that
    withdraws its anycast route moves the client's ECMP flows to another edge,
    which resets the connections it never saw; requests on them are not answered).
    """
    load = _wrk(fleet, 600)  # stopped (SIGINT: wrk prints its results) once apply is done
    try:
        time.sleep(3)
        began = time.monotonic()
        result = fleet.apply()
        took = time.monotonic() - began
        assert "Apply complete." in result.stdout, result.stdout[-3000:]
        time.sleep(2)
    finally:
        load.send_signal(signal.SIGINT)
        requests, bad, broken, out = _wrk_result(load)
    print(f"wrk: {requests} requests, {bad} non-2xx, {broken} socket errors; apply {took:.1f}s")
    assert requests > 100 and bad == 0 and broken <= socket_errors, out


def test_rolling_deploy_under_load_has_no_failed_request(fleet: Fleet) -> None:
    # hello's machines (ams#1, sea#1) are replaced in place, one batch each: every edge
    # drains the batch's server, the old VM stops, the new one boots behind its gate
    fleet.edit("apps/hello.yaml", "examples/hello:1.0", "examples/hello:2.0")
    _apply_under_load(fleet)
    wait_for(lambda: curl(fleet, f"http://{HELLO}/") == "hello from the fleet (version 2.0)")


def test_host_drain_under_load_has_no_failed_request(fleet: Fleet) -> None:
    fleet.edit(
        "regions/ams.yaml",
        "    address: 192.0.2.12\n",
        "    address: 192.0.2.12\n  cordoned: true\n",
    )
    _apply_under_load(fleet, socket_errors=10)  # measured: 4 of 4,075 (ams-2 withdraws)
    hosts = {r["spec"]["app"]: h for h, r in fleet.machines() if r["spec"]["region"] == "ams"}
    assert hosts["hello"] == "ams-1"


def test_hundred_requests_to_a_stopped_machine_start_it_exactly_once(fleet: Fleet) -> None:
    host, victim = next(
        (h, r) for h, r in fleet.machines() if r["spec"]["app"] == "hello" and h.startswith("ams")
    )
    agent = "/var/lib/fleet-agent/current/bin/fleet-agent"
    name = victim["status"]["runtime"]["machine"]
    fleet.lab.exec(host, agent, "machine", "stop", name)
    # its address is refused at once (the host's /64 is routed `unreachable` where no
    # machine runs), here and over the mesh, instead of timing out in WireGuard
    address, port = victim["spec"]["address"], victim["spec"]["services"][0]["internal_port"]
    for asker in (host, "sea-1"):
        began = time.monotonic()
        refused = fleet.lab.exec(
            asker, "curl", "-s", "-m", "3", f"http://[{address}]:{port}/", check=False
        )
        assert refused.returncode == 7 and time.monotonic() - began < 2.5, (asker, refused)
    log = "/var/lib/fleet-agent/serve.log"
    before = fleet.lab.exec(
        host, "grep", "-c", "waker: starting a machine", log, check=False
    ).stdout.strip()
    # the edge ticker marks the stopped machine's servers down and enables the waker
    # (within a tick, ~1 s; before, HAProxy's checks took ~6 s: a stopped VM times out)
    time.sleep(4)
    # curl waits longer than HAProxy's `timeout server` (60 s): a slow wake shows as 504/502
    script = (
        f"for i in $(seq 100); do curl -s -m 90 -o /dev/null -w '%{{http_code}} ' "
        f"http://{HELLO}/ & done; wait"
    )
    out = fleet.lab.exec(host, "sh", "-c", script, check=False).stdout.split()
    assert out == ["200"] * 100, out
    after = fleet.lab.exec(
        host, "grep", "-c", "waker: starting a machine", log, check=False
    ).stdout.strip()
    assert int(after or 0) - int(before or 0) == 1
    states = {r["id"]: r["status"]["state"] for _, r in fleet.machines()}
    assert states[victim["id"]] == "running"


def test_one_route_change_touches_only_that_route(fleet: Fleet) -> None:
    before = {
        (h["host"], r["id"]): r["etag"]
        for h in fleet.observe()["hosts"]
        for r in h.get("resources", [])
        if r["kind"] == "route"
    }
    fleet.edit("apps/ledger.yaml", "ams: 2", "ams: 1")
    result = fleet.apply()
    assert "Apply complete." in result.stdout, result.stdout[-3000:]
    after = {
        (h["host"], r["id"]): r["etag"]
        for h in fleet.observe()["hosts"]
        for r in h.get("resources", [])
        if r["kind"] == "route"
    }
    changed = {key for key in after if after[key] != before.get(key)}
    assert changed == {(h, "ledger") for h in ("ams-1", "ams-2", "sea-1", "sea-2")}
    table = json.loads(
        fleet.lab.exec("sea-1", "cat", "/var/lib/fleet-agent/proxy/table.json").stdout
    )
    ledger = next(a for a in table["routes"] if a["app"] == "ledger")
    assert list(ledger["routes"]["be_ledger_0"]["servers"]) == ["waker", "ams.1"]
    assert curl(fleet, f"http://{LEDGER}/") == "ledger (eu only) (version 1.0)"


def test_a_malformed_route_keeps_the_last_good_table_and_alarms(fleet: Fleet) -> None:
    data = "/var/lib/fleet-agent"
    request = {
        "protocol_version": 1,
        "host": "ams-1",
        "actions": [
            {
                "id": "bad",
                "kind": "route",
                "resource_id": "broken",
                "verb": "create",
                "spec": {"app": "broken", "routes": {"be_broken_0": {"service": 0}}},
                "etag": "sha256:0",
                "expect": None,
            }
        ],
    }
    agent = f"{data}/current/bin/fleet-agent"
    out = fleet.lab.exec(
        "ams-1", "sh", "-c", f"echo '{json.dumps(request)}' | {agent} apply", check=False
    ).stdout
    assert '"outcome": "failed"' in out and "malformed route spec" in out, out
    assert curl(fleet, f"http://{HELLO}/").startswith("hello from the fleet")
    routes = [
        r
        for h in fleet.observe()["hosts"]
        if h["host"] == "ams-1"
        for r in h.get("resources", [])
        if r["kind"] == "route"
    ]
    assert all("malformed" in r["status"]["runtime"].get("alarm", "") for r in routes), routes
    # the next good update clears the alarm (re-apply one route as it is)
    Path(fleet.dir / "apps" / "hello.yaml").write_text(
        Path(fleet.dir / "apps" / "hello.yaml")
        .read_text()
        .replace("soft_limit: 20", "soft_limit: 21")
    )
    assert "Apply complete." in fleet.apply().stdout
    routes = [
        r
        for h in fleet.observe()["hosts"]
        if h["host"] == "ams-1"
        for r in h.get("resources", [])
        if r["kind"] == "route"
    ]
    assert all("alarm" not in r["status"]["runtime"] for r in routes), routes


def _hex(address: str) -> str:
    """An IPv6 address as /proc/net/if_inet6 writes it (how the example image names itself)."""
    return ipaddress.IPv6Address(address).exploded.replace(":", "")


def test_fly_replay_from_the_client_in_each_form(fleet: Fleet) -> None:
    # The client reaches an ams edge; hello's ams machine answers /cgi-bin/replay with
    # `fly-replay: <query>` and the edge's HAProxy replays the request to the target.
    spots = {r["spec"]["region"]: r for _, r in fleet.machines() if r["spec"]["app"] == "hello"}
    sea = _hex(spots["sea"]["spec"]["address"])
    url = f"http://{HELLO}/cgi-bin/replay"
    for query in ("region=sea", "instance=sea.1", "elsewhere=true"):
        out = curl(fleet, f"{url}?{query}")
        assert out.startswith(f"replayed to {sea} from "), (query, out)
        assert "region=ams" in out, (query, out)  # fly-replay-src names where it came from
    # a body over the replay cap (8 KiB) is refused, never replayed truncated
    big = client(
        fleet,
        "sh",
        "-c",
        f"head -c 20000 /dev/zero | curl -s -m 10 -D - -o /dev/null --data-binary @- "
        f"'{url}?region=sea'",
    ).stdout
    assert big.startswith("HTTP/1.1 413"), big
    assert "fly-replay-failed:" in big.lower(), big


def _waker_starts(fleet: Fleet, host: str) -> int:
    log = "/var/lib/fleet-agent/serve.log"
    out = fleet.lab.exec(host, "grep", "-c", "waker: starting a machine", log, check=False)
    return int(out.stdout.strip() or 0)


def _hello_states(fleet: Fleet) -> dict[str, tuple[str, str]]:
    return {
        r["spec"]["slot"]: (h, r["status"]["state"])
        for h, r in fleet.machines()
        if r["spec"]["app"] == "hello"
    }


def test_autostop_stops_idle_machines_above_the_floor_and_a_request_wakes_one(
    fleet: Fleet,
) -> None:
    hello = fleet.dir / "apps" / "hello.yaml"
    original = hello.read_text()
    auto = original.replace(
        "      concurrency:\n",
        "      auto_stop_machines: stop\n"
        "      min_machines_running: 1\n"
        "      auto_stop_after: 10s\n"
        "      concurrency:\n",
    )
    hello.write_text(re.sub(r"\n    ams: \d+\n", "\n    ams: 2\n", auto))
    assert "Apply complete." in fleet.apply().stdout

    def states() -> dict[str, str]:
        return {slot: state for slot, (_, state) in _hello_states(fleet).items()}

    # ams#1 and sea#1 are their regions' floor; ams#2 goes after 10 s without a request
    want = {"ams#1": "running", "ams#2": "stopped", "sea#1": "running"}
    wait_for(lambda: (got := states()) == want or got, timeout=120, step=2)
    code, out = fleet.plan_code()
    assert code == 0, out  # stopped by autostop is what the app asked for, not drift

    # without a floor every idle machine stops; a request wakes exactly one
    hello.write_text(
        hello.read_text().replace("min_machines_running: 1", "min_machines_running: 0")
    )
    assert "Apply complete." in fleet.apply().stdout
    want = {"ams#1": "stopped", "ams#2": "stopped", "sea#1": "stopped"}
    wait_for(lambda: (got := states()) == want or got, timeout=120, step=2)
    host = _hello_states(fleet)["ams#1"][0]
    before = _waker_starts(fleet, host)
    out = fleet.lab.exec(host, "curl", "-s", "-m", "90", f"http://{HELLO}/", check=False)
    assert out.stdout.startswith("hello from the fleet"), out
    assert _waker_starts(fleet, host) - before == 1
    running = [slot for slot, state in states().items() if state == "running"]
    assert len(running) == 1, running

    # back to the examples' hello (auto_stop off): the same apply starts the machines
    # autostop stopped, behind their health gates, and the plan is then a no-op
    hello.write_text(original)
    result = fleet.apply()
    assert "Apply complete." in result.stdout, result.stdout[-3000:]
    assert "started after the update" in result.stdout, result.stdout[-3000:]
    assert states() == {"ams#1": "running", "sea#1": "running"}
    code, out = fleet.plan_code()
    assert code == 0, out


def test_wrk_while_a_stopped_machine_wakes_has_no_failed_request(fleet: Fleet) -> None:
    # From the machine's own host every request meets the waker until the machine is up.
    host, victim = next(
        (h, r) for h, r in fleet.machines() if r["spec"]["app"] == "hello" and h.startswith("ams")
    )
    agent = "/var/lib/fleet-agent/current/bin/fleet-agent"
    fleet.lab.exec(host, agent, "machine", "stop", victim["status"]["runtime"]["machine"])
    before = _waker_starts(fleet, host)
    time.sleep(4)  # the ticker marks the stopped machine down and enables the waker (~1 s)
    wrk = ["wrk", "-t1", "-c4", "-d20s", "--timeout", "60s", f"http://{HELLO}/"]
    load = subprocess.Popen(
        [RECONCILE, "lab", "exec", host, "--", *wrk],
        cwd=ROOT,
        env=fleet.lab.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    requests, bad, broken, out = _wrk_result(load)
    print(f"wrk during a wake: {requests} requests, {bad} non-2xx, {broken} socket errors")
    assert requests > 20 and bad == 0 and broken == 0, out  # measured: 193-1,339 in 20 s
    assert _waker_starts(fleet, host) - before == 1


def test_a_machine_killed_after_its_stop_timeout_is_woken_not_restarted(fleet: Fleet) -> None:
    # A guest slower than kill timeout + grace is killed before its init reports the
    # exit; it must still read "stopped" (it was asked to stop), so the supervisor
    # leaves it and the waker starts it on the next request, exactly once.
    host, victim = next(
        (h, r) for h, r in fleet.machines() if r["spec"]["app"] == "hello" and h.startswith("ams")
    )
    agent = "/var/lib/fleet-agent/current/bin/fleet-agent"
    name = victim["status"]["runtime"]["machine"]
    log = "/var/lib/fleet-agent/serve.log"
    restarts = f'"restart", "machine": "{victim["id"]}"'
    count = ["grep", "-c", "-F", restarts, log]
    restarts_before = int(fleet.lab.exec(host, *count, check=False).stdout.strip() or 0)
    frozen = f"kill -STOP $(cat /var/lib/fleet-agent/machines/{name}/vmm.pid)"
    fleet.lab.exec(host, "sh", "-c", frozen)  # the guest cannot finish its stop
    out = fleet.lab.exec(host, agent, "machine", "stop", "--timeout", "1", name)
    assert "stopped on request" in out.stdout, out
    before = _waker_starts(fleet, host)
    time.sleep(4)  # the ticker marks the stopped machine down and enables the waker (~1 s)
    answer = fleet.lab.exec(host, "curl", "-s", "-m", "90", f"http://{HELLO}/", check=False)
    assert answer.stdout.startswith("hello from the fleet"), answer
    assert _waker_starts(fleet, host) - before == 1
    restarts_after = int(fleet.lab.exec(host, *count, check=False).stdout.strip() or 0)
    assert restarts_after == restarts_before
