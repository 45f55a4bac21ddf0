"""The shipped HLT rules (alerts/hlt.toml) against the simulator: every rule fires on the fault it
is about, soon enough, with the right labels and a readable summary; none fires in a clean run.

Each fault test runs its own small unit (3 worker nodes × 4 workers, 100 Hz, polled every 2 s of
simulated time) through ``farmwatch.testing.scenario``. ``FAULTS`` is the table of what each fault is
expected to cause: the rule it is about (which must fire within ``for`` + 2 poll intervals of the
fault) and the other rules that may fire with it (the cascade, which inhibition or grouping by
unit turns into one message); anything else firing is a failure. The clean run reads the run state
through a real IOC and the real ``nsm`` source, as deployed, and its worker nodes write application
logs (the usual background of errors and tracebacks) that the real ``logfiles`` source collects.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from typing import Callable

import pytest

from farmwatch.alerting.rules import load_rules
from farmwatch.testing.scenario import ALERTS, START, IocRunState, Scenario, describe
from sim_helpers import real_ioc

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

INTERVAL = 2.0
WARMUP = 60.0
RULES = load_rules([ALERTS])
RULE_NAMES = {r.name for r in RULES}
BY_NAME = {r.name: r for r in RULES}


@dataclass
class Fault:
    rule: str
    inject: Callable[[Scenario], object]
    labels: dict[str, str]
    also: set[str] = field(default_factory=set)
    """Rules that may fire too: the same incident seen from another place."""
    words: tuple[str, ...] = ()
    """What the summary must mention besides the unit."""
    slack: float = 0.0
    """Seconds the fault takes to become visible at all (on top of ``for`` + 2 polls)."""
    logs: bool = False
    """The scenario writes and collects the worker nodes' logs."""
    unit: bool = True
    """The alert carries the unit (log alerts are by host: the summary names the host instead)."""

    @property
    def place(self) -> str:
        """What the summary and the chat message must name."""
        return "hlt01" if self.unit else self.labels["host"]


FAULTS = [
    Fault("HltInputStalled", lambda s: s.unit.stall_input(True), {},
          also={"HltFinalCollectorNotReceiving"}, words=("input stalled", "for 45s")),
    Fault("HltReadyQueueDrained", lambda s: s.unit.back_pressure(True), {},
          also={"HltFinalCollectorNotReceiving"}, words=("back-pressure",)),
    Fault("HltFinalCollectorNotReceiving", lambda s: s.unit.stall_output(True), {},
          also={"HltReadyQueueDrained", "HltEventsLost"}, words=("final collector not receiving",)),
    Fault("HltEventsLost", lambda s: s.unit.drop_output(0.1), {}, words=("events lost", "only 89.", "% of the events")),
    Fault("HltWorkersDied", lambda s: s.unit.kill_workers("hltwk02", 1), {}, words=("1 worker process",)),
    Fault("HltWorkersUnregistered", lambda s: s.unit.kill_workers("hltwk02", 2), {},
          also={"HltWorkersDied"}, words=("only 10 of 12",)),
    Fault("HltWorkerNodeSlow", lambda s: s.unit.slow_node("hltwk02", 0.2), {"host": "hltwk02"},
          words=("worker node hltwk02", "far below its peers")),
    Fault("HltMonitorEndpointDown", lambda s: s.unit.set_reply("collector", "mute"), {"app": "collector"},
          words=("the collector does not answer",)),
    # A third of the unit's workers are gone: the rest cannot keep up, so back-pressure is real.
    Fault("HltProxyHistoServerDown", lambda s: s.unit.kill_node("hltwk03"), {"node": "hltwk03"},
          also={"HltWorkerNodeSlow", "HltReadyQueueDrained"}, words=("worker node hltwk03 does not answer",)),
    # The stop waits stopWaitingTime (2 s) and for the workers to drain: `slack` allows that.
    Fault("HltRunStopIncomplete", lambda s: (s.unit.kill_node("hltwk03"), s.rc.stop()), {},
          also={"HltProxyHistoServerDown"}, words=("run stop incomplete", "only 8 workers"), slack=6.0),
    Fault("HltAppRestarted", lambda s: s.unit.restart_app("finalcollector"), {"app": "finalcollector"},
          words=("the finalcollector restarted",)),
    # A worker in an exception loop: 20 tracebacks/s on top of the background; the count passes
    # the threshold (100 in 5 min) within ~5 s, and the last record of a poll waits one poll
    # for possible continuation lines: `slack`.
    Fault("HltLogErrorBurst", lambda s: s.error_burst("hltwk02", 20.0), {"host": "hltwk02", "service": "hltworker"},
          words=("hltwk02: error burst", "hltworker log"), slack=6.0, logs=True, unit=False),
]


