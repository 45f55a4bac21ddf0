"""The log-file source against real files, a real store and the real runner: rotation (rename +
create, copytruncate), inode reuse, deleted files, restarts and crashes between storing and
acknowledging. Every scenario compares every record written with every record stored: none
lost, none twice."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from farmwatch.clock import RealClock, SimClock
from farmwatch.config.loader import parse
from farmwatch.service.runner import Runner
from farmwatch.sim.logwriters import HltLogWriter
from farmwatch.sources.logfiles.source import LogFilesConfig, LogFilesSource
from farmwatch.store import SQLiteStore
from farmwatch.sources.base import LogBatch
from farmwatch.store.logs import LogStore

SEQ = re.compile(r"seq=(\d+)")
QUIET = 11.0  # longer than multiline_wait and partial_wait: the last record of a file is complete


def source(paths: list[str], clock: SimClock, **kw) -> LogFilesSource:
    cfg = LogFilesConfig(kind="logfiles", paths=paths, host="hltwk01", **kw)
    return LogFilesSource("hltlogs", cfg, clock=clock)


def cycle(runner: Runner, clock: SimClock, n: int = 1, advance: float = 1.0) -> None:
    for _ in range(n):
        runner.run_once()
        clock.advance(advance)


def settle(runner: Runner, clock: SimClock) -> None:
    """Read everything there is, let the last records' waits pass, read again."""
    cycle(runner, clock)
    clock.advance(QUIET)
    cycle(runner, clock, 3)


def stored(store: SQLiteStore) -> list:
    return LogStore(store).search(limit=10**7)


def assert_exactly_once(store: SQLiteStore, writer: HltLogWriter) -> None:
    """Every written record stored once, as written (all its lines), with the right level."""
    records = stored(store)
    by_seq = Counter(int(SEQ.search(r.fields["event.original"]).group(1)) for r in records)
    twice = sorted(s for s, n in by_seq.items() if n > 1)
    lost = sorted({w.seq for w in writer.written} - set(by_seq))
    assert not twice, f"stored twice: {twice[:20]}"
    assert not lost, f"lost: {lost[:20]}"
    assert len(records) == len(writer.written)
    texts = {int(SEQ.search(r.fields["event.original"]).group(1)): r for r in records}
    for w in writer.written:
        r = texts[w.seq]
        assert r.fields["event.original"] == w.text
        assert r.level == w.level and r.host == "hltwk01" and r.service == "app"


@pytest.fixture
def env(tmp_path: Path):
    clock = SimClock()
    store = SQLiteStore(tmp_path / "farmwatch.db")
    writer = HltLogWriter(tmp_path / "app.log", clock=clock)
    yield tmp_path, clock, store, writer
    writer.close()
    store.close()


def test_records_are_parsed_and_stored_with_their_file_position(env):
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log")], clock)
    runner = Runner([src], store, clock=clock)
    writer.write(40)
    settle(runner, clock)
    assert_exactly_once(store, writer)
    first = min(stored(store), key=lambda r: r.fields["log.offset"])
    assert first.fields["log.offset"] == 0 and first.fields["log.file.path"] == str(tmp / "app.log")
    assert first.ts == 1_700_000_000.0  # the time written in the line, not when it was read
    tb = [r for r in stored(store) if "Traceback" in r.message][0]
    assert tb.level == "error" and tb.message.startswith("Exception in event processing")
    assert tb.message.splitlines()[-1].startswith("ValueError: bad header") and tb.fields["log.logger"] in {
        "HLTZMQ2Ds", "HLTDs2ZMQ", "HLTDQM2ZMQ", "ZMQDistributor", "ZMQCollector", "StorageSerializer"}
    cursor = store.cursors("hltlogs")
    assert [c["offset"] for c in cursor.values()] == [os.path.getsize(tmp / "app.log")]
    src.close()


@pytest.mark.parametrize("pattern", ["app.log*", "app.log"])
def test_rename_and_create_rotation(env, pattern):
    """logrotate's default: lines written just before the rename are read through the open file,
    whether or not the pattern matches the rotated name."""
    tmp, clock, store, writer = env
    src = source([str(tmp / pattern)], clock)
    runner = Runner([src], store, clock=clock)
    for round_ in range(4):
        writer.write(25)
        cycle(runner, clock)
        writer.write(10)  # not read yet when the file is rotated
        writer.rotate("rename", keep=2)  # the oldest rotated file is deleted by the second rotation
        writer.write(5)
        cycle(runner, clock, 2)
    settle(runner, clock)
    assert_exactly_once(store, writer)
    src.close()


