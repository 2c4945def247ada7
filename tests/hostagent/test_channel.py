"""The supervisor's request channel and its thin relay: real unix sockets, real forks.

The channel-level tests fork the real forker from this process with the
recording handler of test_agent (whose work sleeps when asked), so they can
stop the forker or drop the client mid-apply. The process-level tests run the
real ``fleet-agent serve`` on a temporary data directory (in a network
namespace of its own: it must not bind anything on this machine's network)
and the relay exactly as SSH starts it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from hostagent import channel, relay
from hostagent import handlers as H
from hostagent.agent import Agent
from hostagent.inventory import Inventory
from tests.hostagent.test_agent import FACTS, Recorder, action

FLEET_AGENT = str(Path(sys.executable).with_name("fleet-agent"))


class Slow(Recorder):
    """Creates take ``delay`` seconds (time for the test to pull the rug)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def create(self, rid: str, spec: Mapping[str, Any], emit: H.Emit) -> None:
        emit("booting", rid)
        time.sleep(self.delay)


class Counting(Slow):
    """A slow create that leaves a line in ``log`` each time it runs (in any process)."""

    def __init__(self, delay: float, log: Path) -> None:
        super().__init__(delay)
        self.log = log

    def create(self, rid: str, spec: Mapping[str, Any], emit: H.Emit) -> None:
        with open(self.log, "a") as f:
            f.write(f"create {os.getpid()}\n")
        super().create(rid, spec, emit)


def request(*actions: dict[str, Any]) -> bytes:
    return json.dumps({"protocol_version": 1, "host": "ams-1", "actions": list(actions)}).encode()


def ask(path: Path, verb: str, body: bytes) -> tuple[int, list[dict[str, Any]]]:
    """What the relay does, with the answer lines collected instead of printed."""
    r, w = os.pipe()
    sock = relay.connect(str(path))
    try:
        code = relay.forward(sock, body, verb, out_fd=w)
    finally:
        sock.close()
        os.close(w)
    with os.fdopen(r, "rb") as out:
        lines = [json.loads(line) for line in out.read().splitlines()]
    return code, lines


def etag(data: Path) -> str | None:
    entry = Inventory(data).read().get("machine", "web/ams#1")
    return entry.etag if entry else None


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[channel.Channel, Path]]:
    chan = slow_channel(tmp_path, 0.0)
    try:
        yield chan, tmp_path
    finally:
        chan.close()


def test_apply_through_the_channel_is_the_exec_answer(
    started: tuple[channel.Channel, Path],
) -> None:
    chan, data = started
    mode = chan.path.stat().st_mode
    assert chan.path == data / "agent.sock" and mode & 0o777 == 0o600
    code, lines = ask(chan.path, "apply", request(action("a1", "create", "e1", None)))
    assert code == 0
    assert [next(iter(line)) for line in lines] == ["event", "result"]
    assert lines[-1]["result"]["results"] == [
        {"action": "a1", "outcome": "ok", "etag": "e1", "message": ""}
    ]
    assert etag(data) == "e1"
    # The same request again: the agent's idempotence, as on exec.
    code, lines = ask(chan.path, "apply", request(action("a1", "create", "e1", None)))
    assert lines[-1]["result"]["results"][0]["outcome"] == "already"
    code, lines = ask(chan.path, "observe", b'{"protocol_version": 1}')
    assert code == 0 and lines[0]["resources"][0]["etag"] == "e1"


WARMED: list[int] = []


class Warm(Recorder):
    def observe(self, rid: str, spec: Mapping[str, Any]) -> H.Observed:
        return H.Observed(state="running", health="passing", runtime={"warmed": list(WARMED)})


def test_what_the_forker_warms_every_request_inherits(tmp_path: Path) -> None:
    chan = channel.start(
        tmp_path,
        lambda: Agent(Inventory(tmp_path), {"machine": Warm()}, FACTS),
        lambda: WARMED.append(os.getpid()),
    )
    assert chan is not None
    try:
        ask(chan.path, "apply", request(action("a1", "create", "e1", None)))
        _, lines = ask(chan.path, "observe", b'{"protocol_version": 1}')
        assert lines[0]["resources"][0]["status"]["runtime"]["warmed"] == [chan.pid]
        assert WARMED == []  # warmed in the forker, not here
    finally:
        chan.close()


