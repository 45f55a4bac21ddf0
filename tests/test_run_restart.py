"""A restart of ``farmwatch run`` while an incident goes on (issue 15 item 1): real processes, a
simulated HLT unit whose distributor's monitor endpoint is mute, the Rocket.Chat test server.

Before the fix the first evaluation after a start saw an empty window: every live alert resolved
(the message was edited to RESOLVED) and fired again a few seconds later. Now the window starts
from the store, and an alert that was live before the start is resolved only on data that
arrived after it; so the incident stays one message, unedited, until the fault ends.

Two rules share the incident (``group_by = ["unit"]``): a ``down`` rule, which the window restored
from the store keeps firing (a stale ``up`` is down), and a threshold on ``up`` whose ``fresh`` is
shorter than the time the service is stopped, so that right after the start it has no value at
all: only the start-up hold keeps that alert from resolving.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farmwatch.sim import SimUnit
from farmwatch.sim.chat import ChatServer, StoredMessage
from run_helpers import chat, service_config, unit, wait  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(240)

RULES = """
[defaults]
group_by = ["unit"]
severity = "critical"

[[rule]]
name = "MonitorDown"
kind = "down"
match = ["app=distributor"]
for = "2s"
summary = "Unit {unit}: the {app} does not answer"

[[rule]]
name = "MonitorNotAnswering"
kind = "threshold"
series = "up"
match = ["app=distributor"]
fresh = "2s"
op = "<"
value = 1
for = "2s"
summary = "Unit {unit}: the {app} gave no reply this cycle"
"""

STOPPED = 5.0
"""Seconds the service stays stopped: longer than the threshold rule's ``fresh``."""
AFTER_START = 10.0
"""Seconds watched after each start: the old code resolved within ~2 s and fired again ~3 s later."""


def _resolved(text: str) -> bool:
    return "RESOLVED" in text.splitlines()[0] if text else False


def _one_message(chat: ChatServer) -> StoredMessage:
    messages = chat.room_messages("hlt-alerts")
    assert len(messages) == 1, [m.text.splitlines()[0] for m in messages]
    return messages[0]


@pytest.mark.slow
def test_a_restart_while_the_incident_goes_on_neither_resolves_nor_reposts_it(tmp_path: Path, unit: SimUnit,
                                                                                chat: ChatServer) -> None:
    cfg, env = service_config(tmp_path, unit, chat, RULES)
    cmd = [sys.executable, "-m", "farmwatch", "run", "-c", str(cfg)]
    logs: list[str] = []

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def finish(proc: subprocess.Popen, sig: int) -> int:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        logs.append(err)
        return proc.returncode

    proc = start()
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert chat.room_messages("hlt-alerts") == []
        unit.set_reply("distributor", "mute")
        wait(lambda: any("2 alerts" in m.text for m in chat.room_messages("hlt-alerts")), 30,
              "one FIRING message with both alerts")
        time.sleep(2)
        before = _one_message(chat)
        versions = len(before.history)
        assert not any(_resolved(text) for _, text, _ in before.history)

        for sig in (signal.SIGTERM, signal.SIGKILL):
            code = finish(proc, sig)
            assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), logs[-1]
            time.sleep(STOPPED)  # the fault goes on meanwhile
            proc = start()
            time.sleep(AFTER_START)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            msg = _one_message(chat)
            history = [text.splitlines()[0] for _, text, _ in msg.history]
            assert len(msg.history) == versions, f"edited after a {signal.Signals(sig).name} restart: {history}"
            assert msg.id == before.id and "FIRING" in msg.text and "2 alerts" in msg.text

        unit.set_reply("distributor", "normal")
        wait(lambda: _resolved(_one_message(chat).text), 30, "the RESOLVED edit")
        time.sleep(3)  # a second message or another edit would come now
    finally:
        if proc.poll() is None:
            finish(proc, signal.SIGTERM)
    assert proc.returncode == 0, logs[-1]
    msg = _one_message(chat)
    heads = [text.splitlines()[0] for _, text, _ in msg.history]
    assert [_resolved(h) for h in heads] == [False] * (len(heads) - 1) + [True], heads
    log = "".join(logs)
    assert log.count("RESOLVED MonitorDown") == 1 and log.count("RESOLVED MonitorNotAnswering") == 1, log
    assert log.count("FIRING MonitorDown") == 1 and log.count("FIRING MonitorNotAnswering") == 1, log


def test_a_restored_alert_resolves_on_fresh_data_or_after_the_rules_lookback(tmp_path: Path) -> None:
    """The hold in-process on a simulated clock: the fault ended while the service was down, so
    the first two samples after the start resolve the alert; without any data it resolves once
    the rule's lookback has passed since the start (data gone that long is gone)."""
    from farmwatch.alerting.engine import AlertEngine
    from farmwatch.alerting.rules import parse_rules
    from farmwatch.alerting.state import AlertDB
    from farmwatch.clock import SimClock
    from farmwatch.model import AlertState, Batch, labels
    from farmwatch.store.sqlite import SQLiteStore
    from farmwatch.store.window import Window

    (rule,) = parse_rules('[[rule]]\nname = "Down"\nkind = "threshold"\nseries = "up"\nfresh = "10s"\nop = "<"\nvalue = 1\n')
    clock = SimClock(1_000_000.0)
    up = ("up", labels(unit="hlt01", app="distributor"))
    with SQLiteStore(tmp_path / "fw.db", clock=clock) as store:
        def engine() -> tuple[AlertEngine, Window]:
            window = Window(60.0)
            return AlertEngine([rule], window, AlertDB(store), clock=clock), window

        first, window = engine()
        batch = Batch(clock.time())
        batch.add(up, 0.0)
        window.ingest([batch])
        first.evaluate()
        assert [a.state for a in first.tracker.alerts.values()] == [AlertState.FIRING]
        for fresh_data in (True, False):
            clock.advance(30)  # stopped for longer than `fresh`
            started = clock.time()
            restarted, window = engine()
            restarted.hold_restored(started)
            for step in range(3):
                if fresh_data and step:
                    batch = Batch(clock.time())
                    batch.add(up, 1.0)
                    window.ingest([batch])
                restarted.evaluate()
                (alert,) = restarted.tracker.alerts.values()
                if fresh_data:  # the second fresh sample decides at once
                    assert alert.state == (AlertState.RESOLVED if step == 2 else AlertState.FIRING), step
                else:
                    assert alert.state == AlertState.FIRING, step
                clock.advance(1)
            if not fresh_data:
                clock.advance(10)  # the rule's lookback (`fresh`) since the start
                restarted.evaluate()
                assert alert.state == AlertState.RESOLVED
            else:  # fire it again for the second round
                batch = Batch(clock.time())
                batch.add(up, 0.0)
                window.ingest([batch])
                restarted.evaluate()
                assert restarted.tracker.alerts[alert.fingerprint].state == AlertState.FIRING
