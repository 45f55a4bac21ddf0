"""``farmwatch run`` and ``farmwatch watch`` as services: subprocesses, real sockets, real HTTP chat.

A simulated unit stalls its input; the service must post one message to the chat server and,
after the input resumes, edit it to resolved. ``watch`` does the same from a store that a
separate ``collect`` process writes (the split deployment).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farmwatch.sim import SimUnit
from farmwatch.sim.chat import ChatServer
from run_helpers import chat, service_config, unit, wait  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(150)

RULES = """
[[rule]]
name = "UnitInputStalled"
kind = "threshold"
series = "hlt.input.received_events:rate"
match = {app = "distributor", host = ""}
by = ["unit"]
op = "<"
value = 1
for = "2s"
severity = "critical"
summary = "Unit {unit}: input stalled ({value:.0f} events/s)"
"""


def _config(tmp_path: Path, unit: SimUnit, chat: ChatServer) -> tuple[Path, dict[str, str]]:
    return service_config(tmp_path, unit, chat, RULES)


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def _incident(chat: ChatServer, unit: SimUnit, procs: list[subprocess.Popen]) -> None:
    def alive() -> None:
        for p in procs:
            assert p.poll() is None, f"service exited early: {p.stderr.read() if p.stderr else ''}"

    time.sleep(4)  # a clean start: nothing to say
    alive()
    assert chat.room_messages("hlt-alerts") == []
    unit.stall_input(True)
    wait(lambda: any("FIRING" in m.text for m in chat.room_messages("hlt-alerts")), 30, "the FIRING message")
    unit.stall_input(False)
    wait(lambda: any("RESOLVED" in m.text for m in chat.room_messages("hlt-alerts")), 30, "the RESOLVED edit")
    alive()
    (msg,) = chat.room_messages("hlt-alerts")
    assert "Unit hlt07: input stalled (0 events/s)" in msg.text and len(msg.history) == 2


@pytest.mark.slow
def test_run_collects_evaluates_and_notifies_in_one_process(tmp_path: Path, unit: SimUnit, chat: ChatServer) -> None:
    cfg, env = _config(tmp_path, unit, chat)
    proc = subprocess.Popen([sys.executable, "-m", "farmwatch", "run", "-c", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _incident(chat, unit, [proc])
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert env["TEST_CHAT_TOKEN"] not in err
    assert "FIRING UnitInputStalled" in err and "RESOLVED UnitInputStalled" in err


@pytest.mark.slow
def test_watch_alerts_from_the_store_that_a_collector_writes(tmp_path: Path, unit: SimUnit, chat: ChatServer) -> None:
    cfg, env = _config(tmp_path, unit, chat)
    cmd = [sys.executable, "-m", "farmwatch"]
    collect = subprocess.Popen(cmd + ["collect", "-c", str(cfg)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait(lambda: (tmp_path / "fw.db").exists(), 20, "the collector's store")
    watch = subprocess.Popen(cmd + ["watch", "-c", str(cfg)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _incident(chat, unit, [collect, watch])
    finally:
        results = [_stop(watch), _stop(collect)]
    assert [code for code, _ in results] == [0, 0], results


def test_kill_9_while_a_post_is_in_flight_gives_no_second_message(tmp_path: Path, unit: SimUnit, chat: ChatServer) -> None:
    """Issue 15 item 2 with a real process: the chat server has the FIRING post but holds its
    answer back; ``farmwatch run`` is killed (-9) meanwhile. The next process sends the queued
    notification again, with the same message id: one message, edited to RESOLVED in the end."""
    cfg, env = _config(tmp_path, unit, chat)
    cmd = [sys.executable, "-m", "farmwatch", "run", "-c", str(cfg)]
    chat.slow(60, endpoints=("chat.postMessage", "chat.sendMessage"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        unit.stall_input(True)
        wait(lambda: any("FIRING" in m.text for m in chat.room_messages("hlt-alerts")), 30, "the FIRING post to arrive")
        proc.send_signal(signal.SIGKILL)  # its answer is still held back
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    chat.slow(0)
    unit.stall_input(False)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait(lambda: any("RESOLVED" in m.text for m in chat.room_messages("hlt-alerts")), 60, "the RESOLVED edit")
        time.sleep(2)  # a second message would come now
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    (msg,) = chat.room_messages("hlt-alerts")
    assert "FIRING" in msg.history[0][1] and "RESOLVED" in msg.text
    assert "already has message" in err  # the retry found the post of the killed process