def test_copytruncate_rotation_reads_the_copy_where_the_original_was_left(env):
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log*")], clock)
    runner = Runner([src], store, clock=clock)
    for _ in range(3):
        writer.write(30)
        cycle(runner, clock)
        writer.write(12)  # only in the copy once the original is truncated
        writer.rotate("copytruncate")
        writer.write(3)
        cycle(runner, clock, 2)
    settle(runner, clock)
    assert_exactly_once(store, writer)
    assert src.stats.truncations == 3
    src.close()


def test_truncated_to_empty_then_written_again(env):
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log")], clock)
    runner = Runner([src], store, clock=clock)
    writer.write(20)
    settle(runner, clock)
    os.truncate(tmp / "app.log", 0)  # emptied in place, nothing written yet
    cycle(runner, clock, 2)
    writer.write(20)
    settle(runner, clock)
    assert_exactly_once(store, writer)
    assert src.stats.truncations == 1
    (key,) = store.cursors("hltlogs")
    assert key.endswith(":1")  # the second generation of the file's content
    src.close()


def test_restart_resumes_from_the_stored_offsets(env):
    tmp, clock, store, writer = env
    for _ in range(3):
        src = source([str(tmp / "app.log*")], clock)
        runner = Runner([src], store, clock=clock)
        writer.write(20)
        cycle(runner, clock)
        src.close()  # farmwatch stops; the application keeps writing
        writer.write(7)
        writer.rotate("rename")
    src = source([str(tmp / "app.log*")], clock)
    runner = Runner([src], store, clock=clock)
    settle(runner, clock)
    assert_exactly_once(store, writer)
    src.close()


@pytest.mark.parametrize("mode", ["copytruncate", "recreate"])
def test_rotation_while_stopped_carries_the_offset_to_the_copy(env, mode):
    """Issue 15 item 4, the scenario as reported: 100 records collected, farmwatch stopped,
    ``cp app.log app.log.1; : > app.log`` (or the original deleted), 10 more, restart: 110
    records, not 210. The copy's pattern is listed first, so it is found before the original."""
    tmp, clock, store, writer = env
    paths = [str(tmp / "app.log.[0-9]"), str(tmp / "app.log")]
    src = source(paths, clock)
    writer.write(100)
    settle(Runner([src], store, clock=clock), clock)
    src.close()
    writer.write(7)  # never read before the rotation: only in the copy
    writer.rotate(mode)
    writer.write(10)
    src = source(paths, clock)
    settle(Runner([src], store, clock=clock), clock)
    assert_exactly_once(store, writer)
    assert len(writer.written) == 117
    src.close()


def test_crash_between_storing_and_acknowledging(env):
    """The records and the offsets are committed together; the process dies before ``ack``: the
    next process continues after them."""
    tmp, clock, store, writer = env
    writer.write(30)
    clock.advance(QUIET)
    src = source([str(tmp / "app.log")], clock)
    src.bind_store(store)
    batch = next(b for b in src.poll() if isinstance(b, LogBatch))
    assert len(batch.records) == 29  # the last record may still get continuation lines: it waits
    LogStore(store).write_logs(batch.records, cursors=batch)  # stored … and then the crash: no ack
    src.close()
    writer.write(10)
    src = source([str(tmp / "app.log")], clock)
    settle(Runner([src], store, clock=clock), clock)
    assert_exactly_once(store, writer)
    src.close()


