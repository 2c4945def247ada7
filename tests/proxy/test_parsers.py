"""Parsers of HAProxy's answers, against output recorded from the real HAProxy 2.6."""

from __future__ import annotations

from pathlib import Path

from providers.proxy import reload, runtime

RECORDED = Path(__file__).with_name("recorded")


def test_show_servers_state() -> None:
    states = runtime.parse_servers_state((RECORDED / "show-servers-state.txt").read_text())
    assert [(s.backend, s.name, s.port, s.weight) for s in states] == [
        ("be_web_0", "sea.1", 8001, 100),
        ("be_web_0", "sea.2", 8002, 0),
        ("be_web_0", "ams.1", 8003, 100),
    ]
    assert all(s.op_state == 2 and not s.maintenance for s in states)


def test_show_stat_keeps_servers_only() -> None:
    stats = runtime.parse_stat((RECORDED / "show-stat.csv").read_text())
    assert [(s.backend, s.name) for s in stats] == [
        ("be_web_0", "sea.1"),
        ("be_web_0", "sea.2"),
        ("be_web_0", "ams.1"),
    ]
    sea1, sea2, _ = stats
    assert sea1.total == 12 and sea1.last_session_s == 0 and sea1.last_change_s == 9
    assert sea2.last_session_s == -1 and sea2.current == 0


def test_show_proc() -> None:
    procs = reload.parse_show_proc((RECORDED / "show-proc.txt").read_text())
    assert [(p.pid, p.kind, p.reloads, p.old) for p in procs] == [
        (587, "master", 1, False),
        (751, "worker", 0, False),
        (589, "worker", 1, True),  # the old worker, finishing its requests after the reload
    ]


def test_success_answers() -> None:
    assert runtime.succeeded("add server b/s 1.2.3.4:80", "New server registered.\n")
    assert not runtime.succeeded("add server b/s x:80", "Invalid address 'x'\n")
    assert runtime.succeeded("del server b/s", "Server deleted.")
    assert not runtime.succeeded(
        "del server b/s", "Only servers in maintenance mode can be deleted."
    )
    assert runtime.succeeded("enable server b/s", "")
    assert not runtime.succeeded("enable server b/x", "No such server.")
    assert runtime.succeeded(
        "set server b/s addr 1.2.3.4 port 81",
        "IP changed from '1.2.3.4' to '1.2.3.4', port changed from '80' to '81' "
        "by 'stats socket command'",
    )


def test_a_server_disabled_in_the_configuration_then_enabled_is_not_in_maintenance() -> None:
    # what HAProxy 2.6 answers for a waker rendered `disabled` (5: CMAINT|FMAINT), and
    # after `enable server` (4: CMAINT stays, only a record of the configuration)
    def state(admin: int) -> runtime.ServerState:
        return runtime.ServerState("be_web_0", "waker", "127.0.0.1", 20000, 2, admin, 100)

    assert state(0x05).maintenance and state(0x01).maintenance and state(0x20).maintenance
    assert not state(0x04).maintenance and not state(0x08).maintenance
