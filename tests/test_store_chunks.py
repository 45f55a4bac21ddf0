"""The compact store: compaction into compressed chunks, rollups, repeated values at one ms,
migration of old files, and compaction under kill -9 and a full database, on real files."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from farmwatch.clock import SimClock
from farmwatch.model import Batch, Sample, labels, with_labels
from farmwatch.store import SQLiteStore, StoreError
from farmwatch.store import codec
from farmwatch.store import sqlite as store_sqlite
from store_helpers import write_schema4_store

T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
HOUR = 3600.0
QUEUE = "hlt.output.ready_queue_size"
RATE = "hlt.output.sent_events:rate"
DIST = labels(unit="hlt01", app="distributor")


def cycle(i: int, peers: int = 3) -> Batch:
    """A distributor's poll cycle 10 s apart: a counter, a rate with 2 decimals, a noisy float, per-peer queues."""
    rng = np.random.default_rng(i)
    batch = Batch(T0 + 10 * i, [("hlt.output.sent_events", DIST), (RATE, DIST), ("hlt.poll.duration", DIST)],
                  [float(100 * i), round(33 + rng.random() * 3, 2), float(rng.random() / 70)])
    for p in range(peers):
        batch.add((QUEUE, with_labels(DIST, peer=f"hltwk{p:02d}")), float((i + p) % 7))
    return batch


def tables(path: Path, pattern: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE name GLOB ? ORDER BY name", (pattern,))]


def count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchone()[0]


def snapshot(store: SQLiteStore) -> tuple[pd.DataFrame, ...]:
    return (store.query(), store.query(form="wide"), store.latest(), store.query(limit=7),
            store.query(QUEUE, ["peer=hltwk01"], since=T0 + 3000, until=T0 + 4000),
            store.rollup(resolution="1m"), store.rollup(resolution="10m"))


def test_codec_round_trips_bit_for_bit() -> None:
    specials = np.array([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 0.0, 2.0**60])
    columns = [specials, np.arange(1000.0), np.round(np.linspace(-5, 5, 1000), 2), np.full(3, 7.25), np.zeros(0)]
    for values in columns:
        ts = (np.arange(len(values)) * 1000 + 1_704_067_200_000 + (np.arange(len(values)) % 3)).astype(np.int64)
        got_ts, got = codec.decode(codec.encode(ts, values))
        assert (got_ts == ts).all()
        assert (got.view(np.uint64) == values.view(np.uint64)).all()
    matrix = np.stack([np.arange(50.0), np.full(50, math.nan), np.round(np.arange(50) / 7, 3), np.arange(50) / 7], axis=1)
    assert codec.float_modes(matrix).tolist() == [codec.DELTA, codec.XOR, codec.DECIMAL + 3, codec.XOR]
    for j, blob in enumerate(codec.encode_matrix(matrix)):
        assert (codec.decode(blob)[0].view(np.uint64) == matrix[:, j].view(np.uint64)).all()


def test_compaction_keeps_every_answer_and_drops_the_head(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    with SQLiteStore(path) as store:
        # 2.5 hours; a peer joins in the second hour (another layout), a resend of one cycle,
        # a state, NaN, and a burst of one series at one ms.
        store.write([cycle(i, peers=3 if i < 400 else 4) for i in range(900)])
        store.write(cycle(10, peers=3))
        store.write(Batch(T0 + 55, [("hlt.socket_state", DIST), (QUEUE, DIST)], ["connected", math.nan]))
        store.write(Batch(T0 + 4000.0004, [("zabbix.system.cpu.util", labels(host="hltwk07"))] * 3, [1.0, 2.0, 3.0]))
        before = snapshot(store)
        assert tables(path, "head_*") == ["head_20240101T00", "head_20240101T01", "head_20240101T02"]

        compacted = store.compact(now=T0 + 2 * HOUR + 700)  # the last hour is not over: stays in the head

        assert tables(path, "head_*") == ["head_20240101T02"]
        assert compacted == sum(len(b) for b in [cycle(i, 3 if i < 400 else 4) for i in range(720)]) + 1 + 3
        for was, now in zip(before, snapshot(store)):
            pd.testing.assert_frame_equal(was, now)
        store.compact(everything=True)
        assert tables(path, "head_*") == []
        for was, now in zip(before, snapshot(store)):
            pd.testing.assert_frame_equal(was, now)
        assert count(path, "SELECT count(*) FROM extras") == 0
    with SQLiteStore(path, readonly=True) as reader:  # another process's view
        for was, now in zip(before, snapshot(reader)):
            pd.testing.assert_frame_equal(was, now)
    # Series polled together share one timestamp chunk per layout and hour.
    assert count(path, "SELECT count(*) FROM series_chunks WHERE ref > 0") > count(path, "SELECT count(*) FROM series_chunks WHERE series_id < 0")


def test_late_samples_into_a_compacted_hour_replace_and_merge(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "farm.db") as store:
        store.write([cycle(i) for i in range(360)])
        store.compact(everything=True)
        store.write(Batch(T0 + 100, [(QUEUE, with_labels(DIST, peer="hltwk01"))], [99.0]))  # a resend, new value
        store.write(Batch(T0 + 105, [(QUEUE, with_labels(DIST, peer="hltwk01"))], [55.0]))  # a late sample
        peer = store.query(QUEUE, ["peer=hltwk01"], since=T0 + 90, until=T0 + 110)
        assert peer["value"].tolist() == [(9 + 1) % 7, 99.0, 55.0, (11 + 1) % 7]
        store.compact(everything=True)
        assert store.query(QUEUE, ["peer=hltwk01"], since=T0 + 90, until=T0 + 110).equals(peer)
        assert len(store.query(QUEUE)) == 360 * 3 + 1


def test_five_values_of_one_item_at_one_second_are_all_kept(tmp_path: Path) -> None:
    """Issue 15 item 5: Zabbix numbers values sent together ns 0-4; all of them are stored."""
    item = ("zabbix.system.cpu.util", labels(host="hltwk07", item="system.cpu.util"))
    clock = 1_704_067_260
    path = tmp_path / "farm.db"
    with SQLiteStore(path) as store:
        batch = Batch(clock + 0 / 1e9, [], [])  # the Zabbix source's ts for (clock, ns=0..4)
        for ns, value in enumerate([10.0, 20.0, 30.0, 40.0, 50.0]):
            batch.add(item, value)
        assert store.write([batch]) == 5
        assert store.query(item[0])["value"].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]
        assert store.write([batch]) == 5  # a replay does not double them
        loose = [Sample(clock + 1 + ns / 1e9, item[0], float(ns), item[1]) for ns in range(5)]
        assert store.write(loose) == 5
        assert store.query(item[0])["value"].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0, 0.0, 1.0, 2.0, 3.0, 4.0]
        assert store.latest(item[0])["value"].tolist() == [4.0]
        store.compact(everything=True)
        assert store.query(item[0])["value"].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0, 0.0, 1.0, 2.0, 3.0, 4.0]
        assert store.latest(item[0])["value"].tolist() == [4.0]
        one = store.rollup(item[0], resolution="1m")
        assert (one["count"].tolist(), one["min"].tolist(), one["max"].tolist(), one["last"].tolist()) == (
            [10], [0.0], [50.0], [4.0])


