"""Anomaly scoring inside ``farmwatch run``, end to end (farmwatch.detect.scorer + the alert engine).

Everything is real except time: a simulated HLT unit on loopback sockets, polled by the real
``hlt_zmq`` source through the runner into a real SQLite store, a family model trained from that
store with ``train_from_store`` and saved to disk, and the alerting pipeline built from a config
file by ``farmwatch.service.assemble.build_alerting`` exactly as ``farmwatch run`` builds it (the runner
feeds the window, the engine scores before its rules, the shipped ``AnomalyScoreHigh`` rule reads
the scores). A ``SimClock`` moves time, so 25 simulated minutes take seconds.

The unit's input rate follows the luminosity (200–400 Hz over ten minutes), so "normal" is a
range that all nodes move through together. The fault is the slow kind thresholds miss: one worker
node loses CPU gradually (``slow_node`` from 100 % to 45 % over four minutes), so the distributor
sends it fewer events while its peers take up the slack: still inside their normal range, but
no longer like each other.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from farmwatch.service.assemble import build_alerting
from farmwatch.alerting.state import AlertDB
from farmwatch.clock import SimClock
from farmwatch.config.loader import load as load_config
from farmwatch.detect import save
from farmwatch.detect.family import latest_features
from farmwatch.detect.scorer import SCORE
from farmwatch.detect.training import entity_frames, train_from_store
from farmwatch.model import AlertState
from farmwatch.service.runner import Runner
from farmwatch.sim import SimUnit
from farmwatch.sources.hlt_zmq.source import HltZmqSource
from farmwatch.store.sqlite import SQLiteStore

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
POLL = 2.0
HISTORY = 15 * 60.0      # clean history the model is trained on
SLOW = "hltwk04"

DETECT = """
[detect]
models = "models"
[detect.families.worker]
series = ["hlt.output.sent_events:rate", "hlt.input.received_events:rate"]
match = ["app=~distributor|collector", "host=~hltwk.*"]
entity = ["unit", "host"]
window = 30
step = 1
freq = "4s"
"""


def luminosity(t: float) -> float:
    """Events per second the event builder delivers at time ``t`` (slow, shared by all nodes)."""
    return 300.0 + 100.0 * math.sin(2 * math.pi * (t - START) / 600.0)


def write_config(folder: Path, unit: SimUnit, detect: str = DETECT) -> Path:
    path = folder / "farmwatch.toml"
    path.write_text(f'[store]\npath = "farmwatch.db"\n\n{detect}\n' + unit.config_toml("hlt", f"{POLL:g}s", "300ms"))
    return path


class Farm:
    """A unit, its source, the store and a clock: ``poll`` is one cycle as the runner does it."""

    def __init__(self, folder: Path) -> None:
        self.clock = SimClock(START)
        self.unit = SimUnit("hlt01", worker_nodes=6, workers_per_node=2, input_rate=300.0, clock=self.clock,
                            seed=3).start()
        self.config = write_config(folder, self.unit)
        self.settings = load_config(self.config)
        self.store = SQLiteStore(self.settings.store.path, clock=self.clock)
        self.source = HltZmqSource("hlt", self.settings.sources["hlt"], clock=self.clock)

    def run(self, seconds: float, runner: Runner, engine=None, each=None) -> None:
        end = self.clock.time() + seconds - 1e-9
        while self.clock.time() < end:
            runner.run_once()
            # The unit has just answered up to now: the new rate applies from here on.
            self.unit.input_rate = luminosity(self.clock.time())
            if engine is not None:
                engine.evaluate(self.clock.time())
            if each is not None:
                each(self.clock.time())
            self.clock.advance(POLL)

    def close(self) -> None:
        self.source.close()
        self.unit.stop()
        self.store.close()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """15 minutes of clean history in the store and the worker family trained on it and saved."""
    folder = tmp_path_factory.mktemp("detect-service")
    farm = Farm(folder)
    try:
        farm.run(HISTORY, Runner([farm.source], farm.store, clock=farm.clock))
        fam = farm.settings.detect.families["worker"]
        model = train_from_store(farm.store, "worker", fam, START, farm.clock.time(),
                                 alert_periods=AlertDB(farm.store).firing_periods(until=farm.clock.time()))
        save(model, farm.settings.detect.models / "worker")
        farm.model = model
        yield farm
    finally:
        farm.close()


def test_the_scorer_builds_the_same_features_as_training(farm):
    """The scorer's vectorised window (window → grid → features) equals what ``score_family`` gets
    from the same stored samples through ``entity_frames`` + ``latest_features`` (training's path)."""
    alerting = build_alerting(farm.settings, farm.store, clock=farm.clock, notifiers={}, persist=False)
    scorer = alerting.scorer
    now = START + HISTORY - POLL  # the last cycle of the clean history (whatever other tests ran before)
    alerting.window.load(farm.store, now - alerting.window.horizon, now, alerting.names())
    family = scorer.families[0]
    out = scorer.step(now)
    scores = {dict(k[1])["host"]: v for b in out for k, v in zip(b.keys, b.values) if k[0] == SCORE}

    fam = farm.settings.detect.families["worker"]
    end = math.floor(now / 4.0) * 4.0  # the scorer scores complete grid bins only: up to here
    frames = entity_frames(farm.store, fam, end - 40 * 4.0, end - 0.5)
    names, X = latest_features(family.model, frames, fam.freq)
    expected = {n.split("host=")[1]: e.score for n, e in zip(names, family.model.score_entities(X, names))}
    assert scorer.step(now + 1.0) == []  # the same bin is still filling: the scores stand
    assert sorted(scores) == sorted(expected) == farm.unit.nodes
    for host in expected:
        assert scores[host] == pytest.approx(expected[host], abs=1e-9), host
    # Clean data: nobody is anomalous, and the window kept only what rules and families read.
    assert max(scores.values()) < 0.99
    assert {k[0] for k in alerting.window.keys} <= {*fam.series, SCORE, "daq.run_state", "daq.run_state_since", "up",
                                                    *{n for r in alerting.rules for n in r.names()}}


def test_scoring_pauses_while_the_run_is_not_running_and_until_a_window_of_the_new_run(farm):
    """Models learn RUNNING only: a run stop must not look like every node failing at once. While the
    window knows a run state other than RUNNING nothing is scored, nor until two whole family windows
    (30 × 4 s) of the new run has passed; the pauses are counted. Without a run state (a site
    without run control) scoring goes on, as the other tests show."""
    from farmwatch.model import Batch, labels

    alerting = build_alerting(farm.settings, farm.store, clock=farm.clock, notifiers={}, persist=False)
    scorer, window = alerting.scorer, alerting.window
    assert {"daq.run_state", "daq.run_state_since"} <= scorer.names()
    now = START + HISTORY - POLL
    window.load(farm.store, now - window.horizon, now, alerting.names())
    assert scorer.step(now), "a window without a run state is scored"

    node = labels(node="RUNCONTROL")

    def state(value: str, since: float, at: float) -> None:
        window.ingest([Batch(at, [("daq.run_state", node), ("daq.run_state_since", node)], [value, since])])

    state("READY", now - 10, now)
    ended = scorer.step(now)  # the pause begins: every score series gets NaN (no alert lives on stale scores)
    assert {dict(k[1])["host"] for b in ended for k in b.keys} == set(farm.unit.nodes)
    assert all(math.isnan(v) for b in ended for v in b.values) and scorer.stats()["worker_paused_steps"] == 1
    state("RUNNING", now - 200, now)  # started 200 s ago: the first 2-minute window after it holds the start-up
    assert scorer.step(now) == [] and scorer.stats()["worker_paused_steps"] == 2
    assert scorer.stats()["worker_entities_scored"] == 0
    state("RUNNING", now - 245, now)
    scored = scorer.step(now)
    assert {dict(k[1])["host"] for b in scored for k in b.keys} == set(farm.unit.nodes)
    assert scorer.stats()["worker_paused_steps"] == 2


@pytest.mark.slow
def test_a_gradually_slowing_node_raises_its_score_and_fires_the_shipped_rule(farm, capsys):
    alerting = build_alerting(farm.settings, farm.store, clock=farm.clock, notifiers={})
    assert "AnomalyScoreHigh" in {r.name for r in alerting.rules}
    runner = Runner([farm.source], farm.store, clock=farm.clock, listeners=[alerting.window])
    scores: dict[str, list[float]] = {}
    fired: dict[str, object] = {}

    def record(now: float) -> None:
        batch = alerting.window.select_ids(SCORE)
        _, values = alerting.window.latest(batch, now, 1.0)
        for sid, v in zip(batch.tolist(), values.tolist()):
            if not math.isnan(v):
                scores.setdefault(alerting.window.label_dicts[sid]["host"], []).append(v)
        for a in alerting.engine.tracker.alerts.values():
            if a.rule == "AnomalyScoreHigh" and a.state == AlertState.FIRING:
                fired.setdefault(dict(a.labels)["host"], (now, a))

    farm.run(3 * 60.0, runner, alerting.engine, record)  # the window fills; scores of a clean unit
    clean_end = farm.clock.time()
    assert set(scores) == set(farm.unit.nodes) and not fired
    for factor in np.linspace(0.9, 0.45, 12):  # four minutes of a node losing CPU
        farm.unit.slow_node(SLOW, float(factor))
        farm.run(20.0, runner, alerting.engine, record)
    farm.run(2 * 60.0, runner, alerting.engine, record)

    assert list(fired) == [SLOW], f"fired for {list(fired)}"
    when, alert = fired[SLOW]
    labels = dict(alert.labels)
    assert labels["family"] == "worker" and labels["entity"] == f"hlt01/{SLOW}" and labels["unit"] == "hlt01"
    assert "explanation" not in labels                # one alert per entity, whatever explains it
    assert alert.values["metric"].endswith(":rate")   # the annotation: the rate metric explains it
    assert f"hlt01/{SLOW}" in alert.summary and alert.values["metric"] in alert.summary
    assert alert.values["explanation"].split(";")[0] in alert.description
    assert f"{alert.value:.3f}" in alert.summary and alert.value > 0.99
    assert when - clean_end < 4 * 60.0 + 60.0  # within the slow-down (plus `for`)
    others = [v for host, vs in scores.items() if host != SLOW for v in vs]
    assert np.median(others) < 0.9 and np.mean(np.asarray(others) >= 0.99) < 0.08
    assert max(scores[SLOW][-30:]) > 0.99

    # The scores and the explanation text are in the store too (notebooks, `farmwatch query`).
    stored = farm.store.query(SCORE, {"host": SLOW}, since=clean_end)
    assert stored["value"].dropna().between(0, 1).all() and stored["value"].max() > 0.99
    surprise = farm.store.query("anomaly.surprise", {"host": SLOW}, since=clean_end)["value"].dropna()
    assert surprise.max() > 2 and np.isfinite(surprise).all()   # -log10(1 - score): 2 at 0.99
    texts = farm.store.query("anomaly.explanation", {"host": SLOW}, since=clean_end)["state"].dropna()
    assert len(texts) and ":rate" in texts.iloc[-1] and "peers" in texts.iloc[-1]
    # The window of `run` keeps only its horizon (the runner feeds it; the engine forgets the rest).
    key = alerting.window.select("hlt.output.sent_events:rate", {"host": SLOW})[0]
    ts, _ = alerting.window.points(key, -math.inf)
    assert ts[0] >= farm.clock.time() - POLL - alerting.window.horizon
    stats = alerting.scorer.stats()
    assert stats["worker_entities_scored"] == 6 and stats["families_skipped"] == 0

    # Backtest: `farmwatch rules test` replays the stored samples; the trained model scores them
    # again (the stored scores are not reused) and the shipped rule fires for the same node.
    from farmwatch.cli import main

    fmt = "%Y-%m-%dT%H:%M:%S"
    args = ["rules", "test", "-c", str(farm.config), "--from", time.strftime(fmt, time.gmtime(clean_end - 60)),
            "--to", time.strftime(fmt, time.gmtime(farm.clock.time())), "--step", "4s"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    fired = [line for line in out if "FIRING" in line and "AnomalyScoreHigh" in line]
    assert len(fired) == 1 and f"host={SLOW}" in fired[0], out


def test_missing_and_incompatible_models_are_one_line_each_and_the_rest_is_scored(farm, tmp_path, caplog):
    models = farm.settings.detect.models
    # "old": the worker model under another name, but configured with another window.
    shutil.copy(models / "worker.joblib", tmp_path / "old.joblib")
    shutil.copy(models / "worker.json", tmp_path / "old.json")
    shutil.copy(models / "worker.joblib", tmp_path / "worker.joblib")
    shutil.copy(models / "worker.json", tmp_path / "worker.json")
    family = DETECT.split("[detect.families.worker]")[1]
    detect = (f'[detect]\nmodels = "{tmp_path}"\n[detect.families.worker]{family}'
              f'[detect.families.old]{family.replace("window = 30", "window = 20")}'
              f'[detect.families.units]\nseries = ["hlt.input.received_events:rate"]\nentity = ["unit"]\n')
    folder = tmp_path / "cfg"
    folder.mkdir()
    settings = load_config(write_config(folder, farm.unit, detect))
    with caplog.at_level(logging.INFO, logger="farmwatch.detect"):
        alerting = build_alerting(settings, farm.store, clock=farm.clock, notifiers={}, persist=False)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert any("units" in e and "units.joblib" in e and "farmwatch train" in e for e in errors)
    assert any("old" in e and "window 30" in e and "20 is configured" in e for e in errors)
    assert [f.name for f in alerting.scorer.families] == ["worker"]
    now = farm.clock.time() - POLL
    alerting.window.load(farm.store, now - alerting.window.horizon, now, alerting.names())
    # The scorer's own output: the shared store may hold other tests' samples at these times.
    out = alerting.scorer.step(now + 1.0)
    scores = [(b.ts, dict(k[1])["family"], v) for b in out for k, v in zip(b.keys, b.values) if k[0] == SCORE]
    bin_end = math.floor((now + 1.0) / 4.0) * 4.0  # scores are stamped with the end of the window's last bin
    assert sum(np.isfinite(v) for _, _, v in scores) == len(farm.unit.nodes)
    assert {ts for ts, _, _ in scores} == {bin_end} and {f for _, f, _ in scores} == {"worker"}


def test_detect_without_any_trained_model_starts_and_says_so_once(farm, tmp_path, caplog):
    detect = DETECT.replace('models = "models"', f'models = "{tmp_path / "none"}"')
    settings = load_config(write_config(tmp_path, farm.unit, detect))
    with caplog.at_level(logging.INFO, logger="farmwatch"):
        alerting = build_alerting(settings, farm.store, clock=farm.clock, notifiers={}, persist=False)
        for i in range(3):
            alerting.engine.evaluate(farm.clock.time() + i)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "worker" in lines[0] and "no trained model" in lines[0], lines
    assert not alerting.scorer and alerting.engine.before_rules == [alerting.window.prune]


def test_without_detect_nothing_is_scored(tmp_path):
    from farmwatch.config.loader import parse

    store = SQLiteStore(tmp_path / "farmwatch.db")
    try:
        alerting = build_alerting(parse({}), store, notifiers={}, persist=False)
    finally:
        store.close()
    assert alerting.scorer is None and alerting.engine.before_rules == [alerting.window.prune]
    assert "anomaly.score" in alerting.names()  # the shipped AnomalyScoreHigh reads it (and stays silent)


def test_one_score_series_per_entity_and_the_explanation_beside_it(farm):
    """An alert is its rule plus its labels: the score series has no label that changes with the
    explanation; the explanation is a state series of its own, written while the entity is anomalous."""
    from farmwatch.detect.models import Contribution, Explanation
    from farmwatch.detect.scorer import EXPLANATION, SURPRISE, Family, Scorer
    from farmwatch.detect.settings import DetectSettings

    family = Family("worker", farm.settings.detect.families["worker"], farm.model, 4.0, np.zeros(2), 0.0)
    scorer = Scorer(DetectSettings())
    key = ("hlt01", "hltwk01")

    def step(score: float, metrics: list[str]) -> dict[str, float | str]:
        e = Explanation("unit=hlt01,host=hltwk01", score, score, None, 0.99,
                        [Contribution(m, "mean", 1.0, 0.0, 5.0 - i) for i, m in enumerate(metrics)],
                        surprise=-math.log10(1 - score))
        out = {}
        for b in scorer._samples(family, [key], [e], START):
            for (name, lbls), v in zip(b.keys, b.values):
                assert dict(lbls) == {"family": "worker", "entity": "hlt01/hltwk01", "unit": "hlt01", "host": "hltwk01"}
                out[name] = v
        return out

    assert step(0.5, ["a"]) == {SCORE: 0.5, SURPRISE: pytest.approx(0.30103)}   # normal: no explanation
    out = step(0.999, ["b", "a"])
    assert out[SCORE] == 0.999 and out[SURPRISE] == pytest.approx(3.0)
    assert out[EXPLANATION].startswith("b mean = 1 (normal 0")


def test_score_from_store_gives_at_every_time_what_the_family_scores_then(farm):
    """The notebook/backtest helper: the family's scores over a time range, one column per entity;
    each row is what ``score_entities`` gives for the windows ending then (here: the last one)."""
    from farmwatch.detect.training import score_from_store

    fam = farm.settings.detect.families["worker"]
    end = START + HISTORY - POLL
    history = score_from_store(farm.store, fam, farm.model, end - 120, end)
    assert sorted(history.columns) == sorted(f"unit=hlt01,host={n}" for n in farm.unit.nodes)
    assert len(history) == 30 and (history.index.to_series().diff().dropna() == pd.Timedelta("4s")).all()
    assert history.notna().all().all() and ((history >= 0) & (history <= 1)).all().all()
    frames = entity_frames(farm.store, fam, end - 40 * 4.0, end)
    names, X = latest_features(farm.model, frames, fam.freq)
    for name, e in zip(names, farm.model.score_entities(X, names)):
        assert history[name].iloc[-1] == pytest.approx(e.score, abs=1e-9), name
