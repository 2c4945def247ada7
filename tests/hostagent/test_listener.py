"""The supervisor's observe port: a real socket on loopback, a real Agent and inventory.

The handler is the recording double from test_agent; the listener, the wire
format and the agent's rules are the real ones.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent import listener, wire
from hostagent.agent import Agent
from hostagent.inventory import Inventory
from tests.hostagent.test_agent import FACTS, Recorder, action, apply


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return Agent(Inventory(tmp_path), {"machine": Recorder()}, FACTS)


@pytest.fixture
def port(agent: Agent) -> Iterator[int]:
    with listener.ObserveListener(agent, port=0) as lst:
        yield lst.port


def ask(port: int, payload: bytes) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):  # the listener closes after one answer
            data += chunk
    lines = data.splitlines()
    assert len(lines) == 1
    answer: dict[str, Any] = json.loads(lines[0])
    return answer


def request(**extra: Any) -> bytes:
    return json.dumps({"protocol_version": 1, "host": "ams-1", **extra}).encode() + b"\n"


def test_observe_on_the_port_equals_the_exec_answer(agent: Agent, port: int) -> None:
    apply(agent, action("a1", "create", "e1", None))
    answer = ask(port, request())
    assert answer == agent.observe(json.loads(request()))
    assert answer["host"] == "ams-1" and answer["generation"] >= 1
    assert [(r["id"], r["etag"]) for r in answer["resources"]] == [("web/ams#1", "e1")]
    # The inventory is read per request, not once when the listener started.
    apply(agent, action("a2", "delete", None, "e1"))
    again = ask(port, request())
    assert again["resources"] == [] and again["generation"] > answer["generation"]


def test_bad_requests_get_one_error_line(port: int) -> None:
    assert ask(port, b"{not json\n")["error"]["type"] == "request"
    assert ask(port, request(protocol_version=0))["error"]["type"] == "protocol"
    assert ask(port, request(host="sea-1"))["error"]["type"] == "host"
    assert ask(port, request()[:-1])["error"]["type"] == "request"  # EOF, no newline


def test_many_clients_at_once_and_supervision_is_not_blocked(agent: Agent, port: int) -> None:
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one() -> None:
        a = ask(port, request())
        with lock:
            answers.append(a)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    # A client that connects and says nothing holds one connection thread, no more.
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        for t in threads:
            t.join(10)
        assert len(answers) == 12 and all(a["host"] == "ams-1" for a in answers)


def test_loopback_only_and_a_taken_port_is_skipped(agent: Agent) -> None:
    with listener.ObserveListener(agent, port=0) as lst:
        assert lst.address == "127.0.0.1"
        assert listener.start(agent, address="127.0.0.1", port=lst.port) is None


def test_close_stops_accepting(agent: Agent) -> None:
    lst = listener.ObserveListener(agent, port=0).start()
    p = lst.port
    lst.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p), timeout=2).close()


def test_observe_line_wants_one_line() -> None:
    def boom() -> Agent:
        raise AssertionError("not reached")

    assert json.loads(wire.observe_line(boom, b'{"a": 1}'))["error"]["type"] == "request"
