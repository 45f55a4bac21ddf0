"""The embedded SQLite store, against real files: formats, matchers, retention, schema, concurrency."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from farmwatch.clock import SimClock
from farmwatch.model import Batch, Sample, format_series, labels, with_labels
from farmwatch.store import Matcher, SQLiteStore, StoreError, parse_matchers
from farmwatch.store import sqlite as store_sqlite
from farmwatch.store import storefile

T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
DAY = 86_400.0
QUEUE = "hlt.output.ready_queue_size"
EVENTS = "hlt.output.events"


def utc(ts: float) -> pd.Timestamp:
    return pd.Timestamp(ts, unit="s", tz="UTC")


def farm_batch(ts: float, scale: float = 1.0) -> Batch:
    """Two metrics of two apps on two units, plus one state value."""
    batch = Batch(ts)
    for unit in ("hlt01", "hlt02"):
        for app in ("distributor", "collector"):
            lbls = labels(unit=unit, app=app)
            batch.add((QUEUE, lbls), scale * len(unit + app))
            batch.add((EVENTS, lbls), scale * 1000)
    batch.add(("hlt.socket_state", labels(unit="hlt01")), "connected")
    return batch


DISTRIBUTOR = labels(unit="hlt01", app="distributor")


def peer_batch(ts: float, peers: list[int], offset: float = 0.0) -> Batch:
    """A distributor's cycle: its own value plus one per connected peer (value = peer + offset)."""
    batch = Batch(ts, [(EVENTS, DISTRIBUTOR)], [offset])
    for peer in peers:
        batch.add((QUEUE, with_labels(DISTRIBUTOR, peer=f"hltwk{peer:02d}")), peer + offset)
    return batch


def table_rows(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchone()[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "farm.db") as opened:
        yield opened


# --- round trips -------------------------------------------------------------------------


def test_long_form_round_trip_with_label_columns(store: SQLiteStore) -> None:
    assert store.write([farm_batch(T0), farm_batch(T0 + 10, scale=2)]) == 18

    frame = store.query(QUEUE)

    assert list(frame.columns) == ["ts", "name", "value", "state", "labels", "app", "unit"]
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]"
    assert len(frame) == 8
    assert frame["ts"].is_monotonic_increasing
    first = frame.iloc[0]
    assert first["ts"] == utc(T0)
    assert first["name"] == QUEUE
    assert first["labels"] == {"app": "collector", "unit": "hlt01"}
    assert (first["app"], first["unit"]) == ("collector", "hlt01")
    assert first["value"] == len("hlt01collector")
    assert first["state"] is None
    later = frame[frame["ts"] == utc(T0 + 10)].set_index(["unit", "app"])
    assert later.loc[("hlt02", "distributor"), "value"] == 2.0 * len("hlt02distributor")


def test_long_form_sorts_by_time_then_series(store: SQLiteStore) -> None:
    store.write([farm_batch(T0 + 10), farm_batch(T0)])

    frame = store.query()

    keys = [(ts, format_series(name, tuple(sorted(lbls.items())))) for ts, name, lbls in
            zip(frame["ts"], frame["name"], frame["labels"])]
    assert keys == sorted(keys)


def test_wide_form_one_column_per_series(store: SQLiteStore) -> None:
    store.write([farm_batch(T0), farm_batch(T0 + 10, scale=2)])
    store.write(Sample(T0 + 20, QUEUE, 7.0, labels(unit="hlt01", app="collector")))

    wide = store.query(form="wide")

    assert isinstance(wide.index, pd.DatetimeIndex)
    assert str(wide.index.dtype) == "datetime64[ns, UTC]"
    assert wide.index.name == "ts"
    assert list(wide.index) == [utc(T0), utc(T0 + 10), utc(T0 + 20)]
    assert len(wide.columns) == 8  # numeric series only: the state is not a column
    column = format_series(QUEUE, labels(unit="hlt01", app="collector"))
    assert wide[column].tolist() == [14.0, 28.0, 7.0]
    other = format_series(QUEUE, labels(unit="hlt02", app="collector"))
    assert math.isnan(wide.loc[utc(T0 + 20), other])
    assert list(wide.columns) == sorted(wide.columns)


def test_empty_results_keep_their_shape(store: SQLiteStore) -> None:
    assert list(store.query().columns) == ["ts", "name", "value", "state", "labels"]
    assert store.query(form="wide").shape == (0, 0)
    assert list(store.series().columns) == ["id", "name", "labels"]
    store.write(farm_batch(T0))
    assert store.query(since=T0 + 1).empty
    assert list(store.latest("no.such.metric").columns) == ["ts", "name", "value", "state", "labels"]