def test_errors_are_the_exec_errors(started: tuple[channel.Channel, Path]) -> None:
    chan, _ = started
    code, lines = ask(chan.path, "apply", b'{"protocol_version": 7}')
    assert code == 1 and lines == [lines[0]] and lines[0]["error"]["type"] == "protocol"
    code, lines = ask(chan.path, "apply", b"{nope")
    assert code == 1 and lines[0]["error"]["type"] == "request"


def slow_channel(tmp_path: Path, delay: float) -> channel.Channel:
    chan = channel.start(
        tmp_path, lambda: Agent(Inventory(tmp_path), {"machine": Slow(delay)}, FACTS)
    )
    assert chan is not None
    return chan


def test_an_apply_in_flight_outlives_the_forker(tmp_path: Path) -> None:
    chan = slow_channel(tmp_path, 1.5)
    answer: list[tuple[int, list[dict[str, Any]]]] = []
    thread = threading.Thread(
        target=lambda: answer.append(
            ask(chan.path, "apply", request(action("a1", "create", "e1", None)))
        )
    )
    thread.start()
    time.sleep(0.5)
    chan.close()  # as `serve` does when it stops or is restarted
    assert not chan.path.exists()  # no new requests: the relay falls back
    thread.join(15)
    assert answer and answer[0][0] == 0
    assert answer[0][1][-1]["result"]["results"][0]["outcome"] == "ok"
    assert etag(tmp_path) == "e1"


def test_the_same_action_sent_again_while_in_flight_runs_once(tmp_path: Path) -> None:
    # A resumed apply (the reconciler was killed; its holder and this host went on)
    # sends an action that is still being worked on: it waits, then finds it done.
    log = tmp_path / "creates"
    chan = channel.start(
        tmp_path, lambda: Agent(Inventory(tmp_path), {"machine": Counting(1.5, log)}, FACTS)
    )
    assert chan is not None
    try:
        first: list[tuple[int, list[dict[str, Any]]]] = []
        body = request(action("a1", "create", "e1", None))
        thread = threading.Thread(target=lambda: first.append(ask(chan.path, "apply", body)))
        thread.start()
        deadline = time.monotonic() + 15
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        _, again = ask(chan.path, "apply", body)
        thread.join(15)
        assert first[0][1][-1]["result"]["results"][0]["outcome"] == "ok"
        assert again[-1]["result"]["results"][0]["outcome"] == "already"
        assert len(log.read_text().splitlines()) == 1  # the work was done once
    finally:
        chan.close()


def test_a_client_that_goes_away_does_not_stop_the_apply(tmp_path: Path) -> None:
    chan = slow_channel(tmp_path, 0.5)
    try:
        sock = relay.connect(str(chan.path))
        sock.sendall(relay.header("apply") + request(action("a1", "create", "e1", None)))
        sock.shutdown(socket.SHUT_WR)
        sock.close()
        deadline = time.monotonic() + 15
        while etag(tmp_path) != "e1" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert etag(tmp_path) == "e1"
    finally:
        chan.close()


def test_a_socket_that_is_not_ours_is_never_used(tmp_path: Path) -> None:
    chan = slow_channel(tmp_path, 0.0)
    try:
        os.chmod(chan.path, 0o666)
        with pytest.raises(relay.Unusable, match="mode 0666") as exc:
            relay.connect(str(chan.path))
        assert not exc.value.quiet
        os.chmod(chan.path, 0o600)
        if os.geteuid() == 0:
            os.chown(chan.path, 65534, 65534)
            with pytest.raises(relay.Unusable, match="owned by uid 65534"):
                relay.connect(str(chan.path))
    finally:
        chan.close()
    with pytest.raises(relay.Unusable) as gone:
        relay.connect(str(chan.path))
    assert gone.value.quiet  # no supervisor: the normal fallback, said nowhere