def unfilled(rule: str, episode) -> set[str]:
    """Template fields of ``rule`` that the episode has no value for (they would render as ``?``)."""
    r = BY_NAME[rule]
    known = set(episode.label_dict) | set(episode.values) | {"value", "rule", "severity", "for"}
    fields = {f for text in (r.summary, r.description) for _, f, _, _ in string.Formatter().parse(text) if f}
    return fields - known


def check_episode(scenario: Scenario, rule: str, since: float, labels: dict[str, str], words=(),
                  slack: float = 0.0, place: str = "hlt01") -> None:
    """``rule`` fired for a fault at ``since`` within ``for`` + 2 polls, labelled and worded right
    (the unit's alerts carry ``unit``; a summary names ``place``)."""
    fired = scenario.fired(rule, since=since)
    assert fired, f"{rule} did not fire; episodes since the fault:\n{describe(e for e in scenario.episodes if e.start >= since)}"
    first = min(fired, key=lambda e: e.start)
    delay = first.fired_at - since
    assert delay <= first.for_ + 2 * INTERVAL + slack, f"{rule} fired {delay:g}s after the fault (for = {first.for_:g}s)"
    found = first.label_dict
    expected = {"unit": "hlt01", "system": "hlt", **labels} if place == "hlt01" else {"system": "hlt", **labels}
    assert {k: found.get(k) for k in expected} == expected, found
    assert not unfilled(rule, first), f"{rule}: template fields without a value: {unfilled(rule, first)}"
    summary = first.summary
    assert place in summary and "n/a" not in summary and first.description, summary
    for word in words:
        assert word in summary, f"{word!r} not in {summary!r}"


@pytest.mark.parametrize("fault", FAULTS, ids=[f.rule for f in FAULTS])
def test_fault_fires_its_rule(fault: Fault) -> None:
    assert fault.rule in RULE_NAMES and fault.also <= RULE_NAMES
    with Scenario(RULES, interval=INTERVAL, logs=fault.logs) as s:
        s.run(WARMUP)
        assert not s.fired(), describe(s.fired())
        at = s.now
        fault.inject(s)
        rule = BY_NAME[fault.rule]
        s.run(rule.for_ + 4 * INTERVAL + fault.slack)
        check_episode(s, fault.rule, at, fault.labels, fault.words, fault.slack, fault.place)
        s.run(30)  # let the cascade show
        others = s.fired_rules() - {fault.rule}
        assert others <= fault.also, f"unexpected alerts:\n{describe(e for e in s.fired() if e.rule in others - fault.also)}"
        check_chat(s, fault.rule, at, fault.slack, fault.place)


def check_chat(s: Scenario, rule: str, since: float, slack: float = 0.0, place: str = "hlt01") -> None:
    """The operator's view: one chat message for the incident, within ``for`` + 2 polls + group_wait."""
    s.run(s.engine.dispatcher.timers.group_interval)  # the message's last edit shows everything that fired
    messages = s.messages(since=since)
    assert len(messages) == 1, "one incident, one message:\n" + "\n---\n".join(m.text for m in messages)
    (msg,) = messages
    delay = msg.ts - since
    assert delay <= BY_NAME[rule].for_ + 2 * INTERVAL + s.engine.dispatcher.timers.group_wait + slack, delay
    assert place in msg.text and BY_NAME[rule].name in msg.text, msg.text


def test_fault_cleared_resolves_the_alert() -> None:
    """An alert's condition stops holding once the fault is gone (the lifecycle then resolves it)."""
    with Scenario(RULES, interval=INTERVAL) as s:
        s.run(WARMUP)
        at = s.now
        s.unit.back_pressure(True)
        s.run(40)
        s.unit.back_pressure(False)
        cleared = s.now
        s.run(3 * INTERVAL)
        episodes = s.fired(since=at)
        assert {e.rule for e in episodes} >= {"HltReadyQueueDrained"}
        assert all(e.end is not None and e.end <= cleared + 2 * INTERVAL for e in episodes), describe(episodes)