def test_series_listing(store: SQLiteStore) -> None:
    store.write(farm_batch(T0))

    listing = store.series(EVENTS, ["unit=hlt02"])

    assert list(listing.columns) == ["id", "name", "labels", "app", "unit"]
    assert listing["app"].tolist() == ["collector", "distributor"]
    assert set(listing["name"]) == {EVENTS}
    assert listing["id"].dtype == np.int64
    assert len(store.series()) == 9


def test_label_named_like_a_column_stays_in_labels(store: SQLiteStore) -> None:
    store.write(Sample(T0, "epics.pv", 1.0, labels(name="B2_nsm:get:HLT01:x", pv="p")))

    frame = store.query("epics.pv")

    assert frame["name"].tolist() == ["epics.pv"]
    assert frame["labels"][0] == {"name": "B2_nsm:get:HLT01:x", "pv": "p"}
    assert frame["pv"].tolist() == ["p"]


def test_since_until_are_inclusive_and_limit_keeps_earliest(store: SQLiteStore) -> None:
    store.write([farm_batch(T0 + 10 * i) for i in range(5)])

    window = store.query(EVENTS, since=T0 + 10, until=T0 + 30)
    assert sorted(set(window["ts"])) == [utc(T0 + 10), utc(T0 + 20), utc(T0 + 30)]

    limited = store.query(since=T0 + 10, limit=6)
    assert len(limited) == 6
    assert set(limited["ts"]) == {utc(T0 + 10)}
    assert store.query(form="wide", limit=2).shape == (1, 2)


def test_query_spans_day_chunks(store: SQLiteStore) -> None:
    key = (QUEUE, labels(unit="hlt01"))
    store.write([Batch(T0 - 1, [key], [1.0]), Batch(T0 + 1, [key], [2.0]), Batch(T0 + DAY + 1, [key], [3.0])])

    assert store.query(QUEUE)["value"].tolist() == [1.0, 2.0, 3.0]
    assert store.query(QUEUE, since=T0, until=T0 + DAY)["value"].tolist() == [2.0]
    assert store.latest(QUEUE)["value"].tolist() == [3.0]


# --- frames: one row per batch ------------------------------------------------------------


def test_key_set_changing_between_cycles_reads_back_in_long_and_wide_form(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    cycles = [[1, 2], [1, 2], [1, 2, 3], [1, 3], [1, 2]]  # peer 3 appears, peer 2 leaves and returns
    with SQLiteStore(path) as store:
        for i, peers in enumerate(cycles):
            store.write(peer_batch(T0 + i, peers, offset=10 * i))
        store.write(peer_batch(T0 + 4, [1, 2], offset=40))  # a resend replaces its frame

        long = store.query(QUEUE)
        assert list(zip(long["ts"], long["peer"], long["value"])) == [
            (utc(T0 + i), f"hltwk{peer:02d}", float(peer + 10 * i))
            for i, peers in enumerate(cycles) for peer in peers
        ]
        wide = store.query(QUEUE, form="wide")
        assert list(wide.index) == [utc(T0 + i) for i in range(5)]
        columns = [format_series(QUEUE, with_labels(DISTRIBUTOR, peer=f"hltwk{p:02d}")) for p in (1, 2, 3)]
        assert list(wide.columns) == columns
        expected = [[p + 10.0 * i if p in peers else math.nan for p in (1, 2, 3)]
                    for i, peers in enumerate(cycles)]
        np.testing.assert_array_equal(wide.to_numpy(), np.array(expected))
        window = store.query(QUEUE, since=T0 + 2, until=T0 + 3, form="wide")
        assert window.shape == (2, 3)
        assert store.query(EVENTS)["value"].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]

        latest = store.latest(QUEUE)
        assert list(zip(latest["peer"], latest["ts"], latest["value"])) == [
            ("hltwk03", utc(T0 + 3), 33.0), ("hltwk01", utc(T0 + 4), 41.0), ("hltwk02", utc(T0 + 4), 42.0)]
    # One frame per batch; the key set of cycles 0, 1 and 4 is one layout.
    assert table_rows(path, 'SELECT count(*) FROM "head_20240101T00"') == 5
    assert table_rows(path, "SELECT count(*) FROM layouts") == 3