def test_records_refused_by_the_store_are_read_again_and_a_second_sink_gets_no_duplicates(env):
    """Another sink (a second real store, deduplicating by doc_id like Elasticsearch) accepts the
    records, then the embedded store refuses them (an SQLite trigger aborts the insert, as a full
    disk would): the batch is refused, the offsets stay, and the next cycles deliver the same
    records again to both, each stored once."""
    tmp, clock, store, writer = env
    other = SQLiteStore(tmp / "other.db")
    other_logs = LogStore(other)
    src = source([str(tmp / "app.log")], clock)
    runner = Runner([src], store, clock=clock, log_sinks=[other_logs], write_attempts=2, backoff=0.001)
    writer.write(25)
    cycle(runner, clock)  # 24 records: the last one waits for possible continuation lines
    offsets = store.cursors("hltlogs")
    assert len(stored(store)) == 24 and other_logs.count() == 24
    writer.write(10)
    clock.advance(QUIET)
    with store.transaction("inject a fault", write=True) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON logs BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    cycle(runner, clock)
    assert runner.refused_log_batches == 1 and other_logs.count() == 34
    assert len(stored(store)) == 24 and store.cursors("hltlogs") == offsets
    with store.transaction("heal", write=True) as conn:
        conn.execute("DROP TRIGGER refuse")
    cycle(runner, clock, 2)
    assert_exactly_once(store, writer)
    assert other_logs.count() == 35
    src.close()
    other.close()