@pytest.mark.parametrize("node", [None, "hltwk02"], ids=["all nodes", "one node"])
def test_dqm_silent_after_run_start_fires_histograms_not_merged(node: str | None) -> None:
    """The histogram servers keep merging what they hold until the next run start clears it; the
    rule can only hold once ``grace`` after that start has passed and its window is empty of merges."""
    rule = "HltProxyHistogramsNotMerged" if node else "HltHistogramsNotMerged"
    with Scenario(RULES, interval=INTERVAL) as s:
        s.run(WARMUP)
        s.unit.stop_dqm(node=node)
        s.rc.stop()
        s.run(20)
        s.rc.start()
        s.run(2 * INTERVAL)
        running = s.rc.since
        assert s.rc.state == "RUNNING"
        r = BY_NAME[rule]
        s.run(r.grace + r.for_ + 3 * INTERVAL)
        fired = s.fired(rule, since=running)
        assert fired, describe(s.episodes)
        assert min(e.fired_at for e in fired) - running <= r.grace + r.for_ + 2 * INTERVAL
        if node:
            assert [e.label_dict.get("node") for e in fired] == [node]
            assert s.fired_rules() == {rule}
        else:
            assert {e.label_dict.get("app") for e in fired} == {"finalhistoserver"}
            assert s.fired_rules() == {rule, "HltProxyHistogramsNotMerged"}
            assert sorted(e.label_dict["node"] for e in s.fired("HltProxyHistogramsNotMerged")) == s.unit.nodes
        assert f"{node or ''}" in fired[0].summary and "DQM" in fired[0].summary


def test_every_shipped_rule_has_a_fault_test() -> None:
    tested = {f.rule for f in FAULTS} | {"HltHistogramsNotMerged", "HltProxyHistogramsNotMerged", "RunStateUnknown"}
    tested |= {"FarmwatchSourceSilent", "FarmwatchDroppingSamples"}  # tests/test_selfwatch_rules.py
    tested |= {"AnomalyScoreHigh"}  # tests/test_detect_service.py (a gradually slowing worker node)
    tested |= {"LogNewErrorPattern", "LogPatternRateAnomalous"}  # tests/test_log_template_rules.py, the demo
    assert tested == RULE_NAMES


# ------------------------------------------------------------------ the clean run (real IOC)


@pytest.fixture(scope="module")
def ioc():
    with real_ioc("the shipped-rule scenarios") as sim:
        yield sim


CLEAN_PLAN = [  # (seconds to run first, then the run-control request)
    (200, "stop"), (60, "start"),
    (240, "abort"), (30, "load"), (20, "start"),
    (200, "fail"), (20, "recover"), (20, "start"),
    (150, "stop"), (30, None),
]


@pytest.fixture(scope="module")
def clean(ioc):
    """≥ 15 simulated minutes, three runs: a normal stop, an ABORT/LOAD, an ERROR/RECOVER; the
    worker nodes log as usual all along."""
    with Scenario(RULES, interval=INTERVAL, ioc=ioc, logs=True) as s:
        for seconds, request in CLEAN_PLAN:
            s.run(seconds)
            if request:
                getattr(s.rc, request)()
        yield s


def test_clean_run_fires_nothing(clean: Scenario) -> None:
    assert sum(seconds for seconds, _ in CLEAN_PLAN) >= 15 * 60
    states = [state for _, state in clean.rc.history]
    assert states.count("STARTING") >= 3 and states.count("STOPPING") >= 2
    assert {"ABORTING", "NOTREADY", "ERROR", "RECOVERING"} <= set(states)
    assert not clean.fired(), describe(clean.fired())
    assert clean.messages() == [] and clean.engine.db.outbox_log() == []


def test_clean_run_evaluated_every_rule_in_the_states_it_is_for(clean: Scenario) -> None:
    """A silent rule must have been evaluated: otherwise 'nothing fired' proves nothing."""
    for rule in clean.rules:
        assert rule.counts["evaluated"] > 0, (rule.name, dict(rule.counts))
        assert rule.counts["unknown_run_state"] == 0, (rule.name, dict(rule.counts))
        if rule.run_state:
            assert rule.counts["run_state"] > 0 and rule.counts["grace"] > 0, (rule.name, dict(rule.counts))