def test_nan_and_infinities_round_trip_exactly(store: SQLiteStore) -> None:
    specials = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1, None]
    keys = [(f"x{i}", ()) for i in range(len(specials))]
    store.write(Batch(T0, keys, specials))  # None: the value-by-value path
    store.write(Batch(T0 + 1, keys[:-1], specials[:-1]))  # floats only: the numpy path
    store.write(Batch(T0 + 2, keys[:-1], np.array(specials[:-1])))
    store.write([Sample(T0 + 3, name, value) for (name, _), value in zip(keys, specials)])

    expected = np.array(specials, dtype=np.float64).view(np.int64)  # bit patterns; None is NaN
    wide = store.query(form="wide")
    assert wide.shape == (4, len(specials))
    assert (wide.to_numpy().view(np.int64) == expected).all()  # -0.0 keeps its sign, NaN stays NaN
    for frame in (store.query(until=T0), store.latest()):
        got = frame.set_index("name")["value"].reindex([name for name, _ in keys]).to_numpy()
        assert (got.view(np.int64) == expected).all()


def test_same_series_in_two_layouts_at_one_ts_appears_once(store: SQLiteStore) -> None:
    store.write(peer_batch(T0, [1, 2]))
    store.write(peer_batch(T0 + 1, [1, 2, 3]))
    store.write(peer_batch(T0, [1, 2, 3], offset=100))  # a resend of T0 under the newer key set

    long = store.query(QUEUE, until=T0)
    assert list(zip(long["peer"], long["value"])) == [
        ("hltwk01", 101.0), ("hltwk02", 102.0), ("hltwk03", 103.0)]
    assert store.query(EVENTS)["value"].tolist() == [100.0, 0.0]
    wide = store.query(QUEUE, form="wide")
    assert wide.index.is_unique
    assert wide.loc[utc(T0)].tolist() == [101.0, 102.0, 103.0]
    limited = store.query(QUEUE, limit=3)
    assert limited["value"].tolist() == [101.0, 102.0, 103.0]
    assert store.query(form="wide", limit=4).shape == (1, 4)
    assert store.latest(QUEUE)["value"].tolist() == [1.0, 2.0, 3.0]


def test_repeated_keys_in_a_batch_keep_every_value_in_order_and_order_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    a, b, c = ((QUEUE, labels(unit=u)) for u in ("hlt01", "hlt02", "hlt03"))
    with SQLiteStore(path) as store:
        assert store.write(Batch(T0, [a, b, c, a], [1.0, 2.0, 3.0, 4.0])) == 4
        store.write(Batch(T0 + 1, [c, a, b], [30.0, 10.0, 20.0]))  # same series, other order
        store.write(Batch(T0 + 2, [b, b, a, c], [None, 5.0, "stuck", 6.0]))  # mixed values: slow path

        frame = store.query(QUEUE)
        assert list(zip(frame["ts"], frame["unit"], frame["value"].fillna(-1), frame["state"])) == [
            (utc(T0), "hlt01", 1.0, None), (utc(T0), "hlt01", 4.0, None), (utc(T0), "hlt02", 2.0, None),
            (utc(T0), "hlt03", 3.0, None),
            (utc(T0 + 1), "hlt01", 10.0, None), (utc(T0 + 1), "hlt02", 20.0, None),
            (utc(T0 + 1), "hlt03", 30.0, None),
            (utc(T0 + 2), "hlt01", -1, "stuck"), (utc(T0 + 2), "hlt02", -1, None), (utc(T0 + 2), "hlt02", 5.0, None),
            (utc(T0 + 2), "hlt03", 6.0, None),
        ]
        assert store.query(QUEUE, form="wide").loc[utc(T0)].tolist() == [4.0, 2.0, 3.0]  # wide: the last value
        assert store.latest(QUEUE)["value"].fillna(-1).tolist() == [-1, 5.0, 6.0]
        store.write(Batch(T0, [a, b, c, a], [1.0, 2.0, 3.0, 4.0]))  # a replay changes nothing
        assert len(store.query(QUEUE)) == len(frame)
    assert table_rows(path, "SELECT count(*) FROM layouts") == 2  # {a, b, c} and {b, c}


