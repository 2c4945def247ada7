"""Benchmark: a one-route change -> served on every lab host, p50/p99 of 20 trials.

Needs a lab that is up, bootstrapped and applied (``scripts/demo``, or
``reconcile lab up && reconcile hosts bootstrap && reconcile apply``) and runs
as root with the lab's ``FLEET_LAB_PREFIX``/``FLEET_LAB_DIR``. Each trial edits
one app's ``hard_limit`` (25 <-> 26) in a Git copy of the fleet and commits it,
then times ``reconcile apply --yes`` (load, read HEAD, observe every host over
SSH, plan, apply), which returns once every host's agent has answered its
route step: HAProxy serves the new ``maxconn`` on that app's servers by then
(the runtime API applies it before the agent answers). It then checks that
the change touched only that app's route (every other route's etag unchanged,
HAProxy's other backends untouched: no reload). Goal (issue 8): p99 <= 1 s.

Beside the goal figure it prints the CPU time of each ``reconcile apply``
(user + system of the command and the processes it waits for: not the SSH
connection holder's share, nor the hosts')
and the load average before and after: on a shared 2-core machine the wall
clock follows the load, the CPU time much less.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.routemove import p99
from reconciler.core import snapfile

RECONCILE = str(Path(sys.executable).with_name("reconcile"))
MASTER = "/var/lib/fleet-agent/proxy/haproxy/master.sock"
AGENT_PYTHON = "/var/lib/fleet-agent/current/bin/python"


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid"}
    env |= {"GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def reconcile(*args: str) -> str:
    out = subprocess.run([RECONCILE, *args], capture_output=True, text=True, check=False)
    if out.returncode not in (0, 2):
        raise SystemExit(f"reconcile {' '.join(args)}: {out.stderr.strip() or out.stdout[-500:]}")
    return out.stdout


def routes(fleet: Path, save: Path) -> dict[tuple[str, str], str]:
    """(host, route id) -> etag of every route observed (read as the reconciler reads it:
    a saved file keeps resources apart from their hosts)."""
    reconcile("observe", "--fleet", str(fleet), "--save", str(save))
    snap = snapfile.loads(save.read_bytes(), str(save))
    out = {
        (name, r.id): r.etag
        for name, obs in snap.hosts.items()
        for r in obs.resources
        if r.kind == "route"
    }
    if not out:
        raise SystemExit(f"no route observed on any host ({save}): is the lab up and applied?")
    return out


def reloads(hosts: list[str]) -> dict[str, str]:
    """Each host's HAProxy master reload counter (``show proc`` on the master CLI)."""
    script = (
        "from providers.proxy import reload\n"
        f"procs = reload.parse_show_proc(reload.master_command({MASTER!r}, 'show proc'))\n"
        "print(next(p.reloads for p in procs if p.kind == 'master'))\n"
    )
    out = {}
    for host in hosts:
        res = subprocess.run(
            [RECONCILE, "lab", "exec", host, "--", AGENT_PYTHON, "-c", script],
            capture_output=True,
            text=True,
            check=False,
        )
        out[host] = res.stdout.strip() or res.stderr.strip()
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fleet", default="examples", help="the fleet the lab was applied from")
    parser.add_argument("--app", default="hello")
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root, against a running lab")
    times: list[float] = []
    cpu: list[float] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fleet-edgeroute-") as tmp:
        fleet = Path(tmp) / "fleet"
        shutil.copytree(args.fleet, fleet)
        # in Git, as operators keep a fleet: each trial commits its edit (untimed), and
        # the timed apply reads HEAD and the work tree's state as theirs does
        git(fleet, "init", "-q", "-b", "main")
        git(fleet, "add", "-A")
        git(fleet, "commit", "-qm", "fleet")
        state = Path(tmp) / "state.db"
        app_file = fleet / "apps" / f"{args.app}.yaml"
        before = routes(fleet, Path(tmp) / "obs.json")
        hosts = sorted({h for h, _ in before})
        workers = reloads(hosts)
        limit = 25
        changed: list[str] = []
        for trial in range(args.trials):
            new = 26 if limit == 25 else 25
            text = app_file.read_text()
            app_file.write_text(text.replace(f"hard_limit: {limit}", f"hard_limit: {new}"))
            git(fleet, "commit", "-qam", f"{args.app}: hard_limit {new}")
            c = _children_cpu()
            t = time.perf_counter()
            reconcile("apply", "--fleet", str(fleet), "--state", str(state), "--yes")
            times.append(time.perf_counter() - t)
            cpu.append(_children_cpu() - c)
            limit = new
            if trial == 0:  # (an even number of trials ends where it began)
                after = routes(fleet, Path(tmp) / "obs.json")
                changed = sorted({key[1] for key in after if after[key] != before.get(key)})
        same_workers = reloads(hosts) == workers
    print(
        f"one-route change on {len(hosts)} hosts: p50 {statistics.median(times) * 1000:6.0f} ms, "
        f"p99 {p99(times) * 1000:6.0f} ms, max {max(times) * 1000:6.0f} ms ({len(times)} trials)"
    )
    print("trials (ms):", " ".join(f"{x * 1000:.0f}" for x in times))
    print(
        f"CPU of the reconcile process: p50 {statistics.median(cpu) * 1000:6.0f} ms, "
        f"p99 {p99(cpu) * 1000:6.0f} ms; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    print(f"routes whose etag changed: {changed or 'none'} (want at most [{args.app!r}])")
    print(f"HAProxy reloaded: {'no' if same_workers else 'YES'}")
    print(f"goal p99 <= 1000 ms: {'met' if p99(times) <= 1.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