def test_two_cycles_with_one_timestamp_in_one_write_keep_both(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "farm.db") as store:
        key = ("farmwatch.source.samples", labels(source="hlt"))
        assert store.write([Batch(T0, [key], [1.0]), Batch(T0, [key, (QUEUE, DIST)], [2.0, 3.0])]) == 3
        assert store.query(key[0])["value"].tolist() == [1.0, 2.0]
        states = [Batch(T0 + 1, [("s", ())], ["a"]), Batch(T0 + 1, [("s", ())], ["b"])]
        store.write(states)
        assert store.query("s")["state"].tolist() == ["a", "b"]
        assert store.latest("s")["state"].tolist() == ["b"]


def test_rollups_match_pandas_and_are_kept_longer_than_samples(tmp_path: Path) -> None:
    clock = SimClock(T0)
    path = tmp_path / "farm.db"
    with SQLiteStore(path, retention=HOUR, rollup_retention={"1m": 3 * HOUR, "10m": 2 * 86400}, clock=clock) as store:
        store.write([cycle(i) for i in range(1800)])  # 5 hours
        raw = store.query(RATE)
        expected = raw.set_index("ts")["value"].resample("1min")
        fresh = store.rollup(RATE, resolution="1m")  # from the head, on the fly
        store.compact(now=T0 + 5 * HOUR + 700)
        stored = store.rollup(RATE, resolution="1m")
        pd.testing.assert_frame_equal(fresh, stored)
        np.testing.assert_allclose(stored["value"], expected.mean().to_numpy())
        assert stored["min"].tolist() == expected.min().tolist()
        assert stored["max"].tolist() == expected.max().tolist()
        assert stored["last"].tolist() == expected.last().tolist()
        assert stored["count"].tolist() == expected.count().tolist()
        ten = store.rollup(RATE, resolution="10m", since=T0 + 600, until=T0 + 3000)
        assert list(ten["ts"]) == [pd.Timestamp(T0 + s, unit="s", tz="UTC") for s in (600, 1200, 1800, 2400, 3000)]
        assert ten["count"].tolist() == [60] * 5

        clock.advance(5 * HOUR)  # now T0 + 5 h: samples older than 4 h go, 1m rollups older than 2 h (hour chunks)
        store.apply_retention()
        assert store.query(RATE)["ts"].min() >= pd.Timestamp(T0 + 3 * HOUR, unit="s", tz="UTC")
        assert store.rollup(RATE, resolution="1m")["ts"].min() >= pd.Timestamp(T0 + HOUR, unit="s", tz="UTC")
        assert len(store.rollup(RATE, resolution="10m")) == 30  # all of them
    with pytest.raises(ValueError, match="resolution"):
        SQLiteStore(path).rollup(RATE, resolution="5m")