def test_loose_samples_make_one_frame_per_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    one, two = labels(unit="hlt01"), labels(unit="hlt02")
    samples = [
        Sample(T0 + 1, QUEUE, 1.0, one),
        Sample(T0, QUEUE, 2.0, two),
        Sample(T0 + 1, QUEUE, 3.0, two),
        Sample(T0, EVENTS, 4.0),
        Sample(T0 + 1, "hlt.socket_state", "connected", one),
        Sample(T0 + 1, QUEUE, 5.0, one),  # the same (series, ts) again: kept after the first
        Sample(T0 + DAY, QUEUE, 6.0, one),
    ]
    with SQLiteStore(path) as store:
        assert store.write(samples) == 7
        frame = store.query()
        assert list(zip(frame["ts"], frame["name"], frame["unit"].fillna("-"), frame["value"].fillna(-1),
                        frame["state"])) == [
            (utc(T0), EVENTS, "-", 4.0, None),
            (utc(T0), QUEUE, "hlt02", 2.0, None),
            (utc(T0 + 1), QUEUE, "hlt01", 1.0, None),
            (utc(T0 + 1), QUEUE, "hlt01", 5.0, None),
            (utc(T0 + 1), QUEUE, "hlt02", 3.0, None),
            (utc(T0 + 1), "hlt.socket_state", "hlt01", -1, "connected"),
            (utc(T0 + DAY), QUEUE, "hlt01", 6.0, None),
        ]
        assert store.write(samples) == 7  # a replay changes nothing
        pd.testing.assert_frame_equal(store.query(), frame)
    assert table_rows(path, 'SELECT count(*) FROM "head_20240101T00"') == 2
    assert table_rows(path, 'SELECT count(*) FROM "head_20240102T00"') == 1


def write_changing_key_sets(path: str, cycles: int, started: multiprocessing.synchronize.Event) -> None:
    with SQLiteStore(path) as store:
        for i in range(cycles):
            store.write(peer_batch(T0 + i, list(range(1, 4 + i % 3)), offset=i))  # 3 key sets in turn
            started.set()


@pytest.mark.slow
def test_frames_survive_reopen_and_another_process_reads_while_one_writes(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    SQLiteStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=write_changing_key_sets, args=(str(path), 200, started))
    proc.start()
    seen = []
    with SQLiteStore(path, readonly=True, busy_timeout=5) as reader:
        assert started.wait(60)
        while proc.is_alive():
            wide = reader.query(QUEUE, form="wide")
            # Every cycle read is whole: 3, 4 or 5 peers, each peer's value = peer + cycle.
            cycle = ((wide.index - utc(T0)).total_seconds()).to_numpy()
            assert (wide.notna().sum(axis=1).to_numpy() == 3 + cycle % 3).all()
            seen.append(len(wide))
        proc.join()
        final = reader.query(QUEUE, form="wide")
    assert proc.exitcode == 0
    assert seen and seen == sorted(seen)
    assert final.shape == (200, 5)
    np.testing.assert_array_equal(final.iloc[:, 0].to_numpy(), 1.0 + np.arange(200))
    with SQLiteStore(path) as reopened:
        pd.testing.assert_frame_equal(reopened.query(QUEUE, form="wide"), final)
        assert len(reopened.latest(QUEUE)) == 5


# --- selection -----------------------------------------------------------------------------


def test_glob_names(store: SQLiteStore) -> None:
    store.write(farm_batch(T0))
    store.write(Sample(T0, "hlt.outputs", 1.0))

    assert set(store.query("hlt.output.*")["name"]) == {QUEUE, EVENTS}
    assert set(store.query("hlt.output.ready_*")["name"]) == {QUEUE}
    assert set(store.query("hlt.output?")["name"]) == {"hlt.outputs"}
    assert store.query("hlt.output").empty  # no glob characters: an exact name