def test_a_peer_of_another_uid_gets_nothing() -> None:
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or shutil.which("setpriv") is None or python is None:
        pytest.skip("needs root, setpriv and a system python3")
    # A directory the other user can reach (pytest's tmp_path is private to root).
    data = Path(tempfile.mkdtemp(prefix="fleet-channel-"))
    chan = slow_channel(data, 0.0)
    try:
        os.chmod(data, 0o755)
        os.chmod(chan.path, 0o666)  # as if the mode had been loosened: the forker still checks
        # The forker may close before the request is even written (EPIPE) or read (reset):
        # either way the peer got nothing.
        script = (
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "try:\n"
            ' s.sendall(b\'{"verb": "observe"}\\n{"protocol_version": 1}\')\n'
            " s.shutdown(socket.SHUT_WR); print(repr(s.recv(100)))\n"
            "except (ConnectionResetError, BrokenPipeError): print(repr(b''))"
        )
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             python, "-I", "-c", script, str(chan.path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "b''"
    finally:
        chan.close()
        shutil.rmtree(data)


# ---------------------------------------------------------------- real processes


def relay_env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_AGENT")}
    return {**env, "FLEET_AGENT_DATA": str(data), **extra}


def run_relay(
    data: Path, verb: str, body: bytes, **extra: str
) -> subprocess.CompletedProcess[bytes]:
    """The relay as the reconciler starts it: no site, the file itself."""
    return subprocess.run(
        [sys.executable, "-E", "-s", "-S", relay.__file__, verb],
        input=body, capture_output=True, env=relay_env(data, **extra),
        timeout=120, check=False,
    )  # fmt: skip


def agent_dir(tmp_path: Path) -> Path:
    data = tmp_path / "agent"
    data.mkdir()
    (data / "agent.json").write_text(json.dumps({"host": "ams-1"}))
    return data


GONE = {
    "id": "app.web/machine[ams#1]:delete", "kind": "machine", "resource_id": "web/ams#1@x",
    "verb": "delete", "spec": None, "etag": None, "expect": "sha256:x",
}  # fmt: skip


def outcomes(out: bytes) -> list[str]:
    result = json.loads(out.splitlines()[-1])["result"]
    return [r["outcome"] for r in result["results"]]


def test_relay_without_serve_answers_in_process(tmp_path: Path) -> None:
    data = agent_dir(tmp_path)
    done = run_relay(data, "apply", request(GONE))
    assert done.returncode == 0, done.stderr
    assert outcomes(done.stdout) == ["already"] and done.stderr == b""
    refused = run_relay(data, "apply", request(GONE), FLEET_AGENT_RELAY="only")
    assert refused.returncode == 1 and b"no supervisor" in refused.stderr


@pytest.mark.root
def test_real_serve_answers_through_its_channel(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (serve runs in a network namespace of its own)")
    data = agent_dir(tmp_path)
    with open(tmp_path / "serve.log", "wb") as log:
        serve = subprocess.Popen(
            ["unshare", "--net", FLEET_AGENT, "serve", "--observe-port", "0"],
            env=relay_env(data), stdout=log, stderr=log,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (data / "agent.sock").exists():
            alive = serve.poll() is None and time.monotonic() < deadline
            assert alive, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        done = run_relay(data, "apply", request(GONE), FLEET_AGENT_RELAY="only")
        assert done.returncode == 0, done.stderr
        assert outcomes(done.stdout) == ["already"]
        seen = run_relay(data, "observe", b'{"protocol_version": 1}', FLEET_AGENT_RELAY="only")
        assert seen.returncode == 0 and json.loads(seen.stdout)["host"] == "ams-1"
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    assert not (data / "agent.sock").exists()  # the forker went with serve
    after = run_relay(data, "apply", request(GONE))
    assert after.returncode == 0 and outcomes(after.stdout) == ["already"]
