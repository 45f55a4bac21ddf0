"""Log message templates: the miner on real labelled logs (Loghub), templates on every record in both
stores, ids that survive kill -9 and are shared by two collectors on one store file."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from farmwatch.analysis import log_templates
from farmwatch.clock import SimClock
from farmwatch.logtemplates import COUNT, ID_FIELD, TEXT_FIELD, RecordTemplates, TemplateMiner, TemplateStore
from farmwatch.logtemplates.evaluate import grouping_accuracy, load_labelled, parsing_accuracy
from farmwatch.model import Batch, LogRecord, labels
from farmwatch.service.runner import Runner
from farmwatch.sim.es_cluster import ElasticSim
from farmwatch.sources.logfiles.config import LogFilesConfig
from farmwatch.sources.logfiles.source import LogFilesSource
from farmwatch.store import SQLiteStore
from farmwatch.store import sqlite as store_sqlite
from farmwatch.store import storefile
from farmwatch.store.elastic import ElasticConfig, ElasticStore
from farmwatch.store.logs import LogStore
from store_helpers import write_schema4_store

LOGHUB = Path(os.environ.get("FARMWATCH_LOGHUB_DEV", Path(__file__).resolve().parent / "data" / "loghub-dev"))
SYSTEMS = ("Android", "Apache", "HDFS", "Hadoop", "HealthApp", "Mac", "OpenStack", "Zookeeper")
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
T0 = 1_764_496_800.0  # 2025-11-30 10:00 UTC


def test_variables_become_wildcards_and_words_stay_until_there_are_too_many() -> None:
    miner = TemplateMiner()
    a = miner.template_of("Took 19.05 seconds to spawn the instance on the hypervisor.")
    b = miner.template_of("Took 2.5 seconds to spawn the instance on the hypervisor.")
    assert a == b and a.text == "Took <*> seconds to spawn the instance on the hypervisor."
    # a path with digits is one variable; neighbouring variables are one
    assert miner.template_of('10.11.10.1 "GET /v2/54fa/servers/detail HTTP/1.1" status: 200').text == \
        '<*> "GET <*>" status: <*>'
    # few words at a position: part of the template (VM Started / VM Paused are different kinds)
    started = miner.template_of("[instance: 9a1] VM Started (Lifecycle Event)")
    paused = miner.template_of("[instance: 9b2] VM Paused (Lifecycle Event)")
    assert started.text == "[instance: <*>] VM Started (Lifecycle Event)" and started.id != paused.id
    # many words at a position: a variable (user names)
    texts = [miner.template_of(f"session opened for user {u} by root").text for u in USERS]
    assert texts[:4] == [f"session opened for user {u} by root" for u in USERS[:4]]
    assert set(texts[4:]) == {"session opened for user <*> by root"}
    assert miner.template_of("session opened for user alice by root").text == "session opened for user <*> by root"
    # the id is the text's: the same everywhere
    assert TemplateMiner().template_of("Took 7 seconds to spawn the instance on the hypervisor.").id == a.id


def test_log_templates_is_one_settled_template_per_message_in_input_order() -> None:
    messages = [f"session opened for user {u} by root" for u in USERS] + ["disk full on /dev/sda1", ""]
    out = log_templates(messages)
    assert out == ["session opened for user <*> by root"] * 8 + ["disk full on <*>", ""]


def test_a_traceback_is_known_by_its_first_and_last_line() -> None:
    miner = TemplateMiner()
    tb = "Exception in event processing seq={}\nTraceback (most recent call last):\n  File \"w.py\", line 8\n{}"
    value_error = miner.template_of(tb.format(1, "ValueError: bad header"))
    assert miner.template_of(tb.format(2, "ValueError: bad header")) == value_error
    other = miner.template_of(tb.format(3, "ZeroDivisionError: division by zero"))
    assert other.id != value_error.id and other.text.endswith("ZeroDivisionError: division by zero")


def _loghub(system: str):
    return load_labelled(LOGHUB, system)  # tests/data/loghub-dev: the labelled set travels with the repository


def test_grouping_accuracy_on_the_labelled_development_set() -> None:
    """Real logs of eight systems, one configuration: mean grouping accuracy >= 0.92 (drain3's
    default: 0.765); benchmarks/bench_log_templates.py gives the table."""
    ga, pa = {}, {}
    for system in SYSTEMS:
        messages, groups, true = _loghub(system)
        found = TemplateMiner().templates(messages)
        ga[system] = grouping_accuracy([t.id for t in found], groups)
        pa[system] = parsing_accuracy([t.text for t in found], true)
    assert sum(ga.values()) / len(ga) >= 0.92, ga
    assert min(ga.values()) >= 0.8, ga
    assert sum(pa.values()) / len(pa) >= 0.4, pa


def test_grouping_accuracy_counts_exact_groups_only() -> None:
    assert grouping_accuracy(["a", "a", "b"], [1, 1, 2]) == 1.0
    assert grouping_accuracy(["a", "a", "a"], [1, 1, 2]) == 0.0  # the merged group is nobody's true group
    assert grouping_accuracy(["a", "b", "c"], [1, 1, 2]) == pytest.approx(1 / 3)


# -- in the pipeline -----------------------------------------------------------------------------------

def _line(ts: float, user: str, n: int) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
    return f"{stamp}.000Z [INFO] session opened for user {user} from node{n % 7} after {n} ms\n"


def _kinds(store_path: Path) -> dict[str, set[str]]:
    """Template ids per kind of message (the message with its user and numbers taken out)."""
    con = sqlite3.connect(store_path)
    try:
        rows = con.execute("SELECT message, template_id FROM logs ORDER BY id").fetchall()
    finally:
        con.close()
    out: dict[str, set[str]] = defaultdict(set)
    for message, tid in rows:
        out[re.sub(r"\d+", "N", message)].add(tid)
    return out


def test_records_carry_their_template_in_both_stores_and_counts_become_series(tmp_path: Path) -> None:
    clock = SimClock(T0)
    log = tmp_path / "worker.log"
    log.write_text("".join(_line(T0 + i, USERS[i % 2], i) for i in range(40))
                   + "2025-11-30 10:01:00.000Z [ERROR] Segmentation violation in module HLTZMQ2Ds\n")
    store = SQLiteStore(tmp_path / "fw.db", clock=clock)
    with ElasticSim() as es:
        sink = ElasticStore(ElasticConfig(hosts=[es.url], spool_dir=tmp_path / "spool", index_mode="daily"), clock=clock)
        src = LogFilesSource("logs", LogFilesConfig(kind="logfiles", paths=[str(log)], host="hltwk07",
                                                    labels={"site": "kek"}), clock=clock)
        runner = Runner([src], store, clock=clock, log_sinks=[sink])
        for _ in range(5):  # the counts of a 10 s bucket are written 10 s after its end
            runner.run_once()
            clock.advance(11.0)
        docs = list(es.documents("farmwatch-logs*").values())
        sink.close()
    records = LogStore(store).search(limit=1000)
    assert len(records) == len(docs) == 41
    by_message = {r.message: r.fields for r in records}
    seg = by_message["Segmentation violation in module HLTZMQ2Ds"]
    assert seg[TEXT_FIELD] == "Segmentation violation in module <*>"  # a word with a digit is a variable
    alice = {f[ID_FIELD] for m, f in by_message.items() if "alice" in m}
    assert len(alice) == 1 and alice != {f[ID_FIELD] for m, f in by_message.items() if "bob" in m}
    assert {(d["message"], d[ID_FIELD], d[TEXT_FIELD]) for d in docs} == \
        {(r.message, r.fields[ID_FIELD], r.fields[TEXT_FIELD]) for r in records}
    with store.transaction("read") as conn:
        assert conn.execute("SELECT count(DISTINCT template_id) FROM logs").fetchone()[0] == 3
        first, last = conn.execute("SELECT first_seen, last_seen FROM log_templates WHERE id = ?",
                                   (seg[ID_FIELD],)).fetchone()
    assert first == last == T0 + 60
    counts = store.query(COUNT, {"template": seg[ID_FIELD]})
    assert counts["value"].sum() == 1 and set(counts["host"]) == {"hltwk07"} and set(counts["level"]) == {"error"}
    assert set(counts["site"]) == {"kek"}
    store.close()


def test_two_collectors_on_one_store_share_template_ids(tmp_path: Path) -> None:
    """Two collectors of one store file, each with its own file: what one learnt (users are a
    variable) the other uses at once, so a kind of message has one id in both."""
    clock = SimClock(T0)
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a_log.write_text("".join(_line(T0 + i, USERS[i % 6], i) for i in range(30)))
    b_log.write_text("".join(_line(T0 + i, "zed", i) for i in range(5)))
    runners = []
    for name, path in (("a", a_log), ("b", b_log)):
        store = SQLiteStore(tmp_path / "fw.db", clock=clock)
        src = LogFilesSource(name, LogFilesConfig(kind="logfiles", paths=[str(path)], host=f"hltwk-{name}"), clock=clock)
        runners.append((Runner([src], store, clock=clock), store))
    for _ in range(3):
        for runner, _ in runners:
            runner.run_once()
        clock.advance(11.0)
    with runners[0][1].transaction("read") as conn:
        rows = conn.execute("SELECT host, message, template_id FROM logs ORDER BY id").fetchall()
    late = {tid for host, message, tid in rows if host == "hltwk-b" or USERS[4] in message or USERS[5] in message}
    assert len(late) == 1, rows
    assert {t for (t,) in runners[1][1].transaction("read").__enter__().execute(
        "SELECT template FROM log_templates")} >= {"session opened for user <*> from <*> after <*> ms"}
    for _, store in runners:
        store.close()


def _config(tmp_path: Path, log: Path) -> Path:
    cfg = tmp_path / "fw.toml"
    cfg.write_text(f'[store]\npath = "fw.db"\n\n[sources.logs]\nkind = "logfiles"\npaths = ["{log}"]\n'
                   f'host = "hltwk01"\ninterval = "200ms"\ntimeout = "100ms"\nmultiline_wait = "0s"\npartial_wait = "1s"\n')
    return cfg


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM logs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def _wait_stored(db: Path, n: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _stored(db) < n:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "collector exited"
        assert time.monotonic() < deadline, f"{_stored(db)} of {n} records stored"
        time.sleep(0.1)


@pytest.mark.timeout(180)
def test_template_ids_survive_kill_9_of_a_busy_collector(tmp_path: Path) -> None:
    """A collector learns that users are a variable, is killed (-9) while lines keep coming, and
    restarted: the same kinds of message get the same ids as before, including the learnt one."""
    log = tmp_path / "worker.log"
    db = tmp_path / "fw.db"
    cfg = _config(tmp_path, log)
    stop = threading.Event()
    written = [0]

    def write() -> None:
        with open(log, "a") as f:
            while not stop.is_set():
                n = written[0]
                f.write(_line(time.time(), USERS[n % len(USERS)], n))
                f.flush()
                written[0] += 1
                time.sleep(0.002)

    writer = threading.Thread(target=write, daemon=True)
    cmd = [sys.executable, "-m", "farmwatch", "collect", "-c", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        writer.start()
        _wait_stored(db, 300, proc)
        before = _kinds(db)
        proc.send_signal(signal.SIGKILL)  # while the writer goes on and the collector reads
        proc.wait(10)
        time.sleep(0.5)
        proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        seen = _stored(db)
        _wait_stored(db, seen + 300, proc)
    finally:
        stop.set()
        writer.join(5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    after = _kinds(db)
    settled = "session opened for user <*> from <*> after <*> ms"
    con = sqlite3.connect(db)
    try:
        learnt = con.execute("SELECT id FROM log_templates WHERE template = ?", (settled,)).fetchone()[0]
        rows = con.execute("SELECT message, template_id FROM logs ORDER BY id").fetchall()
    finally:
        con.close()
    # before the kill the users became a variable; every record read after the restart has that id
    assert any(learnt in ids for ids in before.values())
    restarted = rows[-300:]
    assert {tid for _, tid in restarted} == {learnt}, restarted[:5]
    assert set().union(*after.values()) <= set().union(*before.values()) | {learnt}


SCHEMA_ISSUE17 = 7
"""The compact store's schema (chunks, rollups, remote-write queue), before the log templates."""
OLD_RECORDS = [(T0 - 3600 + i, "hltwk07", "worker", "error" if i % 5 == 0 else "info", f"old line {i} of {USERS[i % 3]}")
               for i in range(20)]