@pytest.mark.parametrize(
    ("matchers", "expected"),
    [
        ({"unit": "hlt01"}, {("hlt01", "distributor"), ("hlt01", "collector")}),
        (["unit=hlt01", "app=collector"], {("hlt01", "collector")}),
        ("unit!=hlt01", {("hlt02", "distributor"), ("hlt02", "collector")}),
        ("app=~dist.*", {("hlt01", "distributor"), ("hlt02", "distributor")}),
        ("app=~dist", set()),  # regular expressions match the whole value
        ("app!~dist.*", {("hlt01", "collector"), ("hlt02", "collector")}),
        ("unit*=hlt0*", {("hlt01", "distributor"), ("hlt01", "collector"),
                        ("hlt02", "distributor"), ("hlt02", "collector")}),
        ("unit*=hlt0[2]", {("hlt02", "distributor"), ("hlt02", "collector")}),
        ("unit!*=*1", {("hlt02", "distributor"), ("hlt02", "collector")}),
        ('app="collector"', {("hlt01", "collector"), ("hlt02", "collector")}),
        ("host=", {("hlt01", "distributor"), ("hlt01", "collector"),
                   ("hlt02", "distributor"), ("hlt02", "collector")}),  # missing label is ""
        ("host!=", set()),
        ([Matcher("unit", "=~", "hlt0[1-2]"), "app=collector"],
         {("hlt01", "collector"), ("hlt02", "collector")}),
    ],
)
def test_matchers_select_series(store: SQLiteStore, matchers: object, expected: set) -> None:
    store.write(farm_batch(T0))

    frame = store.query(QUEUE, matchers)

    assert {(lbls["unit"], lbls["app"]) for lbls in frame["labels"]} == expected


def test_matcher_semantics() -> None:
    assert parse_matchers(None) == []
    (glob,) = parse_matchers("host *= hltwk0*")
    assert (glob.label, glob.op, glob.value) == ("host", "*=", "hltwk0*")
    assert glob.matches({"host": "hltwk07"}) and not glob.matches({"host": "hltwk10"})
    assert not glob.matches({})
    (absent,) = parse_matchers("pid!~.+")
    assert absent.matches({}) and not absent.matches({"pid": "12"})
    (dotted,) = parse_matchers("zabbix.item=~cpu\\..*")
    assert dotted.matches({"zabbix.item": "cpu.util"})
    assert str(parse_matchers({"unit": 1})[0]) == "unit=1"


@pytest.mark.parametrize("text", ["unit", "=hlt01", "unit~hlt01", "1unit=x", "", "unit=~(", "unit!~[z-a]"])
def test_bad_matchers_raise_one_line_value_error(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_matchers([text])
    message = str(caught.value)
    assert repr(text) in message
    assert "\n" not in message


# --- values --------------------------------------------------------------------------------


def test_nan_infinities_bools_and_none(store: SQLiteStore) -> None:
    batch = Batch(T0)
    for name, value in [("nan", math.nan), ("inf", math.inf), ("ninf", -math.inf), ("true", True),
                        ("false", False), ("none", None), ("int", 3), ("np", np.float32(0.5))]:
        batch.add((name, ()), value)
    store.write(batch)

    values = dict(zip(store.query()["name"], store.query()["value"]))

    assert math.isnan(values["nan"]) and math.isnan(values["none"])
    assert values["inf"] == math.inf and values["ninf"] == -math.inf
    assert (values["true"], values["false"], values["int"], values["np"]) == (1.0, 0.0, 3.0, 0.5)


def test_unusable_values_and_items_are_rejected(store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match=r"bad\{unit=hlt01\}: value \[1\]"):
        store.write(Batch(T0, [("bad", labels(unit="hlt01"))], [[1]]))
    with pytest.raises(TypeError, match="Batch or Sample"):
        store.write([(T0, "x", 1.0)])
    assert store.write([]) == 0
    assert store.series().empty


def test_states_in_long_form_and_latest(store: SQLiteStore) -> None:
    key = ("hlt.socket_state", labels(unit="hlt01"))
    flip = (QUEUE, labels(unit="hlt01"))
    store.write([Batch(T0, [key, flip], ["connected", 1.0]), Batch(T0 + 10, [flip], [2.0])])
    store.write([Batch(T0 + 20, [key, flip], ["disconnected", "stuck"]),
                 Batch(T0 + 30, [(EVENTS, ())], [5.0])])

    states = store.query("hlt.socket_state")
    assert states["state"].tolist() == ["connected", "disconnected"]
    assert states["value"].isna().all()
    assert store.query(form="wide").columns.tolist() == [EVENTS, format_series(*flip)]

    latest = store.latest()
    assert len(latest) == 3
    newest = {name: (ts, value, state) for name, ts, value, state in
              zip(latest["name"], latest["ts"], latest["value"], latest["state"])}
    assert newest["hlt.socket_state"][::2] == (utc(T0 + 20), "disconnected")
    assert newest[QUEUE][::2] == (utc(T0 + 20), "stuck")  # a newer state beats an older number
    assert newest[EVENTS][:2] == (utc(T0 + 30), 5.0)
    assert newest[EVENTS][2] is None


def test_rows_are_the_rows_of_query_and_rollup(store: SQLiteStore) -> None:
    """``rows`` (what ``farmwatch query`` prints, made without pandas) holds the fixed columns of
    ``query`` and ``rollup``: the same values, times and order, with states, NaN, a limit, and
    points both in compacted chunks and in the head."""
    store.write([farm_batch(T0 + i * 7.5, scale=i) for i in range(40)])
    store.write(Batch(T0 + 15, [(QUEUE, labels(unit="hlt09"))], [math.nan]))
    store.compact(everything=True)
    store.write([farm_batch(T0 + 3600 + i * 10) for i in range(12)])

    def plain(rows) -> list[tuple]:
        return [tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in row) for row in rows]

    for name, since, limit in [(None, None, None), ("hlt.*", T0 + 60, 25), (QUEUE, T0 + 3000, None), ("nothing", None, 3)]:
        frame = store.query(name, since=since, limit=limit)
        rows = store.rows(name, since=since, limit=limit)
        assert plain(rows) == plain(frame[list(rows[0]._fields if rows else ())].itertuples(index=False))
        assert len(rows) == len(frame)
        for resolution in ("1m", "10m"):
            rolled = store.rollup(name, since=since, resolution=resolution).head(limit)
            bins = store.rows(name, since=since, resolution=resolution, limit=limit)
            assert len(bins) == len(rolled)
            assert plain(bins) == plain(rolled[list(bins[0]._fields if bins else ())].itertuples(index=False))
    first = store.rows(limit=1)[0]  # Python values, no pandas types
    assert (type(first.ts), type(first.value), first.state, first.ts.tzinfo) == (datetime, float, None, timezone.utc)


