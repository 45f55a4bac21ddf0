"""The alerting window forgets series that stopped arriving (``forget_after``), as Prometheus drops
stale series, so a ``run``/``watch`` service that lives for months while worker pids, nodes and
anomaly explanations churn stays bounded, and an ``absent`` alert about a removed target ends.

Samples are hand-built ``Batch``es at simulated times (or recorded from simulated HLT units), fed
and pruned the way the alerting service does; rules are real TOML rules and the shipped ones.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest

from farmwatch.alerting.engine import AlertEngine
from farmwatch.alerting.rules import load_rules, parse_rules
from farmwatch.alerting.ruleset import make_window
from farmwatch.alerting.state import AlertDB
from farmwatch.store.window import UNWANTED_KEYS_LIMIT, Window
from farmwatch.clock import SimClock
from farmwatch.config import ConfigError
from farmwatch.config.loader import parse
from farmwatch.model import Batch, labels
from farmwatch.testing.scenario import ALERTS, Scenario
from farmwatch.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0
HOUR = 3600.0


def batch(ts: float, series: list[tuple[str, dict, object]]) -> Batch:
    """One cycle: ``[(name, {labels}, value), …]``."""
    out = Batch(ts)
    for name, lbls, value in series:
        out.add((name, labels(lbls)), value)
    return out


def key(name: str, **lbls: str) -> tuple:
    return name, labels(lbls)


def test_forget_after_must_cover_the_horizon():
    with pytest.raises(ValueError, match=r"forget_after \(60.0 s\).*horizon \(900.0 s\)"):
        Window(900.0, forget_after=60.0)
    assert Window(900.0, forget_after=900.0).forget_after == 900.0
    assert Window().forget_after == 86400.0


@pytest.mark.slow
def test_churning_worker_pids_keep_the_window_bounded():
    """8 nodes × 20 workers get new pids every hour for 3 days: the window keeps about the live
    ones plus those not yet ``forget_after`` old, not all 11,520 that ever existed."""
    wanted = "hlt.worker.processed_events"
    w = Window(900.0, forget_after=2 * HOUR, wants=lambda name: name == wanted)
    rule_ids = None
    most_keys = most_ids = 0
    for hour in range(72):
        pids = {(node, worker): str(10_000 * hour + 100 * node + worker) for node in range(8) for worker in range(20)}
        for minute in range(0, 60, 5):
            now = T0 + hour * HOUR + minute * 60
            series = [(wanted, {"host": f"hltwk{node:02d}", "pid": pid}, float(minute))
                      for (node, _), pid in pids.items()]
            # A series no rule reads churns too: the window must not keep its key forever either.
            series += [("hlt.worker.memory", {"host": f"hltwk{node:02d}", "pid": pid}, 1.0)
                       for (node, _), pid in pids.items()]
            w.ingest([batch(now, series)])
            w.prune(now)
            rule_ids = w.select_ids(wanted, ["host*=hltwk0*"])
            most_keys = max(most_keys, len(w.keys))
            most_ids = max(most_ids, len(w._ids))
    # Live pids (160) + those seen within forget_after (2 h: 320) + what waits for a compaction.
    assert w.series_count == len(rule_ids) <= 3 * 160
    assert most_keys <= 4 * 160
    assert most_ids <= 2 * 4 * 160  # the keys of the series no rule reads go at a compaction too
    assert w.forgotten_series == 72 * 160 - w.series_count
    assert w.compactions >= 30
    newest = {w.label_dicts[sid]["pid"] for sid in rule_ids.tolist()}
    assert {str(10_000 * 71 + 100 * n + k) for n in range(8) for k in range(20)} <= newest


def test_keys_of_series_no_rule_reads_are_cleared_beyond_a_limit():
    """Without anything to forget there is no compaction, yet churning unwanted keys (one dict
    entry each, so that a farm cycle costs one lookup per sample) must not pile up either."""
    w = Window(900.0, wants=lambda name: name == "up")
    targets = [{"app": app, "unit": "hlt01"} for app in ("distributor", "collector", "roi", "finalcollector")]
    cycles, per_cycle = 12, 10_000
    for c in range(cycles):  # every 10 minutes, 10,000 worker series with new pids, 120,000 in all
        now = T0 + 600.0 * c
        w.ingest([batch(now, [("up", t, 1.0) for t in targets]
                        + [("hlt.worker.memory", {"pid": str(per_cycle * c + i)}, 1.0) for i in range(per_cycle)])])
        w.prune(now)
        assert len(w._ids) <= UNWANTED_KEYS_LIMIT + per_cycle + len(targets)
    assert len(w._ids) <= 2 * per_cycle + len(targets)
    assert w.compactions == 0 and w.forgotten_series == 0
    assert w.select_ids("up").tolist() == [0, 1, 2, 3]
    ts, values = w.points(key("up", **targets[2]), -math.inf)
    assert ts.tolist() == [T0 + 600.0 * c for c in (cycles - 2, cycles - 1)] and values.tolist() == [1.0, 1.0]


ABSENT_RULES = """
    [[rule]]
    name = "HltMonitorSilent"
    kind = "absent"
    series = "hlt.monitor.requests"
    after = "1m"
    summary = "{app} on {host} sends nothing since {last_seen}"

    [[rule]]
    name = "TargetDown"
    kind = "down"
    after = "1m"
