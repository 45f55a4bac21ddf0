"""Parity of farmwatch's vectorised features with tsfresh itself.

Every feature name ``supported()`` lists is computed by ``compute`` and by
``tsfresh.extract_features`` on the same windows, and must agree to rounding (rtol 1e-9) with NaN
where tsfresh gives NaN. The windows cover what the farm produces and what breaks formulas:
random values, rates from the HLT simulator (worker event rates while a node slows down, queue
sizes), steps, random walks, seasonal series, integer series with ties, constant and nearly
constant windows, and very short windows (1, 2, 3 points). tsfresh runs once for all cases
(a module fixture, one call, ``n_jobs=0``) to keep the file fast.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import tsfresh  # the reference; a test dependency, so a missing tsfresh fails the file

from farmwatch.clock import SimClock
from farmwatch.detect import features as F
from farmwatch.sim.unit import SimUnit
from farmwatch.sources.hlt_zmq.source import decode_reply

RTOL = 1e-9
ATOL = 1e-12
# Not in tsfresh's catalogue but valid parameters of supported families: compute must take them.
EXTRA = ("value__quantile__q_0.05", "value__autocorrelation__lag_15", "value__c3__lag_7",
         'value__agg_autocorrelation__f_agg_"std"__maxlag_5', "value__number_peaks__n_2",
         'value__change_quantiles__f_agg_"median"__isabs_True__qh_0.9__ql_0.1',
         'value__change_quantiles__f_agg_"std"__isabs_False__qh_0.7__ql_0.3',
         "value__ratio_beyond_r_sigma__r_0.25",
         "value__energy_ratio_by_chunks__num_segments_3__segment_focus_2")
NAMES = F.supported() + EXTRA


def sim_rates(seconds: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Per-worker event rates (events/s from the collector's counters) and the distributor's
    ready-queue size of a simulated unit, one value per simulated second; one node slows down
    half-way and a worker dies, as in production incidents."""
    clock = SimClock()
    unit = SimUnit("hlt01", worker_nodes=2, workers_per_node=3, input_rate=600.0, clock=clock)
    workers = [w for node in unit.nodes for w in unit.workers(node)]
    counts, queue = [], []
    for t in range(seconds + 1):
        if t == seconds // 2:
            unit.slow_node(unit.nodes[0], factor=0.3)
            unit.kill_workers(unit.nodes[1], 1)
        clock.sleep(1.0)
        collector = decode_reply(unit.answer("collector", "normal", 0))["input"]
        distributor = decode_reply(unit.answer("distributor", "normal", 0))["output"]
        counts.append([float(collector.get(f"received_events[{w}]", 0.0)) for w in workers])
        queue.append(float(distributor["ready_queue_size"]))
    rates = np.diff(np.asarray(counts), axis=0).T  # (workers, seconds)
    return rates, np.asarray(queue)


def cases() -> dict[str, np.ndarray]:
    """Name -> windows (n, length); every case has one length."""
    rng = np.random.default_rng(20261130)
    t60 = np.arange(60.0)
    rates, queue = sim_rates()
    out = {
        "random normal": rng.normal(size=(4, 60)),
        "random lognormal, offset": rng.lognormal(size=(3, 60)) * 50 + 1000,
        "sim worker rates": F.windows_of(rates[0], 60, step=10)[:3].copy(),
        "sim rates, node slowed": np.stack([F.windows_of(r, 60)[-1] for r in rates]),
        "sim ready queue": F.windows_of(queue, 60, step=15).copy(),
        "rate step": np.where(t60 < 35, 1000.0, 400.0) + rng.normal(0, 5, size=(2, 60)),
        "random walk": np.cumsum(rng.normal(size=(3, 60)), axis=1),
        "seasonal": 100 + 10 * np.sin(2 * np.pi * t60 / 12) + rng.normal(0, 1, size=(2, 60)),
        "integers with ties": rng.integers(-2, 3, size=(4, 60)).astype(float),
        "mostly zero": np.where(rng.random((2, 60)) < 0.9, 0.0, 5.0),
        "constant": np.array([[0.0] * 60, [0.1] * 60, [7.0] * 60, [1e9] * 60]),
        "nearly constant": 1e6 + rng.normal(0, 1e-6, size=(2, 60)),
        "tiny variance": rng.normal(0, 1e-5, size=(2, 60)),
        "one small spike": np.where(t60 == 17, 100.0 + 1e-9, 100.0)[None, :],
        "length 1": np.array([[3.5], [0.0], [-2.0]]),
        "length 2": np.array([[1.0, 2.0], [5.0, 5.0], [0.0, -3.0]]),
        "length 3": np.array([[1.0, 2.0, 4.0], [2.0, 2.0, 2.0], [0.0, 1.0, 0.0]]),
        "length 5": rng.normal(size=(3, 5)),
        "length 12": rng.normal(size=(3, 12)),
        "length 200": rng.normal(size=(2, 200)) + np.sin(np.arange(200) / 5),
    }
    out["length 12"][0] = np.round(out["length 12"][0])
    return out