def test_day_rollups_are_merged_into_one_chunk_per_series(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "farm.db") as store:
        key = ("x", ())
        store.write([Batch(T0 + 60 * i, [key], [float(i)]) for i in range(3 * 24 * 60)])  # 3 days, 1/min
        before = store.rollup("x", resolution="10m")
        store.compact(now=T0 + 3 * 86400 + 3600)
        with store.transaction("look") as conn:
            per_day = conn.execute("SELECT res, count(*) FROM rollups GROUP BY res").fetchall()
        assert per_day == [(60_000, 3), (600_000, 3)]
        pd.testing.assert_frame_equal(store.rollup("x", resolution="10m"), before)
        assert store.query("x")["value"].tolist() == [float(i) for i in range(3 * 24 * 60)]


def test_an_old_format_store_is_read_and_converted(tmp_path: Path) -> None:
    """A file written before chunks existed (schema 4: day tables frames_YYYYMMDD, no extras)."""
    path = tmp_path / "old.db"
    keys = [("hlt.poll.duration", DIST), (QUEUE, DIST)]
    write_schema4_store(path, keys, T0)

    with SQLiteStore(path) as store:
        assert store.schema_version() == len(store_sqlite.MIGRATIONS)
        before = store.query()
        assert len(before) == 401 and before["state"].dropna().tolist() == ["stuck"]
        store.write(Batch(T0 + 30, keys, [7.0, 8.0]))  # new samples go to an hour table
        store.compact(everything=True)
        assert tables(path, "frames_*") == [] and tables(path, "head_*") == []
        after = store.query()
        assert len(after) == 403
        assert store.query(QUEUE)["value"].dropna().tolist()[:3] == [0.0, 8.0, 1.0]


def compact_forever(path: str) -> None:
    with SQLiteStore(path) as store:
        while True:
            store.write([cycle(i) for i in range(720, 1440)])
            store.compact(everything=True)


def test_kill_9_while_compacting_leaves_an_intact_store(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    with SQLiteStore(path) as store:
        store.write([cycle(i) for i in range(720)])
        expected = store.query()
    ctx = multiprocessing.get_context("spawn")
    for delay in (0.6, 1.1, 1.7):
        proc = ctx.Process(target=compact_forever, args=(str(path),))
        proc.start()
        proc.join(delay + 1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        with SQLiteStore(path) as store:
            got = store.query(until=T0 + 7199)
            pd.testing.assert_frame_equal(got, expected)
            assert len(store.query(since=T0 + 7200)) in (0, 720 * 6)  # a whole write or nothing


def test_a_full_database_fails_compaction_cleanly_and_it_resumes(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    with SQLiteStore(path) as store:
        store.write([cycle(i, peers=300) for i in range(720)])
        expected = store.query()
        with sqlite3.connect(path, isolation_level=None) as other:
            other.execute("VACUUM")  # no free pages left to reuse
        with store.transaction("measure") as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
        with store.transaction("limit", write=True) as conn:
            conn.execute(f"PRAGMA max_page_count = {pages}")  # no room to grow: "database or disk is full"
        with pytest.raises(StoreError, match="full"):
            store.compact(everything=True)
        pd.testing.assert_frame_equal(store.query(), expected)
        assert tables(path, "head_*") == ["head_20240101T00", "head_20240101T01"]
        with store.transaction("limit", write=True) as conn:
            conn.execute("PRAGMA max_page_count = 1073741823")
        store.compact(everything=True)
        pd.testing.assert_frame_equal(store.query(), expected)
        assert tables(path, "head_*") == []