def _older_store(path: Path, schema: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store file as farmwatch 7aec121 (schema 4) or issue 17 (schema 7) left it: samples, a
    state and log records without templates."""
    keys = [("hlt.poll.duration", labels(unit="hlt02")), ("hlt.output.ready_queue_size", labels(unit="hlt02"))]
    if schema == 4:
        write_schema4_store(path, keys, T0 - 4 * 3600, logs=OLD_RECORDS)
        return
    monkeypatch.setattr(storefile, "MIGRATIONS", store_sqlite.MIGRATIONS[:schema])
    with SQLiteStore(path) as store:
        assert store.schema_version() == schema
        store.write([Batch(T0 - 4 * 3600 + 60 * i, keys, [i / 10, float(i)]) for i in range(200)])
        store.write(Batch(T0 - 4 * 3600 + 0.005, [keys[1]], ["stuck"]))
        LogStore(store).write_logs([LogRecord(ts, host, service, level, message, {}) for ts, host, service, level, message
                                    in OLD_RECORDS])
    monkeypatch.undo()


@pytest.mark.parametrize("schema", [4, SCHEMA_ISSUE17], ids=["7aec121-schema-4", "issue17-schema-7"])
def test_an_older_store_is_upgraded_and_its_new_records_get_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       schema: int) -> None:
    """Stores of every older farmwatch upgrade in place on the first writable open (the compact
    store's steps, then the templates' step): samples, states and records are kept, and the records
    a collector writes from then on have templates, history and patterns."""
    path = tmp_path / "old.db"
    _older_store(path, schema, monkeypatch)
    with pytest.raises(store_sqlite.StoreError, match=f"schema version {schema} needs an upgrade to "
                                                      f"{len(store_sqlite.MIGRATIONS)}"):
        SQLiteStore(path, readonly=True)

    clock = SimClock(T0)
    log = tmp_path / "worker.log"
    log.write_text("".join(_line(T0 + i, "alice", i) for i in range(30))
                   + "2025-11-30 10:01:00.000Z [ERROR] Segmentation violation in module HLTZMQ2Ds\n")
    store = SQLiteStore(path, clock=clock)
    assert store.schema_version() == len(store_sqlite.MIGRATIONS)
    src = LogFilesSource("logs", LogFilesConfig(kind="logfiles", paths=[str(log)], host="hltwk07"), clock=clock)
    runner = Runner([src], store, clock=clock)
    for _ in range(3):
        runner.run_once()
        clock.advance(11.0)

    samples = store.query("hlt.*", until=T0 - 60)
    assert len(samples) == 401 and samples["state"].dropna().tolist() == ["stuck"]
    logs = LogStore(store)
    assert len(logs.search("old line", limit=100)) == len(OLD_RECORDS)  # the full-text index kept them
    with store.transaction("read") as conn:
        untemplated = conn.execute("SELECT count(*) FROM logs WHERE template_id IS NULL").fetchone()[0]
        ids = {tid for (tid,) in conn.execute("SELECT DISTINCT template_id FROM logs WHERE template_id IS NOT NULL")}
    assert untemplated == len(OLD_RECORDS)  # records from before have none (they were never mined) ...
    templates = TemplateStore(store)
    patterns = {p["template"]: p for p in templates.patterns(since=T0 - 60, until=T0 + 120)}
    assert set(patterns) == {"session opened for user alice from <*> after <*> ms",
                             "Segmentation violation in module <*>"}  # ... the new ones have, with history
    seg = patterns["Segmentation violation in module <*>"]
    assert seg["count"] == 1 and seg["levels"] == ["error"] and seg["first_seen"] == T0 + 60
    assert {p["id"] for p in patterns.values()} == ids
    assert templates.history_start() == T0 and set(templates.info(ids)) == ids
    store.close()


def test_logs_patterns_command_lists_templates_with_counts_hosts_and_examples(tmp_path: Path) -> None:
    clock = SimClock(T0)
    log = tmp_path / "worker.log"
    log.write_text("".join(_line(T0 + i, "alice", i) for i in range(40))
                   + "2025-11-30 10:01:00.000Z [ERROR] Segmentation violation in module HLTZMQ2Ds\n")
    store = SQLiteStore(tmp_path / "fw.db", clock=clock)
    src = LogFilesSource("logs", LogFilesConfig(kind="logfiles", paths=[str(log)], host="hltwk07"), clock=clock)
    runner = Runner([src], store, clock=clock)
    for _ in range(3):
        runner.run_once()
        clock.advance(11.0)
    store.close()
    cfg = tmp_path / "fw.toml"
    cfg.write_text('[store]\npath = "fw.db"\n')

    def run(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "farmwatch", "logs", "patterns", "-c", str(cfg), *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    text = run("--since", "2025-11-30T09:00", "--until", "2025-11-30T11:00")
    assert "      40  session opened for user alice from <*> after <*> ms" in text
    assert "e.g. session opened for user alice from node" in text and "hltwk07" in text
    new = run("--since", "2025-11-30T10:00:30", "--until", "2025-11-30T11:00", "--new", "--format", "json")
    rows = [__import__("json").loads(line) for line in new.splitlines()]
    assert [(r["template"], r["count"], r["hosts"], r["levels"]) for r in rows] == \
        [("Segmentation violation in module <*>", 1, ["hltwk07"], ["error"])]
    assert rows[0]["example"] == "Segmentation violation in module HLTZMQ2Ds"
    assert run("--since", "2025-11-30T10:00:30", "--level", "info", "--new").startswith("no records")
    assert run("--since", "2025-11-30T10:00:30", "--until", "2025-11-30T11:00", "--new", "--level", "ERR",
               "--format", "json") == new  # ERR is how some logs spell error
    bad = subprocess.run([sys.executable, "-m", "farmwatch", "logs", "patterns", "-c", str(cfg), "--since", "yesterday-ish"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_counts_go_by_the_records_time_so_catching_up_after_a_pause_makes_no_spike() -> None:
    rt = RecordTemplates()
    assert rt.counts(T0) == []
    # a collector that hung for 4 minutes reads them in one cycle: 2 records per 10 s
    records = [LogRecord(T0 + 5 * i, "hltwk07", "worker", "error", f"No event from tcp://hltin01:{5000 + i} for 3 s", {})
               for i in range(48)]
    batches = rt.annotate(records, T0 + 245.0)
    values = [v for b in batches for v in b.values]
    assert len(batches) == 23 and set(values) == {2.0}  # buckets ending T0+10 … T0+230, 2 records each
    assert [b.ts for b in batches] == [T0 + 10 * (i + 1) for i in range(23)]
    later = rt.counts(T0 + 300.0)  # the last bucket with records, then zeros while the template is active
    assert [v for b in later for v in b.values] == [2.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert dict(later[0].keys[0][1])["host"] == "hltwk07"


def test_a_locked_store_delays_saving_templates_but_never_the_records(tmp_path: Path, caplog) -> None:
    store = SQLiteStore(tmp_path / "fw.db", busy_timeout=0.2)
    rt = RecordTemplates()
    rt.bind(store)
    blocker = sqlite3.connect(tmp_path / "fw.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    records = [LogRecord(T0, "hltwk01", "worker", "error", "disk /dev/sda1 full", {})]
    rt.annotate(records, T0)
    assert records[0].fields[ID_FIELD] and rt.sync_failures == 1
    assert sum("cannot save log templates" in r.getMessage() for r in caplog.records) == 1
    blocker.execute("ROLLBACK")
    rt.annotate([LogRecord(T0 + 5, "hltwk01", "worker", "info", "all good", {})], T0 + 5)
    with store.transaction("read") as conn:
        rows = dict(conn.execute("SELECT template, first_seen FROM log_templates").fetchall())
    assert rows == {"disk <*> full": T0, "all good": T0 + 5}  # the first one saved late, with its own time
    blocker.close()
    store.close()
