"""The operator commands next to a running service: alerts, silence, ack, rules check/test.

They work on the store file the service uses; the service picks up silences and acks at its
next evaluation (shown with the engine here, in the same process, on a simulated clock).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from farmwatch.alerting.dispatch import Timers
from farmwatch.alerting.engine import AlertEngine
from farmwatch.alerting.state import AlertDB
from farmwatch.cli import main
from farmwatch.clock import SimClock
from farmwatch.model import Batch, labels
from farmwatch.store.sqlite import SQLiteStore
from test_alert_lifecycle import SetRule


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "farmwatch.toml"
    cfg.write_text('[store]\npath = "farm.db"\n[alerting]\nshipped_rules = false\n')
    return cfg


def _engine(store: SQLiteStore, rule: SetRule, clock: SimClock) -> AlertEngine:
    return AlertEngine([rule], None, AlertDB(store), timers=Timers(group_wait=0), notifiers=["chat"], clock=clock)


def test_silence_add_list_expire(config: Path, capsys) -> None:
    assert main(["silence", "add", "unit=hlt03", "alertname=~Hlt.*", "--for", "2h", "--comment", "disk swap",
                 "-c", str(config), "--by", "kato"]) == 0
    out = capsys.readouterr().out
    sid = out.split()[1].rstrip(":")
    assert "unit=hlt03 alertname=~Hlt.*" in out and "disk swap" in out
    assert main(["silence", "list", "-c", str(config)]) == 0
    listed = capsys.readouterr().out
    assert sid in listed and "active" in listed and "by kato: disk swap" in listed
    assert main(["silence", "expire", sid[:5], "-c", str(config)]) == 0
    assert main(["silence", "list", "-c", str(config)]) == 0
    assert sid not in capsys.readouterr().out.split("expired\n", 1)[-1]
    assert main(["silence", "list", "--all", "-c", str(config)]) == 0
    assert "expired" in capsys.readouterr().out


def test_silence_with_a_bad_matcher_is_one_clear_line(config: Path, capsys) -> None:
    assert main(["silence", "add", "unit", "--for", "2h", "--comment", "x", "-c", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "farmwatch silence add: bad label matcher 'unit': expected label=value, label!=value, " \
                  "label=~regex, label!~regex, label*=glob or label!*=glob"


def test_a_silence_from_the_shell_mutes_the_running_engine(config: Path) -> None:
    clock = SimClock(time.time())
    store = SQLiteStore(config.parent / "farm.db", clock=clock)
    rule = SetRule("HltInputStalled")
    engine = _engine(store, rule, clock)
    rule.on[labels(unit="hlt03")] = 0
    main(["silence", "add", "unit=hlt03", "--for", "1h", "--comment", "known", "-c", str(config)])
    clock.advance(5)
    result = engine.evaluate()
    assert result.notifications == []
    (alert,) = engine.tracker.alerts.values()
    assert alert.silenced_by is not None


def test_ack_and_alerts_listing(config: Path, capsys) -> None:
    clock = SimClock(time.time())
    store = SQLiteStore(config.parent / "farm.db", clock=clock)
    rule = SetRule("HltInputStalled")
    engine = _engine(store, rule, clock)
    rule.on[labels(unit="hlt01")] = 0
    rule.on[labels(unit="hlt02")] = 0
    clock.advance(5)
    engine.evaluate()
    assert main(["alerts", "-c", str(config), "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {tuple(r["labels"][0]) for r in rows} == {("unit", "hlt01"), ("unit", "hlt02")}
    assert all(r["state"] == "firing" for r in rows)

    assert main(["ack", "unit=hlt02", "--comment", "on it", "--by", "shifter", "-c", str(config)]) == 0
    assert "acknowledged" in capsys.readouterr().out
    clock.advance(5)
    engine.evaluate()
    acked = {dict(a.labels)["unit"]: a.acked_by for a in engine.tracker.alerts.values()}
    assert acked == {"hlt01": None, "hlt02": "shifter"}
    assert main(["alerts", "-c", str(config)]) == 0
    table = capsys.readouterr().out
    assert "acked by shifter" in table and "HltInputStalled" in table

    assert main(["ack", "unit=hlt09", "-c", str(config)]) == 1
    assert "no active alert matches unit=hlt09" in capsys.readouterr().err

    rule.on.clear()
    clock.advance(5)
    engine.evaluate()
    assert main(["alerts", "--history", "-c", str(config)]) == 0
    history = capsys.readouterr().out
    assert history.count("firing") == 2 and history.count("resolved") == 2 and "acked" in history


RATE_RULE = """
[[rule]]
name = "UnitInputStalled"
kind = "threshold"
series = "hlt.input.received_events:rate"
match = {app = "distributor"}
by = ["unit"]
op = "<"
value = 1
for = "20s"
severity = "critical"
summary = "Unit {unit}: input stalled ({value:.0f} events/s)"
"""


def test_rules_test_replays_stored_data_and_prints_what_would_have_fired(config: Path, tmp_path: Path,
                                                                          capsys) -> None:
    rules = tmp_path / "stall.toml"
    rules.write_text(RATE_RULE)
    start = 1_763_800_000.0  # 2025-11-22T08:26:40Z
    with SQLiteStore(config.parent / "farm.db") as store:
        for i in range(600):  # 10 minutes at 1 Hz; hlt02 stalls from minute 4 to minute 6
            t = start + i
            for unit in ("hlt01", "hlt02"):
                stalled = unit == "hlt02" and 240 <= i < 360
                b = Batch(t)
                b.add(("hlt.input.received_events:rate", labels(unit=unit, app="distributor")), 0.0 if stalled else 950.0)
                store.write(b)
    args = ["rules", "test", "-c", str(config), str(rules), "--from", "2025-11-22T08:26:40", "--to",
            "2025-11-22T08:36:40", "--step", "5s"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    fired = [line for line in out if "FIRING" in line]
    resolved = [line for line in out if "RESOLVED" in line]
    assert len(fired) == 1 and "unit=hlt02" in fired[0] and "input stalled (0 events/s)" in fired[0]
    assert fired[0].startswith("2025-11-22 08:31:00Z")  # the stall starts 08:30:40, + for 20s
    assert len(resolved) == 1 and resolved[0].startswith("2025-11-22 08:32:40Z")
    assert out[-1].endswith("1 alert(s) fired, 2 notification(s) would have been sent")


def test_rules_check_reports_every_problem_of_a_bad_rule_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "X"\nkind = "threshold"\nop = "<<"\n')
    assert main(["rules", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 2 and all(line.startswith(f"{bad}: rule[0] (X): ") for line in err)