def test_resend_replaces_instead_of_duplicating(store: SQLiteStore) -> None:
    store.write(farm_batch(T0))
    store.write(farm_batch(T0))
    assert len(store.query()) == 9

    store.write(farm_batch(T0, scale=3))
    assert store.query(EVENTS)["value"].tolist() == [3000.0] * 4


def test_one_store_shared_by_threads(store: SQLiteStore) -> None:
    errors: list[BaseException] = []

    def writer(first: int) -> None:
        try:
            for i in range(first, 200, 2):
                store.write(farm_batch(T0 + i))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(first,)) for first in (0, 1)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        assert len(store.query(EVENTS)) % 4 == 0
        store.latest()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.query()) == 200 * 9


def test_lock_held_too_long_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    with SQLiteStore(path, busy_timeout=0.1) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match=r"farm\.db: write failed: database is locked"):
                store.write(farm_batch(T0))
        finally:
            other.close()
        assert store.write(farm_batch(T0)) == 9


# --- retention -----------------------------------------------------------------------------


def chunk_tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE name GLOB 'head_*' ORDER BY name")
        return [name for (name,) in rows]


def test_retention_drops_old_chunks_trims_the_straddling_one_and_keeps_newest_states(tmp_path: Path) -> None:
    clock = SimClock(T0 + 2 * DAY + DAY / 2)  # 2024-01-03 12:00 UTC
    path = tmp_path / "farm.db"
    metric = (QUEUE, labels(unit="hlt01"))
    steady = ("hlt.socket_state", labels(unit="hlt01"))
    flapping = ("hlt.socket_state", labels(unit="hlt02"))
    with SQLiteStore(path, retention=DAY, clock=clock) as store:
        store.write([Batch(T0 + day * DAY + hour * 3600, [metric], [day * 100 + hour])
                     for day in range(3) for hour in (0, 12)])
        store.write([Batch(T0, [steady, flapping], ["connected", "connected"]),
                     Batch(T0 + DAY + 6 * 3600, [flapping], ["disconnected"]),
                     Batch(T0 + 2 * DAY, [flapping], ["connected"])])
        assert chunk_tables(path) == [f"head_2024010{d}T{h}" for d in (1, 2, 3) for h in ("00", "12")]

        removed = store.apply_retention()  # cutoff 2024-01-02 12:00

        assert removed == 3 + 2  # three hour tables dropped, two states deleted
        assert chunk_tables(path) == ["head_20240102T12", "head_20240103T00", "head_20240103T12"]
        assert store.query(QUEUE)["value"].tolist() == [112.0, 200.0, 212.0]
        states = store.query("hlt.socket_state")
        assert list(zip(states["unit"], states["state"], states["ts"])) == [
            ("hlt01", "connected", utc(T0)),  # never changed: still the current state
            ("hlt02", "connected", utc(T0 + 2 * DAY)),
        ]
        assert store.apply_retention() == 0

        store.write(Batch(T0, [metric], [1.0]))  # a late replay into a dropped day recreates it
        assert store.query(QUEUE, until=T0)["value"].tolist() == [1.0]