"""


def test_a_forgotten_target_leaves_selections_and_its_absent_alert_resolves(tmp_path):
    """A target removed from the config stops sending: ``absent`` and ``down`` fire after 1 m, and
    resolve when the window forgets it (``forget_after`` = 10 m), as if it had never been seen."""
    rules = parse_rules(textwrap.dedent(ABSENT_RULES), "absent.toml")
    clock = SimClock(T0)
    store = SQLiteStore(tmp_path / "farmwatch.db", clock=clock)
    window = Window(300.0, forget_after=600.0)
    engine = AlertEngine(rules, window, AlertDB(store), clock=clock, notifiers=[])
    engine.before_rules.append(window.prune)  # as the alerting service does
    kept, removed = {"app": "distributor", "host": "hltin01"}, {"app": "collector", "host": "hltout02"}
    events: list[tuple[float, str, str, dict]] = []

    def cycle(targets: list[dict]) -> None:
        now = clock.time()
        window.ingest([batch(now, [("hlt.monitor.requests", t, now - T0) for t in targets]
                             + [("up", t, 1.0) for t in targets])])
        events.extend((ts, event, alert.rule, dict(alert.labels))
                      for ts, event, alert in engine.evaluate(now).events if event in ("firing", "resolved"))
        clock.advance(10.0)

    for _ in range(30):
        cycle([kept, removed])
    gone_at = clock.time()
    assert len(window.select("hlt.monitor.requests")) == 2
    while clock.time() < gone_at + 900:
        cycle([kept])
    assert [(e, r) for _, e, r, lbls in events if lbls.get("host") == "hltout02"] == [
        ("firing", "HltMonitorSilent"), ("firing", "TargetDown"),
        ("resolved", "HltMonitorSilent"), ("resolved", "TargetDown")]
    resolved_at = [ts for ts, e, _, _ in events if e == "resolved"]
    last_seen = gone_at - 10.0
    assert all(last_seen + 600 < ts <= last_seen + 610 for ts in resolved_at)  # the first prune after forget_after
    assert not any(lbls.get("host") == "hltin01" for *_, lbls in events)
    assert window.select("hlt.monitor.requests") == [key("hlt.monitor.requests", **kept)]
    assert window.select("*", {"host": "hltout02"}) == []
    assert len(window.select_ids("up")) == 1
    assert window.last(key("up", **removed)) is None
    assert len(window.points(key("hlt.monitor.requests", **removed), -math.inf)[0]) == 0
    assert window.forgotten_series == 2 and window.compactions == 1  # 2 of 4 ids: it pays
    store.close()


@pytest.mark.parametrize("steady", [0, 20], ids=["ids-reclaimed-at-once", "ids-reclaimed-later"])
def test_a_series_seen_again_after_being_forgotten_starts_fresh(steady):
    """With ``steady`` other series, the 2 forgotten ones are under 10 % of the ids: their ids stay
    taken until a compaction, which must not matter to anyone."""
    w = Window(60.0, forget_after=120.0)
    node = {"node": "hltwk07"}
    others = [("hlt.input.received", {"node": f"hltwk{i + 10:02d}"}, 1.0) for i in range(steady)]
    w.ingest([batch(T0, [("hlt.monitor.output_state", node, "ready"), ("hlt.output.sent", node, 5.0)] + others)])
    w.ingest([batch(T0 + 10, [("hlt.monitor.output_state", node, "busy"), ("hlt.output.sent", node, 7.0)] + others)])
    w.ingest([batch(T0 + 130, others)])
    w.prune(T0 + 131)  # hltwk07's newest sample is 121 s old: forgotten
    assert w.series_count == steady and w.select("hlt.*", node) == [] and w.forgotten_series == 2
    assert w.compactions == (0 if steady else 1)
    assert w.last(key("hlt.monitor.output_state", **node)) is None

    w.ingest([batch(T0 + 200, [("hlt.monitor.output_state", node, "busy"), ("hlt.output.sent", node, 1.0)])])
    for _ in ("before", "after a compaction"):
        assert w.last(key("hlt.output.sent", **node)) == (T0 + 200, 1.0)
        ts, values = w.points(key("hlt.output.sent", **node), -math.inf)
        assert ts.tolist() == [T0 + 200] and values.tolist() == [1.0]
        (sid,) = w.select_ids("hlt.monitor.output_state").tolist()
        assert w.state_at(sid) == ("busy", T0 + 200)  # a new state history: not "busy since T0 + 10"
        assert w.state_at(sid, T0 + 150) is None
        assert w.series_count == 2 + steady and len(w.select("hlt.*", node)) == 2
        assert len(w.select("hlt.input.received")) == steady
        w.compact(T0 + 200)
    assert len(w.keys) == 2 + steady


def _settings_window(forget: str):
    rules = parse_rules(textwrap.dedent(ABSENT_RULES), "absent.toml")
    settings = parse({"alerting": {"forget_series_after": forget}})
    return settings.alerting, make_window(rules, settings.alerting)


def test_the_config_field_parses_and_reaches_the_window():
    alerting, window = _settings_window("2h")
    assert alerting.forget_series_after == 7200.0 and window.forget_after == 7200.0
    assert parse({}).alerting.forget_series_after == 86400.0
    _, window = _settings_window("30s")  # shorter than what the rules read: the horizon wins
    assert window.forget_after == window.horizon > 30.0
    with pytest.raises(ConfigError, match="alerting.forget_series_after"):
        parse({"alerting": {"forget_series_after": "0s"}})


# ---- compaction keeps the kept series exactly --------------------------------------------------

RULES = load_rules([ALERTS])
GHOST_UNIT = "hlt09"


def _record(seconds: float) -> list[list[Batch]]:
    """Every poll of two simulated HLT units (shipped rules' series), with faults after a quarter."""
    cycles: list[list[Batch]] = []
    with Scenario(RULES, units=2, nodes=3, workers_per_node=4, chat=False, episodes=False,
                  listeners=[lambda source, batches: cycles.append(list(batches))]) as s:
        s.run(seconds / 4)
        s.units[1].kill_workers("hltwk04", 2)  # the second unit's first node
        s.unit.slow_node("hltwk02", 0.2)
        s.run(3 * seconds / 4)
    return cycles


def _ghosts(cycles: list[list[Batch]], shift: float, share: float) -> list[Batch]:
    """Copies of the first cycles as a unit that was removed from the config ``shift`` s ago,
    ``share`` of the series count (few enough that ``prune`` leaves the compaction to the test)."""
    seen: dict = {}
    for batches in cycles[:5]:
        for b in batches:
            for k in b.keys:
                seen.setdefault(k, None)
    limit = int(share * len(seen))
    ghost_keys = [k for k in seen if any(n == "unit" for n, _ in k[1])][:limit]
    chosen = set(ghost_keys)
    out = []
    for batches in cycles[:5]:
        for b in batches:
            g = Batch(b.ts - shift)
            for k, v in zip(b.keys, b.values):
                if k in chosen:
                    g.add((k[0], tuple(sorted((n, GHOST_UNIT if n == "unit" else x) for n, x in k[1]))), v)
            if len(g):
                out.append(g)
    return out


def _results(window: Window, now: float) -> dict:
    """What every shipped rule finds at ``now``, NaN made comparable."""
    def plain(x):
        return None if isinstance(x, float) and math.isnan(x) else x

    found = {}
    for rule in RULES:
        for a in rule.evaluate(window, now):
            found[(rule.name, a.labels)] = (plain(a.value), tuple(sorted((k, plain(v)) for k, v in a.values.items())))
    return found


def _snapshot(window: Window, times: list[float]) -> dict:
    """Every kept series: its points, newest value and state at several times."""
    out = {}
    for sid in window.select_ids("*").tolist():
        k = window.keys[sid]
        ts, vals = window.points(k, -math.inf)
        out[k] = (ts.tolist(), np.where(np.isnan(vals), -1e300, vals).tolist(), window.last(k),
                  [window.state_at(sid, t) for t in times])
    return out


@pytest.mark.slow
def test_compaction_keeps_history_values_states_and_rule_results():
    """Two units under the shipped rules, plus the series of a unit removed long ago: forgetting it
    and then reclaiming its ids changes nothing for the rest, before or after, nor later on."""
    cycles = _record(400.0)
    never = make_window(RULES, parse({"alerting": {"forget_series_after": "3650d"}}).alerting)
    forgets = make_window(RULES, parse({"alerting": {"forget_series_after": "1s"}}).alerting)
    assert forgets.forget_after == forgets.horizon
    ghosts = _ghosts(cycles, shift=forgets.horizon + 120.0, share=0.05)
    for w in (never, forgets):
        w.ingest(ghosts)
    half = len(cycles) // 2
    for batches in cycles[:half]:
        for w in (never, forgets):
            w.ingest(batches)
            w.prune(batches[0].ts)
    now = cycles[half - 1][0].ts
    ghost_count = len(never.select_ids("*", {"unit": GHOST_UNIT}))  # those some rule reads
    assert forgets.forgotten_series == ghost_count > 0 and forgets.compactions == 0  # forgotten, ids not reclaimed
    assert len(forgets.keys) == len(never.keys)

    def without_ghosts(found: dict) -> dict:
        return {k: v for k, v in found.items() if ("unit", GHOST_UNIT) not in k[1]}

    times = [now - 600, now - 200, now - 30, now]
    before, snap_before = _results(forgets, now), _snapshot(forgets, times)
    assert before == without_ghosts(_results(never, now))
    assert not any(("unit", GHOST_UNIT) in k[1] for k in before)
    assert any(("unit", GHOST_UNIT) in k[1] for k in _results(never, now))  # e.g. absent: never ends there
    assert {rule for rule, _ in before} >= {"HltWorkersDied", "HltWorkerNodeSlow"}

    assert forgets.compact(now) == ghost_count
    assert forgets.compactions == 1 and len(forgets.keys) == len(never.keys) - ghost_count
    assert _results(forgets, now) == before
    assert _snapshot(forgets, times) == snap_before
    assert len(forgets._blocks) == len(never._blocks)  # new cycles land in their (renumbered) blocks

    held = set()
    for batches in cycles[half:]:
        for w in (never, forgets):
            w.ingest(batches)
            w.prune(batches[0].ts)
        now = batches[0].ts
        after = _results(forgets, now)
        assert after == without_ghosts(_results(never, now))
        held |= {rule for rule, _ in after}
    assert held >= {"HltWorkersDied", "HltWorkerNodeSlow"}
    assert len(forgets._blocks) == len(never._blocks)
    assert forgets.series_count == never.series_count - ghost_count