def tsfresh_features(series: list[np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """tsfresh.extract_features on each 1-D array as one series 'value'; rows in input order."""
    ids = np.concatenate([np.full(len(s), i) for i, s in enumerate(series)])
    times = np.concatenate([np.arange(len(s)) for s in series])
    frame = pd.DataFrame({"id": ids, "time": times, "value": np.concatenate(series)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = tsfresh.extract_features(frame, column_id="id", column_sort="time",
                                          default_fc_parameters=F.to_tsfresh_settings(names),
                                          n_jobs=0, disable_progressbar=True)
    return result.loc[range(len(series)), list(names)].to_numpy(dtype=np.float64)


@pytest.fixture(scope="module")
def reference() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Case name -> (windows, tsfresh's values), from one tsfresh call for all cases."""
    all_cases = cases()
    series = [row for windows in all_cases.values() for row in windows]
    expected = tsfresh_features(series, NAMES)
    out, start = {}, 0
    for name, windows in all_cases.items():
        out[name] = (windows, expected[start: start + len(windows)])
        start += len(windows)
    return out


def mismatches(got: np.ndarray, expected: np.ndarray) -> list[str]:
    return mismatches_of(NAMES, got, expected)


def mismatches_of(names: tuple[str, ...], got: np.ndarray, expected: np.ndarray) -> list[str]:
    """Names of the features whose values differ, with the values, for a readable failure."""
    bad = []
    for j, name in enumerate(names):
        try:
            np.testing.assert_allclose(got[:, j], expected[:, j], rtol=RTOL, atol=ATOL, equal_nan=True)
        except AssertionError:
            bad.append(f"{name}: farmwatch {got[:, j].tolist()} tsfresh {expected[:, j].tolist()}")
    return bad


CASES = [
    "random normal", "random lognormal, offset", "sim worker rates", "sim rates, node slowed",
    "sim ready queue", "rate step", "random walk", "seasonal", "integers with ties", "mostly zero",
    "constant", "nearly constant", "tiny variance", "one small spike", "length 1", "length 2", "length 3",
    "length 5", "length 12", "length 200"]


@pytest.mark.parametrize("case", CASES)
def test_every_supported_feature_equals_tsfresh(reference, case: str) -> None:
    windows, expected = reference[case]
    got = F.compute(windows, NAMES)
    assert got.shape == (len(windows), len(NAMES))
    bad = mismatches(got, expected)
    assert not bad, f"{len(bad)} features differ from tsfresh on {case!r}:\n" + "\n".join(bad[:20])


def test_the_cases_are_informative(reference) -> None:
    """The parity test is only as good as its windows: tsfresh's values must actually vary, and
    the edge cases must produce NaN where tsfresh does (otherwise the NaN branches are untested)."""
    assert list(reference) == CASES
    expected = np.concatenate([e for _, e in reference.values()])
    finite = np.isfinite(expected)
    assert finite.any(axis=0).all(), [n for n, f in zip(NAMES, finite.any(axis=0)) if not f]
    assert (~finite).any(axis=0).sum() > 50  # many features have a NaN case
    varying = [np.unique(col[np.isfinite(col)]).size > 1 for col in expected.T]
    assert np.mean(varying) > 0.95, [n for n, v in zip(NAMES, varying) if not v]


def test_window_with_a_gap_is_nan_and_others_are_unaffected(reference) -> None:
    windows, expected = reference["sim worker rates"]
    gappy = windows.copy()
    gappy[1, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):  # tsfresh has no value for a series with NaN
        tsfresh_features([gappy[1]], ("value__mean",))
    got = F.compute(gappy, NAMES)
    assert np.isnan(got[1]).all()
    assert not mismatches(got[[0, 2]], expected[[0, 2]])


def test_where_tsfresh_raises_the_value_is_nan() -> None:
    """A constant 100 with one point a few float steps higher: too narrow a range for 10 distinct
    histogram edges, so tsfresh's binned_entropy raises (and with it the whole extraction);
    compute gives NaN there and still computes every other feature."""
    window = np.where(np.arange(60) == 17, 100.0 + 1e-13, 100.0)
    with pytest.raises(ValueError, match="Too many bins"):
        tsfresh_features([window], ("value__binned_entropy__max_bins_10",))
    others = tuple(n for n in NAMES if "binned_entropy" not in n)
    got = F.compute(window[None, :], ("value__binned_entropy__max_bins_10",) + others)
    assert np.isnan(got[0, 0])
    assert not mismatches_of(others, got[:, 1:], tsfresh_features([window], others))


def test_many_windows_are_computed_in_blocks_with_the_same_values() -> None:
    """compute works through large inputs block by block (for speed); values must not depend on
    where a window falls (beyond BLAS rounding), and a gap stays confined to its window."""
    rng = np.random.default_rng(7)
    windows = np.cumsum(rng.normal(size=(F.BLOCK_VALUES // 60 * 2 + 50, 60)), axis=1)
    border = F.BLOCK_VALUES // 60
    windows[border, 3] = np.nan
    got = F.compute(windows, NAMES)
    for i in (0, border - 1, border, border + 1, len(windows) - 1):
        np.testing.assert_allclose(got[i], F.compute(windows[i: i + 1], NAMES)[0], rtol=1e-12, atol=ATOL)
    assert np.isnan(got[border]).all() and np.isfinite(got[border + 1, :5]).all()


def test_default_features_are_supported_and_tsfresh_settings_round_trip() -> None:
    assert len(F.DEFAULT_FEATURES) == len(set(F.DEFAULT_FEATURES)) >= 10
    assert set(F.DEFAULT_FEATURES) <= set(F.supported())
    settings = F.to_tsfresh_settings(F.DEFAULT_FEATURES)
    frame = pd.DataFrame({"id": 0, "time": np.arange(20), "value": np.sin(np.arange(20.0))})
    result = tsfresh.extract_features(frame, column_id="id", column_sort="time",
                                      default_fc_parameters=settings, n_jobs=0,
                                      disable_progressbar=True)
    assert set(result.columns) == set(F.DEFAULT_FEATURES)
    np.testing.assert_allclose(F.compute(frame["value"].to_numpy()[None, :])[0],
                               result.loc[0, list(F.DEFAULT_FEATURES)].to_numpy(dtype=float),
                               rtol=RTOL, atol=ATOL)


def test_windows_of_is_a_view_with_the_newest_window_last() -> None:
    values = np.arange(10.0)
    w = F.windows_of(values, 4)
    assert w.shape == (7, 4) and np.shares_memory(w, values)
    assert w[0].tolist() == [0, 1, 2, 3] and w[-1].tolist() == [6, 7, 8, 9]
    stepped = F.windows_of(values, 4, step=3)
    assert [row[0] for row in stepped] == [0.0, 3.0, 6.0]  # window i starts at i * step
    assert [row[0] for row in F.windows_of(values, 4, step=4)] == [0.0, 4.0]
    assert F.windows_of(values, 11).shape == (0, 11)
    assert F.compute(F.windows_of(values, 11)).shape == (0, len(F.DEFAULT_FEATURES))
    with pytest.raises(ValueError, match="1-D"):
        F.windows_of(values.reshape(2, 5), 2)


def test_bad_feature_names_and_shapes_name_the_problem() -> None:
    windows = np.zeros((2, 5))
    with pytest.raises(ValueError, match="value__sample_entropy.*does not compute"):
        F.compute(windows, ["value__sample_entropy"])
    with pytest.raises(ValueError, match="'rate__mean'.*series 'value'"):
        F.compute(windows, ["rate__mean"])
    with pytest.raises(ValueError, match="attr must be one of"):
        F.compute(windows, ['value__linear_trend__attr_"slopes"'])
    with pytest.raises(ValueError, match="wrong parameters for quantile"):
        F.compute(windows, ["value__quantile__p_0.5"])
    with pytest.raises(ValueError, match="2-D"):
        F.compute(np.zeros(5))
    with pytest.raises(TypeError, match="not one string"):
        F.compute(windows, "value__mean")


def test_a_new_feature_is_one_registered_function() -> None:
    @F.feature("range_width_demo", [{}])
    def _range_width(w: F.Windows) -> np.ndarray:
        return w.max - w.min

    try:
        assert "value__range_width_demo" in F.supported()
        got = F.compute(np.array([[1.0, 5.0, 3.0], [2.0, 2.0, 2.0]]), ["value__range_width_demo"])
        assert got[:, 0].tolist() == [4.0, 0.0]
    finally:
        del F._FAMILIES["range_width_demo"]
        F._parse.cache_clear()