def test_retention_trims_frames_and_keeps_layouts_usable(tmp_path: Path) -> None:
    clock = SimClock(T0 + 2 * DAY + DAY / 2)  # cutoff: 2024-01-02 12:00
    path = tmp_path / "farm.db"
    with SQLiteStore(path, retention=DAY, clock=clock) as store:
        for day in range(3):
            for hour in (0, 6, 12, 18):
                peers = [1, 2] if day < 2 else [1, 2, 3]  # peer 3 appears on the last day
                store.write(peer_batch(T0 + day * DAY + hour * 3600, peers, offset=100 * day + hour))

        removed = store.apply_retention()

        assert removed == 4 + 2  # day one's four hour tables dropped, and day two's 00:00 and 06:00
        assert chunk_tables(path) == ["head_20240102T12", "head_20240102T18"] + [
            f"head_20240103T{h:02d}" for h in (0, 6, 12, 18)]
        assert sorted(set(store.query(QUEUE)["value"])) == [113.0, 114.0, 119.0, 120.0] + [
            200.0 + h + p for h in (0, 6, 12, 18) for p in (1, 2, 3)]
        assert store.query(EVENTS)["value"].tolist() == [112.0, 118.0, 200.0, 206.0, 212.0, 218.0]
        assert store.apply_retention() == 0
        store.write(peer_batch(T0 + 2 * DAY + 20 * 3600, [1, 2], offset=300))  # an old key set again
        assert store.latest(QUEUE)["value"].tolist() == [221.0, 301.0, 302.0]  # by ts, then series
    assert table_rows(path, "SELECT count(*) FROM layouts") == 2


def test_no_retention_keeps_everything(store: SQLiteStore) -> None:
    store.write(farm_batch(T0))
    assert store.apply_retention(now=T0 + 1000 * DAY) == 0
    assert len(store.query()) == 9


# --- schema and files ----------------------------------------------------------------------


def test_new_file_gets_current_schema_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "farm.db"
    with SQLiteStore(path) as store:
        assert store.schema_version() == len(store_sqlite.MIGRATIONS)
        store.write(farm_batch(T0))
    with SQLiteStore(path) as store:
        assert store.schema_version() == len(store_sqlite.MIGRATIONS)
        assert len(store.query()) == 9
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert dict(conn.execute("SELECT key, value FROM meta"))["application"] == "farmwatch"


