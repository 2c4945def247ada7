"""Benchmark: from `git push` to the apply's first action, for the hook and for watch+webhook.

Argo CD polls every ~3 minutes and Flux every minute; the goal here (issue 6)
is <= 2 s for both paths. Real bare repositories, real `git push` over the
file transport, the real `reconcile` processes; in-process hosts (instant) so
that only the GitOps path is measured: Git, hook or fetch, load, observe,
plan, lock, journal.

* hook: the post-receive hook runs inside `git push`, which returns only when
  the apply is over, so the clock starts when `git push` starts and stops at
  the first action's progress line on the pusher's terminal.
* watch: `reconcile watch --webhook` with a 10-minute poll interval (so only
  the webhook can wake it); the clock starts when `git push` returns, the
  webhook is POSTed as a Git server would, and stops at the first action
  event in the watcher's JSON log.

Each change scales one app by one machine per region. Median of N runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gitops.gitfixtures import IDENTITY, RECONCILE, git, make_remote  # noqa: E402


def bench_hook(runs: int) -> list[float]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        remote = make_remote(Path(tmp))
        git(remote.work, "push", "-q", "origin", "main")
        for i in range(runs):
            remote.commit(f"hello {i + 2}", regions={"ams": i + 2, "sea": i + 2})
            t0 = time.monotonic()
            proc = subprocess.Popen(
                ["git", *IDENTITY, "push", "origin", "main"],
                cwd=remote.work,
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
            )
            assert proc.stderr is not None
            first = None
            for line in proc.stderr:
                if first is None and line.startswith("remote: fleet:   "):
                    first = time.monotonic() - t0
            proc.wait()
            assert first is not None and proc.returncode == 0
            out.append(first)
    return out


def bench_watch(runs: int) -> list[float]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        remote = make_remote(Path(tmp), hooks=False)
        git(remote.work, "push", "-q", "origin", "main")
        proc = subprocess.Popen(
            [
                RECONCILE,
                "watch",
                "--repo",
                str(remote.bare),
                "--path",
                "fleet",
                "--interval",
                "600",
                "--webhook",
                "127.0.0.1:0",
                "--hosts",
                f"memory:{remote.hosts_file}",
                "--state",
                remote.state,
                "--cache",
                f"{tmp}/cache",
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        lines: list[tuple[float, dict[str, Any]]] = []

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append((time.monotonic(), json.loads(line)))

        threading.Thread(target=read, daemon=True).start()

        def wait(pred: Any, since: int = 0, timeout: float = 60) -> tuple[float, dict[str, Any]]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for when, rec in lines[since:]:
                    if pred(rec):
                        return when, rec
                time.sleep(0.002)
            raise RuntimeError(f"watch: timed out; last lines {lines[-5:]}")

        try:
            addr = wait(lambda r: r["msg"].startswith("webhook listening"))[1]["msg"].split()[-1]
            wait(lambda r: r["msg"].startswith("ready at"))
            for i in range(runs):
                remote.commit(f"hello {i + 2}", regions={"ams": i + 2, "sea": i + 2})
                mark = len(lines)
                git(remote.work, "push", "-q", "origin", "main")
                t_pushed = time.monotonic()
                req = urllib.request.Request(f"http://{addr}/", data=b"{}", method="POST")
                with urllib.request.urlopen(req, timeout=5):
                    pass
                when, _ = wait(lambda r: "event" in r, since=mark)
                out.append(when - t_pushed)
                wait(lambda r: r["msg"].startswith("ready at"), since=mark)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    for name, fn in (("post-receive hook", bench_hook), ("watch + webhook", bench_watch)):
        times = fn(args.runs)
        med = statistics.median(times)
        print(
            f"{name:18} push -> first action: median {med:.2f} s, "
            f"min {min(times):.2f}, max {max(times):.2f} (n={len(times)}); goal <= 2 s: "
            f"{'met' if med <= 2.0 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
