"""The rule kinds on log templates, against a real store fed by the real log source: a new kind of
error is reported once, with its template and an example; known errors, learnt templates and a
generalised template are not; a template back after more than ``unseen`` is new again. The rate
kind through the detector: a jump of a known template's rate fires, its normal noise does not."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from farmwatch.alerting.rules import parse_rules
from farmwatch.store.window import Window
from farmwatch.clock import SimClock
from farmwatch.logtemplates import COUNT
from farmwatch.model import Batch, labels
from farmwatch.service.runner import Runner
from farmwatch.sources.logfiles.config import LogFilesConfig
from farmwatch.sources.logfiles.source import LogFilesSource
from farmwatch.store import SQLiteStore
from farmwatch.store.logs import LogFeed

T0 = 1_764_496_800.0
SHIPPED = Path(__file__).resolve().parents[1] / "alerts" / "logs.toml"


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + ".000Z"


class Node:
    """One node's log file, tailed into a real store; the shipped new-pattern rule on the store."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = SimClock(T0)
        self.log = tmp_path / "hltwk07" / "worker.log"
        self.log.parent.mkdir()
        self.store = SQLiteStore(tmp_path / "fw.db", clock=self.clock)
        cfg = LogFilesConfig(kind="logfiles", paths=[str(tmp_path / "*" / "worker.log")], multiline_wait="0s",
                             path_pattern=r"/(?P<host>hltwk\d+)/")
        self.runner = Runner([LogFilesSource("logs", cfg, clock=self.clock)], self.store, clock=self.clock)
        rules = parse_rules(SHIPPED.read_text(), str(SHIPPED))
        self.rule = next(r for r in rules if r.name == "LogNewErrorPattern")
        self.rule.spec.bind_store(self.store)
        self.window = Window(900.0)
        self.feed = LogFeed(self.store, 900.0)
        self.n = 0

    def write(self, *messages: str) -> None:
        with open(self.log, "a") as f:
            for m in messages:
                self.n += 1
                f.write(f"{_stamp(self.clock.time())} {m} n={self.n}\n")

    def normal(self) -> None:
        self.write("[INFO] Processed 120 events", "[ERROR] No event from tcp://hltin01:5003 for 3 s",
                   "[ERROR] Exception in event processing: ValueError: bad header")

    def step(self, seconds: float = 10.0) -> list:
        self.runner.run_once()
        now = self.clock.time()
        self.window.ingest_logs(self.feed(now))
        self.window.prune(now)
        found = self.rule.evaluate(self.window, now)
        self.clock.advance(seconds)
        return found


def test_a_new_kind_of_error_is_reported_once_with_its_template_and_an_example(tmp_path: Path) -> None:
    node = Node(tmp_path)
    for _ in range(60):  # 10 minutes of the usual errors: learnt, then known
        node.normal()
        assert node.step() == []
    fired = []
    for i in range(30):  # a new exception on this node, every 10 s for 5 minutes
        node.normal()
        node.write(f"[FATAL] Segmentation violation in module HLTZMQ2Ds at 0x7f3a{i:04x}")
        fired.append(node.step())
    assert all(len(f) == 1 for f in fired)
    active = fired[-1][0]
    assert {active.labels[i][0] for i in range(len(active.labels))} == {"host", "service", "template"}
    assert dict(active.labels)["host"] == "hltwk07"
    assert active.values["template"] == "Segmentation violation in module <*> at <*> n=<*>"
    assert active.values["example"].startswith("Segmentation violation in module HLTZMQ2Ds at 0x7f3a")
    assert len({f[0].labels for f in fired}) == 1  # one alert, however often the error repeats
    summary, description = node.rule.render(active)
    assert summary == "hltwk07: a new kind of error in the worker log"
    for _ in range(40):  # it goes on, but is no longer new after the rule's window (10 min)
        node.normal()
        node.write("[FATAL] Segmentation violation in module HLTZMQ2Ds at 0x7f3a0000")
        found = node.step(30.0)
    assert found == []
    # gone for 8 days (more than unseen = 7d), then back: new again
    node.clock.advance(8 * 86400.0)
    node.write("[FATAL] Segmentation violation in module HLTZMQ2Ds at 0x7f3a0001")
    assert [dict(a.labels)["template"] for a in node.step()] == [active.labels[-1][1]]
    node.store.close()


def test_templates_met_while_learning_and_generalised_ones_are_not_new(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("[ERROR] lost connection to peer alice")  # first minutes: learnt
    for _ in range(40):
        node.normal()
        assert node.step() == []
    # the position that held one peer name gets many: the template generalises (a new id) but is not news
    for peer in ("bob", "carol", "dave", "erin", "frank"):
        node.write(f"[ERROR] lost connection to peer {peer}")
    found = node.step()
    with node.store.transaction("read") as conn:
        texts = {t for (t,) in conn.execute("SELECT template FROM log_templates")}
    assert "lost connection to peer <*> n=<*>" in texts
    # bob..dave were new words at a fixed position (new templates), erin/frank the generalised one
    assert {a.values["template"] for a in found} == {f"lost connection to peer {p} n=<*>" for p in ("bob", "carol", "dave")}
    node.store.close()


def _counts(window: Window, now: float, value: float, template: str = "t1") -> None:
    b = Batch(now)
    b.add((COUNT, labels(template=template, host="hltwk07", service="worker", level="error", unit="hlt02")), value)
    window.ingest([b])


def test_a_jump_in_a_known_templates_rate_fires_through_the_detector_and_noise_does_not() -> None:
    rule = next(r for r in parse_rules(SHIPPED.read_text(), str(SHIPPED)) if r.name == "LogPatternRateAnomalous")
    rng = np.random.default_rng(3)
    window = Window(4000.0)
    now = T0
    state = Batch(now)
    state.add(("daq.run_state", labels(node="RUNCONTROL")), "RUNNING")
    window.ingest([state])
    fired_normal = []
    for _ in range(360):  # an hour of a few errors per 10 s cycle
        now += 10.0
        _counts(window, now, float(rng.poisson(1.5)))
        fired_normal += rule.spec.find(window, now, rule.counts)
    assert fired_normal == []
    fired = []
    for _ in range(12):  # a retry loop: 15 per cycle
        now += 10.0
        _counts(window, now, float(rng.poisson(15)))
        fired += rule.spec.find(window, now, rule.counts)
    assert fired and dict(fired[-1].labels)["host"] == "hltwk07" and fired[-1].values["score"] >= 0.999
    assert fired[-1].values["count"] > 3 * fired[-1].values["usual"]
    # a template seen for the first time has no usual rate: the new-pattern rule's business, not this one's
    for _ in range(12):
        now += 10.0
        _counts(window, now, 30.0, template="t2")
    assert all(dict(a.labels)["template"] != "t2" for a in rule.spec.find(window, now, rule.counts))