def test_appended_migration_upgrades_existing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "farm.db"
    SQLiteStore(path).close()
    step = """
        CREATE TABLE mutes(id INTEGER PRIMARY KEY, matchers TEXT, note TEXT DEFAULT 'a; b');
        CREATE TABLE mute_log(id INTEGER);
        CREATE TRIGGER mute_added AFTER INSERT ON mutes BEGIN
            INSERT INTO mute_log VALUES (new.id);
        END;
    """
    monkeypatch.setattr(storefile, "MIGRATIONS", [*storefile.MIGRATIONS, step])

    with SQLiteStore(path) as store:
        assert store.schema_version() == len(storefile.MIGRATIONS)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO mutes(matchers) VALUES ('unit=hlt01')")
        assert conn.execute("SELECT note FROM mutes").fetchone() == ("a; b",)
        assert conn.execute("SELECT count(*) FROM mute_log").fetchone() == (1,)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")

    with pytest.raises(StoreError, match=r"farm\.db: written by a newer farmwatch \(schema version 99"):
        SQLiteStore(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"hello, this is a log file\n" * 100, "not an SQLite database"),
     (None, "SQLite database of something else")],
)
def test_foreign_files_are_refused(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "other.db"
    if content is None:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t(x)")
    else:
        path.write_bytes(content)

    for readonly in (False, True):
        with pytest.raises(StoreError) as caught:
            SQLiteStore(path, readonly=readonly)
        assert str(caught.value).startswith(f"{path}: not a farmwatch store")
        assert problem in str(caught.value)
    if content is not None:
        assert path.read_bytes() == content


def test_unusable_paths_raise_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the store's folder"):
        SQLiteStore(blocker / "farm.db")
    with pytest.raises(StoreError, match="failed"):
        SQLiteStore(tmp_path)  # a directory
    with pytest.raises(StoreError, match="no such store file"):
        SQLiteStore(tmp_path / "missing.db", readonly=True)


def test_readonly_store_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    with SQLiteStore(path) as store:
        store.write(farm_batch(T0))
    with SQLiteStore(path, readonly=True, retention=DAY) as reader:
        assert len(reader.query()) == 9
        with pytest.raises(StoreError, match="read-only"):
            reader.write(farm_batch(T0))
        with pytest.raises(StoreError, match="read-only"):
            reader.apply_retention()


# --- several processes ---------------------------------------------------------------------

WRITERS, BATCHES, PER_BATCH = 4, 20, 5_000


def write_concurrently(path: str, writer: int, start: multiprocessing.synchronize.Barrier) -> None:
    """One collector process: all writers share the series, each has its own timestamps."""
    keys = [(QUEUE, labels(unit=f"hlt{i // 500:02d}", app=f"app{i % 500}")) for i in range(PER_BATCH)]
    start.wait(timeout=120)
    with SQLiteStore(path) as store:  # opened at the same time: the schema creation races too
        for b in range(BATCHES):
            store.write(Batch(T0 + b * WRITERS + writer, keys, [float(writer)] * PER_BATCH))


@pytest.mark.slow
def test_concurrent_writer_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=write_concurrently, args=(str(path), w, start)) for w in range(WRITERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * WRITERS  # a "database is locked" would be 1

    with SQLiteStore(path) as store:
        assert len(store.series()) == PER_BATCH
        frame = store.query(QUEUE)
    assert len(frame) == WRITERS * BATCHES * PER_BATCH
    per_writer = frame.groupby("value").size()
    assert per_writer.to_dict() == {float(w): BATCHES * PER_BATCH for w in range(WRITERS)}


def open_new_files(folder: str, rounds: int, start: multiprocessing.synchronize.Barrier) -> None:
    try:
        for i in range(rounds):
            start.wait(timeout=120)
            with SQLiteStore(Path(folder) / f"{i}.db") as store:
                store.write(farm_batch(T0))
    except BaseException:
        start.abort()  # the others fail fast instead of waiting for this one
        raise


@pytest.mark.slow
def test_processes_opening_a_new_file_at_once(tmp_path: Path) -> None:
    """Switching a new file to WAL mode answers "locked" at once to the losers of the race."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=open_new_files, args=(str(tmp_path), 15, start)) for _ in range(WRITERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * WRITERS
    with SQLiteStore(tmp_path / "14.db") as store:
        assert len(store.query()) == 9


def write_slowly(path: str, batches: int, started: multiprocessing.synchronize.Event) -> None:
    with SQLiteStore(path) as store:
        for b in range(batches):
            store.write(farm_batch(T0 + b))
            started.set()


@pytest.mark.slow
def test_readonly_store_queries_while_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    SQLiteStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=write_slowly, args=(str(path), 300, started))
    proc.start()
    counts = []
    with SQLiteStore(path, readonly=True, busy_timeout=5) as reader:
        assert started.wait(60)
        while proc.is_alive():
            counts.append(len(reader.query(EVENTS)))
        proc.join()
        final = len(reader.query(EVENTS))
    assert proc.exitcode == 0
    assert counts
    assert counts == sorted(counts)  # every read saw a consistent, growing snapshot
    assert all(count % 4 == 0 for count in counts)  # never half a batch
    assert final == 300 * 4


def test_source_cursors_survive_reopen_and_commit_with_the_data(tmp_path):
    """Sources resume where they stopped: cursors are per source, JSON values, deletable, and can
    be saved inside the transaction that stores what they point past."""
    path = tmp_path / "c.db"
    with SQLiteStore(path) as store:
        store.save_cursors("zbx", {"item:1": 1700000000, "item:2": {"clock": 5, "ns": 7}})
        store.save_cursors("logs", {"/var/log/a": [12, 34]})
        store.save_cursors("zbx", {"item:1": 1700000060}, drop=["item:2"])
        with pytest.raises(RuntimeError):
            with store.transaction("test", write=True) as conn:
                store.save_cursors("logs", {"/var/log/a": [99, 99]}, conn=conn)
                raise RuntimeError("the data write failed")
    with SQLiteStore(path, readonly=True) as store:
        assert store.cursors("zbx") == {"item:1": 1700000060}
        assert store.cursors("logs") == {"/var/log/a": [12, 34]}  # rolled back with the failed write
        assert store.cursors("nothing") == {}