def wait_for(store: SQLiteStore, n: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while LogStore(store).count() < n and time.monotonic() < deadline:
        time.sleep(0.02)


def test_threaded_runner_with_rotation_while_running(env):
    """The service as deployed, in real time: the source on its own thread, the store writer on
    another, the application writing and rotating (both ways) while they run."""
    tmp, _, store, writer = env
    clock = RealClock()
    cfg = LogFilesConfig(kind="logfiles", paths=[str(tmp / "app.log*")], host="hltwk01", interval="50ms",
                         timeout="20ms", max_bytes="4KiB", multiline_wait="200ms", partial_wait="1s")
    src = LogFilesSource("hltlogs", cfg, clock=clock)
    runner = Runner([src], store, clock=clock)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        writer.write(40)
        wait_for(store, 1)  # farmwatch is following the file before the first rotation
        for i in range(6):
            writer.write(40)
            writer.rotate("rename" if i % 2 else "copytruncate", keep=9)
            time.sleep(0.03)
        writer.write(10)
        wait_for(store, len(writer.written))
    finally:
        stop.set()
        thread.join(30)
    assert_exactly_once(store, writer)
    assert runner.written_logs == len(writer.written)
    src.close()


def test_inode_reuse_is_detected_by_the_fingerprint(env):
    tmp, clock, store, writer = env
    path = tmp / "app.log"
    src = source([str(path)], clock)
    runner = Runner([src], store, clock=clock)
    writer.write(20)
    settle(runner, clock)
    src.close()
    old_inode = path.stat().st_ino
    writer.close()
    path.unlink()
    # A new file with the same inode (the file system hands the freed one out again) and as many
    # bytes as were read of the old one: only the fingerprint tells them apart.
    for attempt in range(50):
        path.write_bytes(b"")
        if path.stat().st_ino == old_inode:
            break
        (tmp / f"spacer{attempt}").write_bytes(b"")  # keeps the non-matching inode busy
        path.unlink()
    else:
        path.write_bytes(b"")  # no reuse on this file system: the fingerprint check still applies
    reuse = path.stat().st_ino == old_inode
    second = HltLogWriter(path, clock=clock, seed=99)
    second.seq = 1000
    second.write(40)
    src = source([str(path)], clock)
    settle(Runner([src], store, clock=clock), clock)
    seqs = sorted(int(SEQ.search(r.fields["event.original"]).group(1)) for r in stored(store))
    assert seqs == sorted([w.seq for w in writer.written] + [w.seq for w in second.written])
    print("inode reused:", reuse)
    second.close()
    src.close()


def test_a_deleted_file_is_read_to_its_end_then_closed_and_forgotten(env):
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log")], clock)
    runner = Runner([src], store, clock=clock)
    writer.write(15)
    cycle(runner, clock)
    writer.write(9)  # written, then the file is deleted before farmwatch read it
    os.unlink(tmp / "app.log")
    cycle(runner, clock, 2)
    assert_exactly_once(store, writer)
    assert src._files == {} and store.cursors("hltlogs") == {}
    src.close()


def test_the_offset_of_a_file_renamed_away_is_forgotten_after_forget_after(env):
    """logrotate renames app.log to app.log.old, which no pattern matches: it is read to its end,
    closed after close_inactive, and its offset leaves the store after forget_after (rotations must
    not pile up offsets for months). The live file's offset stays, however long it is quiet."""
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log")], clock, close_inactive="5m", forget_after="1d")
    runner = Runner([src], store, clock=clock)
    writer.write(10)
    settle(runner, clock)
    old_key = next(iter(store.cursors("hltlogs")))
    writer.rotate("rename")  # → app.log.1: not matched by the pattern
    writer.write(5)
    settle(runner, clock)
    clock.advance(400)
    cycle(runner, clock, 2)
    assert len(src._files) == 1 and len(store.cursors("hltlogs")) == 2  # closed, offset still kept
    clock.advance(86400)
    cycle(runner, clock, 2)
    cursors = store.cursors("hltlogs")
    assert old_key not in cursors and len(cursors) == 1 and src.forgotten_offsets == 1
    assert_exactly_once(store, writer)
    counters = {k[0]: v for b in src.poll() if not isinstance(b, LogBatch) for k, v in zip(b.keys, b.values)}
    assert counters["logfiles.forgotten_offsets"] == 1
    src.close()


def test_partial_last_line_waits_for_its_newline_or_the_timeout(env):
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log")], clock, partial_wait="5s", multiline_wait="1s")
    runner = Runner([src], store, clock=clock)
    writer.write_raw("[INFO] first\n[ERROR] half a li")
    cycle(runner, clock)
    assert [r.message for r in stored(store)] == ["first"]
    writer.write_raw("ne\n[WARNING] tail without newline")
    cycle(runner, clock)
    assert sorted(r.message for r in stored(store)) == ["first", "half a line"]
    clock.advance(5.0)
    cycle(runner, clock)
    assert sorted(r.message for r in stored(store)) == ["first", "half a line", "tail without newline"]
    src.close()


def test_multiline_record_waits_for_its_continuation_lines(env):
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log")], clock, multiline_wait="2s")
    runner = Runner([src], store, clock=clock, )
    writer.write_raw("[ERROR] worker status\n    hltwk01 ok\n")
    cycle(runner, clock)
    assert stored(store) == []  # more indented lines may follow
    writer.write_raw("    hltwk02 dead\n")
    cycle(runner, clock)
    clock.advance(2.0)
    cycle(runner, clock)
    assert [r.message for r in stored(store)] == ["worker status\n    hltwk01 ok\n    hltwk02 dead"]
    src.close()


def test_unknown_lines_stay_one_record_each_and_bad_bytes_are_replaced(env):
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log")], clock)
    runner = Runner([src], store, clock=clock)
    with open(tmp / "app.log", "ab") as f:
        f.write(b"no header here\n  indented but nothing to continue\nbad \xff\xfe bytes\n\n\r\n")
    settle(runner, clock)
    assert sorted(r.message for r in stored(store)) == ["  indented but nothing to continue", "bad \ufffd\ufffd bytes",
                                                         "no header here"]
    src.close()


def test_a_line_with_an_impossible_time_does_not_stop_the_file(env):
    """Hour 24 or 30 February is no time: the line is kept as it is, and the lines after it ship
    (once such a line raised from poll(), and the same bytes were re-read every cycle)."""
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log")], clock)
    runner = Runner([src], store, clock=clock)
    with open(tmp / "app.log", "a") as f:
        f.write("2026-11-30 24:00:01 [INFO] impossible hour\n2026-02-30 10:00:00 [INFO] impossible day\n[ERROR] after them\n")
    settle(runner, clock)
    messages = sorted(r.message for r in stored(store))
    assert len(messages) == 3 and "after them" in messages[0] + messages[1] + messages[2]
    assert any("impossible hour" in m for m in messages) and any("impossible day" in m for m in messages)
    src.close()


def test_bounded_reads_work_off_a_backlog_over_several_cycles(env):
    tmp, clock, store, writer = env
    writer.write(400)
    size = os.path.getsize(tmp / "app.log")
    src = source([str(tmp / "app.log")], clock, max_bytes=8192, max_line_bytes=1024)
    runner = Runner([src], store, clock=clock)
    cycle(runner, clock)
    assert 0 < len(stored(store)) < 400
    cycle(runner, clock, size // 8192 + 2)
    settle(runner, clock)
    assert_exactly_once(store, writer)
    src.close()


MULTILINE = [
    ["2026-11-30 05:00:00.000Z [INFO] Processed 100 events seq=1  { module: HLTZMQ2Ds }"],
    ["2026-11-30 05:00:00.010Z [ERROR] Exception in event processing seq=2  { module: HLTZMQ2Ds }",
     "Traceback (most recent call last):",
     '  File "/hlt/scripts/hlt_worker.py", line 42, in unpack',
     '    raise ValueError(f"bad header {header!r}")',
     "ValueError: bad header (seq=2)",
     "",
     "During handling of the above exception, another exception occurred:",
     "",
     "Traceback (most recent call last):",
     '  File "/hlt/scripts/hlt_worker.py", line 88, in process',
     "RuntimeError: worker gave up (seq=2)"],
    ["2026-11-30 05:00:00.020Z [WARNING] worker status seq=3  { module: ZMQDistributor }",
     "    hltwk01: 20 processes, 0 dead"],
    ["*** free text without a header, seq=4 ***"],
    ["2026-11-30 05:00:00.030Z [INFO] Processed 200 events seq=5  { module: HLTZMQ2Ds }"],
]


def test_a_read_that_ends_inside_a_multiline_record_never_splits_it(tmp_path: Path):
    """Issue 15 item 12 (bench_logs --size 200MB: 1,734,001 records for 1,734,000): a read that
    ended inside ``Traceback (most recent call last)`` left ``Trace`` as the partial last line,
    which was taken for the start of the next record, so the error's header was emitted alone and
    the traceback became a record of its own. Every position of the read boundary, every record
    whole and once."""
    path = tmp_path / "app.log"
    path.write_text("".join(line + "\n" for record in MULTILINE * 3 for line in record))
    size = path.stat().st_size
    limit = max(len(line) for record in MULTILINE for line in record) + 1
    expected = ["\n".join(record) for record in MULTILINE * 3]
    largest = max(len("\n".join(record)) + 1 for record in MULTILINE)
    for budget in range(largest + limit, size + 1):  # (a record larger than a read is cut: by design)
        clock = SimClock()
        src = source([str(path)], clock, max_bytes=budget, max_line_bytes=limit, multiline_wait="1s")
        got = []
        for _ in range(2 * size // budget + 4):
            for batch in src.poll():
                if isinstance(batch, LogBatch):
                    got += [r.fields["event.original"] for r in batch.records]
                    batch.ack()
            clock.advance(2.0)
        src.close()
        assert got == expected, f"a read of {budget} bytes: {got}"


def test_over_long_lines_are_cut_and_counted(env):
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log")], clock, max_line_bytes=100)
    runner = Runner([src], store, clock=clock)
    writer.write_raw("[INFO] short\n[INFO] " + "x" * 500 + "\n[INFO] after\n")
    settle(runner, clock)
    messages = sorted(r.message for r in stored(store))
    assert messages == ["after", "short", "x" * 93]
    assert src.stats.long_lines == 1
    # the same, when the long line is not complete yet and longer than a read
    writer.write_raw("[INFO] " + "y" * 300)
    settle(runner, clock)
    writer.write_raw("y" * 300 + "\n[INFO] end\n")
    settle(runner, clock)
    assert sorted(r.message for r in stored(store))[-2:] == ["x" * 93, "y" * 93]
    assert "end" in {r.message for r in stored(store)}
    src.close()


def test_start_at_end_skips_what_exists_at_the_first_start(env):
    tmp, clock, store, writer = env
    writer.write(10)
    src = source([str(tmp / "*.log")], clock, start_at="end")
    runner = Runner([src], store, clock=clock)
    cycle(runner, clock)
    new = HltLogWriter(tmp / "new.log", clock=clock)
    new.seq = 500
    new.write(3)
    writer.write(2)
    settle(runner, clock)
    seqs = sorted(int(SEQ.search(r.message).group(1)) for r in stored(store))
    assert seqs == [11, 12, 501, 502, 503]
    new.close()
    src.close()


def test_service_host_and_labels_from_the_path(env):
    tmp, clock, store, _ = env
    (tmp / "hlt03" / "hltwk07").mkdir(parents=True)
    (tmp / "hlt03" / "hltwk07" / "worker.log").write_text("[ERROR] boom\n")
    cfg = LogFilesConfig(kind="logfiles", paths=[str(tmp / "hlt*/*/*.log")], labels={"site": "kek"},
                         path_pattern=r"/(?P<unit>hlt\d+)/(?P<host>[^/]+)/(?P<service>[^/.]+)\.log$")
    src = LogFilesSource("w", cfg, clock=clock)
    settle(Runner([src], store, clock=clock), clock)
    (r,) = stored(store)
    assert (r.host, r.service, r.level) == ("hltwk07", "worker", "error")
    assert r.fields["labels.unit"] == "hlt03" and r.fields["labels.site"] == "kek"
    src.close()


def test_relative_paths_are_relative_to_the_config_file_and_unmatched_patterns_are_reported(tmp_path: Path):
    """Issue 15 item 8: run from another directory, ``paths = ["logs/*.log"]`` found nothing,
    silently, and ``check-config`` said OK. Now they resolve against the config file's folder
    (as docs/config.md says), and a pattern that matches nothing is one line in ``check-config``
    and one warning when the service starts."""
    deploy, elsewhere = tmp_path / "deploy [1]", tmp_path / "elsewhere"  # glob characters in the folder too
    (deploy / "logs").mkdir(parents=True)
    elsewhere.mkdir()
    (deploy / "logs" / "app.log").write_text("".join(
        f"2026-11-30 05:00:0{i}.000Z [INFO] Processed {i} events seq={i}  {{ module: HLTZMQ2Ds }}\n" for i in range(3)))
    config = deploy / "farmwatch.toml"
    config.write_text('[store]\npath = "fw.db"\n\n[sources.hlt]\nkind = "logfiles"\n'
                      'paths = ["logs/*.log", "rotated/*.log.1"]\nmultiline_wait = "0s"\n')

    def farmwatch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "farmwatch", *args, "-c", str(config)], cwd=elsewhere,
                              capture_output=True, text=True, timeout=120)

    checked = farmwatch("check-config")
    assert checked.returncode == 0 and ": OK: 1 source(s)" in checked.stdout, checked.stderr
    assert checked.stderr.splitlines() == [
        f"{config}: sources.hlt.paths: no file matches {glob.escape(str(deploy))}/rotated/*.log.1 (yet)"]
    done = farmwatch("collect", "--once")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no file matches") == 1 and "rotated/*.log.1" in done.stderr
    with SQLiteStore(deploy / "fw.db") as store:
        assert sorted(int(SEQ.search(r.message).group(1)) for r in stored(store)) == [0, 1, 2]
    assert not (elsewhere / "fw.db").exists()


def test_a_pattern_that_matches_nothing_is_one_warning_at_start(tmp_path: Path, caplog):
    clock = SimClock()
    src = source([str(tmp_path / "*.log"), str(tmp_path / "later" / "*.log")], clock)
    (tmp_path / "app.log").write_text("[INFO] one\n")
    with caplog.at_level("WARNING", logger="farmwatch.sources.logfiles"):
        for _ in range(3):
            for batch in src.poll():
                if isinstance(batch, LogBatch):
                    batch.ack()
            clock.advance(1.0)
    src.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"log source hltlogs: paths: no file matches {tmp_path}/later/*.log (yet); looking again every cycle"]


def test_own_counters_are_samples(env):
    tmp, clock, store, writer = env
    src = source([str(tmp / "app.log")], clock)
    runner = Runner([src], store, clock=clock)
    writer.write(12)
    settle(runner, clock)
    latest = store.latest("logfiles.*")
    values = dict(zip(latest["name"], latest["value"]))
    assert values["logfiles.records"] == 12 and values["logfiles.files"] == 1
    assert values["logfiles.bytes"] == os.path.getsize(tmp / "app.log") and values["logfiles.lag_bytes"] == 0
    src.close()


def test_config_errors_name_the_key():
    with pytest.raises(Exception) as info:
        parse({"sources": {"l": {"kind": "logfiles", "paths": [], "timezone": "Mars/Olympus",
                                 "path_pattern": "(unclosed"}}}, "logs.toml")
    text = str(info.value)
    assert "logs.toml: sources.l.paths:" in text and "sources.l.timezone: unknown time zone" in text
    assert "sources.l.path_pattern: not a valid regular expression" in text


def test_shipped_example_config_is_valid():
    from farmwatch.config.loader import load

    settings = load(Path(__file__).resolve().parent.parent / "collectors" / "logfiles.toml")
    assert any(s.kind == "logfiles" for s in settings.sources.values())