def test_clean_run_logs_have_background_errors_below_the_burst_threshold(clean: Scenario) -> None:
    """The log rule stayed quiet on real background — every node logged errors and tracebacks,
    every record was stored — not on an empty store."""
    from farmwatch import analysis as fa

    clean.logs.collect()  # the last record of each file (its file has been quiet for a poll)
    assert clean.logs.stored == clean.logs.written > 0
    per_minute = fa.log_counts(clean.store, freq="1min")
    assert sorted(per_minute.columns) == sorted(clean.logs.writers)
    rule = BY_NAME["HltLogErrorBurst"]
    assert rule.spec.window == 300 and rule.spec.op == ">="
    # the busiest 5 minutes of any node (bins of a minute: an upper bound of any 5-minute window)
    busiest = per_minute.rolling(6, min_periods=1).sum().max().max()
    assert 10 <= busiest < rule.spec.value / 2, busiest


def test_clean_run_read_the_run_state_through_the_ioc(clean: Scenario) -> None:
    """The window's run state followed the controller, through IOC, Channel Access and nsm source
    (a state entered between two polls is seen at the next poll)."""
    assert isinstance(clean.run_state, IocRunState)
    recent = [(ts, state) for ts, state in clean.rc.history if ts > clean.now - 300]
    assert {"RUNNING", "STOPPING", "READY"} <= {state for _, state in recent}
    for (ts, state), (after, _) in zip(recent, recent[1:] + [(clean.now, None)]):
        seen_at = min(ts + INTERVAL, after - 1e-3)
        assert clean.window.run_state(seen_at)[0] == state, (ts, state)
    noticed = START + math.ceil((clean.rc.since - START) / INTERVAL) * INTERVAL  # the next poll
    assert clean.window.run_state() == ("READY", noticed)


def test_run_state_unreadable_fires_run_state_unknown(ioc) -> None:
    """Last in the module: it kills the shared IOC (and starts it again)."""
    try:
        with Scenario(RULES, interval=INTERVAL, ioc=ioc) as s:
            s.run(20)
            at = s.now
            ioc.kill()
            s.run(BY_NAME["RunStateUnknown"].for_ + 4 * INTERVAL)
            fired = s.fired("RunStateUnknown", since=at)
            assert fired, describe(s.episodes)
            # The source notices after its missing_after (2 s): allow that on top of for + 2 polls.
            assert fired[0].fired_at - at <= fired[0].for_ + 2 * INTERVAL + 2.0
            assert fired[0].label_dict["node"] == "RUNCONTROL" and "RUNCONTROL" in fired[0].summary
            assert re.search(r"alerts that depend on it are paused", fired[0].summary)
            # The IOC restarts and the bridge publishes the run state again: the source reconnects
            # (real time: Channel Access searches again) and the alert ends at the next polls.
            back = s.now
            s.rc.restart_ioc()
            s.run(4 * INTERVAL)
            episode = fired[0]
            assert episode.end is not None and episode.end - back <= 2 * INTERVAL, describe(s.episodes)
            assert s.window.run_state()[0] == "RUNNING"
    finally:
        ioc.start()


def test_a_fault_in_one_unit_of_a_small_farm_alerts_for_that_unit_only() -> None:
    """Several units under one run control, polled by one source (the demo's farm): the rules
    tell the units apart, and one unit's incident is one message naming it."""
    with Scenario(RULES, interval=INTERVAL, units=2, nodes=3) as s:
        assert [u.name for u in s.units] == ["hlt01", "hlt02"]
        assert s.units[1].nodes == ["hltwk04", "hltwk05", "hltwk06"]  # node names distinct across units
        s.run(WARMUP)
        at = s.now
        s.unit_named("hlt02").stall_input(True)
        s.run(BY_NAME["HltInputStalled"].for_ + 4 * INTERVAL)
        assert {e.label_dict["unit"] for e in s.fired(since=at)} == {"hlt02"}, describe(s.fired())
        assert "HltInputStalled" in s.fired_rules()
        assert s.fired_rules() <= {"HltInputStalled", "HltFinalCollectorNotReceiving"}  # its cascade (inhibited)
        s.run(s.engine.dispatcher.timers.group_interval)
        (msg,) = s.messages(since=at)
        assert "unit hlt02" in msg.text and "hlt01" not in msg.text, msg.text
