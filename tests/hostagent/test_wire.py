"""The agent's wire format: JSON in, JSON lines out, one error line on failure."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hostagent import config, wire
from hostagent.agent import Agent, Facts
from hostagent.inventory import Inventory
from tests.hostagent.test_agent import Recorder


def make(tmp_path: Path) -> Agent:
    facts = Facts("ams-1", 2, 2048, {}, "qemu", "0.1.0", None)
    return Agent(Inventory(tmp_path), {"machine": Recorder()}, facts)


def run(tmp_path: Path, verb: str, request: str) -> tuple[int, list[dict[str, object]]]:
    out = io.StringIO()
    code = wire.serve_request(lambda: make(tmp_path), verb, io.StringIO(request), out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_apply_streams_events_then_one_result(tmp_path: Path) -> None:
    request = {
        "protocol_version": 1,
        "host": "ams-1",
        "actions": [
            {
                "id": "a1",
                "kind": "machine",
                "resource_id": "m",
                "verb": "create",
                "spec": {},
                "etag": "e1",
                "expect": None,
            },
        ],
    }
    code, lines = run(tmp_path, "apply", json.dumps(request))
    assert code == 0
    assert [next(iter(line)) for line in lines] == ["event", "result"]
    result = lines[-1]["result"]
    assert isinstance(result, dict)
    assert result["results"] == [{"action": "a1", "outcome": "ok", "etag": "e1", "message": ""}]


def test_observe_answers_one_line(tmp_path: Path) -> None:
    code, lines = run(tmp_path, "observe", '{"protocol_version": 1}')
    assert code == 0 and len(lines) == 1
    assert lines[0]["host"] == "ams-1" and lines[0]["generation"] == 0


def test_bad_json_and_wrong_protocol_are_one_error_line(tmp_path: Path) -> None:
    code, lines = run(tmp_path, "observe", "{nope")
    assert code == 1 and lines[0]["error"]["type"] == "request"  # type: ignore[index]
    code, lines = run(tmp_path, "observe", '{"protocol_version": 7}')
    assert code == 1 and lines[0]["error"]["type"] == "protocol"  # type: ignore[index]


def test_unbootstrapped_host_says_so(tmp_path: Path) -> None:
    out = io.StringIO()

    def make_agent() -> Agent:
        config.load(tmp_path)
        raise AssertionError("unreachable")

    code = wire.serve_request(make_agent, "observe", io.StringIO("{}"), out)
    assert code == 1
    error = json.loads(out.getvalue())["error"]
    assert error["type"] == "config"
    assert "was not bootstrapped" in error["message"]


def test_config_round_trip(tmp_path: Path) -> None:
    saved = config.Config(host="sea-2", data_dir=tmp_path, gpus={"l4": 1})
    config.save(saved)
    loaded = config.load(tmp_path)
    assert loaded.host == "sea-2" and loaded.gpus == {"l4": 1}
