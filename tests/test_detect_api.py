"""The library API: ``stream_scores`` and ``score_frame`` on a small labelled synthetic set.

A synthetic set shows that a mechanism works; how good the detectors are is measured on real,
labelled data (benchmarks/bench_detect_public.py; tests/test_detect_public.py keeps a regression
on a slice of it). The set crosses anomaly kinds (spikes, level shifts, variance changes, drifts,
stuck-at-constant) with backgrounds: seasonal, random walk and white noise, and the shapes real
metrics have and Gaussian noise has not: heavy-tailed, quantised (small counts) and bursty (mostly
quiet, now and then a burst). Run this file as a script (``python tests/test_detect_api.py``) to
print the per-kind table quoted in docs/detection.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from farmwatch.detect import default_warmup, score_frame, stream_scores
from farmwatch.detect.scoring import score_of

KINDS = ("spike", "level_shift", "variance", "drift", "stuck")
BACKGROUNDS = ("seasonal", "random_walk", "noise")
REAL_SHAPES = ("heavy_tailed", "quantised", "bursty")
N, WARMUP, ONSET, LENGTH = 1500, 500, 1000, 60


def background(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n)
    if kind == "seasonal":
        return 10 + 3 * np.sin(2 * np.pi * t / 100) + rng.normal(0, 0.5, n)
    if kind == "random_walk":
        return 10 + np.cumsum(rng.normal(0, 0.1, n)) + rng.normal(0, 0.3, n)
    if kind == "heavy_tailed":
        return 10 + rng.standard_t(2.5, n)
    if kind == "quantised":
        return rng.poisson(3.0, n).astype(float)
    if kind == "bursty":
        return 1 + (rng.uniform(size=n) < 0.03) * rng.exponential(20.0, n) + rng.normal(0, 0.05, n)
    return 10 + rng.normal(0, 1, n)


def inject(x: np.ndarray, kind: str, start: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The series with one anomaly of ``kind`` and its labels (True = anomalous point).

    Magnitudes are in units of the background's point-to-point noise ``sd``. A level shift and a
    drift stay (the new level becomes normal); only their first ``length`` points are labelled.
    """
    x = x.copy()
    labels = np.zeros(len(x), bool)
    sd = np.std(np.diff(x)) / np.sqrt(2)
    window = slice(start, start + length)
    if kind == "spike":
        where = start + np.array([0, length // 3, 2 * length // 3])
        x[where] += 8 * sd * rng.choice([-1, 1], 3)
        labels[where] = True
        return x, labels
    if kind == "level_shift":
        x[start:] += 5 * sd
    elif kind == "variance":
        x[window] += rng.normal(0, 3 * sd, length)
    elif kind == "drift":
        x[start:] += np.minimum(np.arange(len(x) - start), length) * (8 * sd / length)
    elif kind == "stuck":
        x[window] = x[start]
    labels[window] = True
    return x, labels


def case(kind: str, bg: str, seed: int = 0) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, KINDS.index(kind), (BACKGROUNDS + REAL_SHAPES).index(bg)])
    x, labels = inject(background(bg, N, rng), kind, ONSET, LENGTH, rng)
    return pd.date_range("2026-11-01", periods=N, freq="1min"), x, labels


def auc(kind: str, bg: str, seed: int = 0) -> float:
    ts, x, labels = case(kind, bg, seed)
    scores = stream_scores(ts, x, warmup=WARMUP)
    return roc_auc_score(labels[WARMUP:], scores[WARMUP:])


def found(kind: str, bg: str, seed: int = 0) -> bool:
    """The anomaly's highest score beats every normal point after warmup (no false alarm at that threshold)."""
    ts, x, labels = case(kind, bg, seed)
    scores = stream_scores(ts, x, warmup=WARMUP)
    window = slice(ONSET, ONSET + LENGTH)
    return bool(scores[window].max() > scores[WARMUP:ONSET].max())


# -- stream_scores: quality -----------------------------------------------------------------------
@pytest.mark.parametrize("bg", BACKGROUNDS)
@pytest.mark.parametrize("kind", ["spike", "level_shift", "variance"])
def test_spikes_steps_and_noise_bursts_are_found_before_any_false_alarm(kind, bg):
    assert np.mean([found(kind, bg, seed) for seed in range(5)]) >= (1.0 if bg != "random_walk" else 0.8)


@pytest.mark.parametrize("bg", ("noise",) + REAL_SHAPES)
def test_false_alarms_on_normal_data_match_the_threshold_whatever_its_shape(bg):
    """Heavy tails, small counts and bursts are where a robust (IQR/MAD) spread said "anomaly" at
    every burst; the standard deviation of the series' own history keeps 0.99 meaning 1 %."""
    rng = np.random.default_rng([7, REAL_SHAPES.index(bg) if bg in REAL_SHAPES else 9])
    n, warm = 8000, 1000
    x = background(bg, n, rng)
    s = stream_scores(np.arange(n), x, warmup=warm)[warm:]
    assert 0.002 <= np.mean(s >= 0.99) <= 0.025, np.mean(s >= 0.99)
    assert np.mean(s >= 0.999) <= 0.006
    top = np.sort(s)[-100:]
    assert top[-1] < 1.0 and np.unique(top).size == top.size   # never saturated, never tied


def test_a_spike_scores_high_at_the_spike_not_a_window_later():
    ts, x, labels = case("spike", "noise")
    scores = stream_scores(ts, x, warmup=WARMUP)
    for i in np.flatnonzero(labels):
        assert scores[i] > 0.999
        assert scores[i] > scores[i - 1] and scores[i] > scores[i + 2]


def test_normal_points_after_warmup_raise_about_the_target_rate_of_false_alarms():
    rng = np.random.default_rng(21)
    x = background("seasonal", 3000, rng)
    scores = stream_scores(pd.date_range("2026-11-01", periods=3000, freq="5min"), x, warmup=1000)[1000:]
    assert np.mean(scores >= 0.99) <= 0.03
    assert np.mean(scores >= 0.9) <= 0.2
    assert 0.3 <= np.median(scores) <= 0.7


def test_a_lasting_level_shift_is_flagged_when_it_happens_not_for_as_long_as_it_lasts():
    ts, x, labels = case("level_shift", "noise")
    scores = stream_scores(ts, x, warmup=WARMUP)
    assert scores[ONSET:ONSET + 3].max() >= 0.999
    assert np.mean(scores[ONSET + 20:] >= 0.99) <= 0.03


def test_surprise_is_the_score_on_a_log_scale():
    ts, x, _ = case("spike", "noise")
    surprise = stream_scores(ts, x, warmup=WARMUP, surprise=True)
    scores = stream_scores(ts, x, warmup=WARMUP)
    np.testing.assert_allclose(scores, score_of(surprise))
    low = surprise < 5
    np.testing.assert_allclose(scores[low], 1 - 10.0 ** -surprise[low], rtol=1e-9, atol=1e-12)
    assert np.all(np.isfinite(surprise)) and np.all(surprise >= 0)


@pytest.mark.parametrize("bg", ["seasonal", "noise", "bursty"])
def test_scores_are_causal_appending_points_never_changes_earlier_scores(bg):
    ts, x, _ = case("level_shift", bg)
    full = stream_scores(ts, x, warmup=WARMUP)
    for m in (10, 150, WARMUP - 1, WARMUP + 1, ONSET + 7, ONSET + 200, N - 1):
        np.testing.assert_array_equal(stream_scores(ts[:m], x[:m], warmup=WARMUP), full[:m])


def test_missing_values_duplicates_and_unsorted_timestamps():
    ts, x, _ = case("spike", "noise")
    x = x.copy()
    x[[100, 700, 701, 702]] = np.nan
    s = stream_scores(ts, x, warmup=WARMUP)
    assert s.shape == (N,) and np.all((s >= 0) & (s <= 1))
    assert np.all(s[[100, 700, 701, 702]] == 0.0)
    # Shuffled input gives each point the score it has in time order.
    perm = np.random.default_rng(1).permutation(N)
    np.testing.assert_array_equal(stream_scores(ts[perm], x[perm], warmup=WARMUP), s[perm])
    # Duplicate timestamps: points kept in the given order, one score each.
    dup = ts.to_numpy().copy()
    dup[600:610] = dup[600]
    d = stream_scores(dup, x, warmup=WARMUP)
    assert d.shape == (N,) and np.all(np.isfinite(d))


def test_timestamp_forms_numpy_pandas_and_numbers_give_the_same_scores():
    ts, x, _ = case("variance", "noise")
    a = stream_scores(ts, x, warmup=WARMUP)
    np.testing.assert_array_equal(stream_scores(ts.to_numpy(), x, warmup=WARMUP), a)
    np.testing.assert_array_equal(stream_scores(pd.Series(ts), list(x), warmup=WARMUP), a)
    np.testing.assert_array_equal(stream_scores(ts.asi8 / 1e9, x, warmup=WARMUP), a)


@pytest.mark.parametrize("unit", [1e-12, 1e9])
def test_scores_do_not_depend_on_the_unit_of_the_values(unit):
    ts, x, _ = case("variance", "seasonal")
    np.testing.assert_allclose(stream_scores(ts, x * unit, warmup=WARMUP), stream_scores(ts, x, warmup=WARMUP),
                               atol=0.01)
    train, test, _ = frame_case("stuck")
    np.testing.assert_allclose(score_frame(train * unit, test * unit), score_frame(train, test), atol=0.01)


def test_constant_series_scores_zero_until_it_changes():
    ts = pd.date_range("2026-11-01", periods=400, freq="1s")
    x = np.full(400, 3.0)
    assert np.all(stream_scores(ts, x) == 0.0)
    x[300] = 3.5
    s = stream_scores(ts, x)
    assert s[300] > 0.99 and np.all(s[:300] == 0.0)
    # a plain 0.0, not -0.0 (which prints as "-0." in a notebook)
    assert not np.signbit(s).any() and not np.signbit(stream_scores(ts, x, surprise=True)).any()


@pytest.mark.parametrize("n", [0, 1, 2, 5, 20])
def test_very_short_series_get_one_score_per_point(n):
    ts = pd.date_range("2026-11-01", periods=n, freq="1s")
    x = np.linspace(0, 1, n) ** 2
    s = stream_scores(ts, x)
    assert s.shape == (n,) and np.all((s >= 0) & (s <= 1))
    if n <= 3:
        assert np.all(s == 0.0)  # no spread known yet: nothing can look unusual


def test_all_missing_and_bad_lengths():
    ts = pd.date_range("2026-11-01", periods=50, freq="1s")
    assert np.all(stream_scores(ts, np.full(50, np.nan)) == 0.0)
    with pytest.raises(ValueError, match="timestamps has 49 entries but values has 50"):
        stream_scores(ts[:49], np.zeros(50))
    with pytest.raises(ValueError, match=r"one series .* shape \(50, 2\)"):
        stream_scores(ts, np.zeros((50, 2)))
    assert len(stream_scores(ts, np.zeros((50, 1)))) == 50  # a one-column array is one series


def test_default_warmup_is_a_capped_fraction():
    assert default_warmup(20) == 20
    assert default_warmup(1000) == 150
    assert default_warmup(1_000_000) == 5000


# -- score_frame ----------------------------------------------------------------------------------
def entity(n: int, seed: int, start: str) -> pd.DataFrame:
    """One host: metrics on very different scales, one that never changes, a few gaps."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    day = np.sin(2 * np.pi * t / 200)
    frame = pd.DataFrame({
        "cpu": 0.4 + 0.2 * day + rng.normal(0, 0.03, n),
        "bytes_in": 5e6 + 2e6 * day + rng.normal(0, 2e5, n),
        "latency_s": 0.002 + 0.0005 * day + rng.normal(0, 1e-4, n),
        "disks": np.full(n, 4.0),
    }, index=pd.date_range(start, periods=n, freq="1min"))
    frame.iloc[rng.choice(n, 10, replace=False), 1] = np.nan
    return frame


@pytest.fixture(scope="module")
def frames():
    train = entity(2000, 1, "2026-11-01")
    test = entity(800, 2, str(train.index[-1] + pd.Timedelta("1min")))
    labels = np.zeros(len(test), bool)
    test.iloc[300:340, 2] += 0.002        # latency quadruples for 40 minutes
    labels[300:340] = True
    test.iloc[500:540, 0] = test.iloc[500, 0]  # cpu stuck
    labels[500:540] = True
    test.iloc[650, 1] = 2.5e7               # one wild bytes_in value
    labels[650] = True
    return train, test, labels


def test_score_frame_finds_anomalies_in_one_metric_among_others_on_other_scales(frames):
    train, test, labels = frames
    s = score_frame(train, test)
    assert isinstance(s, pd.Series) and s.index.equals(test.index)
    assert np.all((s >= 0) & (s < 1))
    assert roc_auc_score(labels, s) >= 0.85
    assert s.iloc[650] > 0.999
    # False alarms on normal rows, leaving out a few rows after each anomaly (smoothing echoes it).
    after = np.convolve(labels, np.ones(4), mode="full")[: len(labels)] > 0
    assert np.mean(s[~after] >= 0.99) <= 0.02
    for start, stop in ((300, 340), (500, 540)):  # each anomaly above every normal row
        assert s.iloc[start:stop].max() > s[~after].max()
    surprise = score_frame(train, test, surprise=True)
    np.testing.assert_allclose(score_of(surprise.to_numpy()), s.to_numpy())


def frame_case(kind: str, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """An entity's train/test frames with one anomaly of ``kind`` in one metric of the test part."""
    rng = np.random.default_rng([100, seed, KINDS.index(kind)])
    train = entity(2000, 2 * seed + 1, "2026-11-01")
    test = entity(800, 2 * seed + 2, str(train.index[-1] + pd.Timedelta("1min")))
    col = int(rng.integers(0, 3))
    sd = train.iloc[:, col].diff().std()
    labels = np.zeros(len(test), bool)
    if kind == "spike":
        where = [300, 420, 560]
        test.iloc[where, col] += 8 * sd * rng.choice([-1, 1], 3)
        labels[where] = True
    elif kind == "level_shift":
        test.iloc[400:, col] += 5 * sd
        labels[400:460] = True
    elif kind == "variance":
        test.iloc[400:460, col] += rng.normal(0, 3 * sd, 60)
        labels[400:460] = True
    elif kind == "drift":
        test.iloc[400:, col] += np.minimum(np.arange(400), 60) * (8 * sd / 60)
        labels[420:460] = True
    else:
        test.iloc[400:460, col] = test.iloc[400, col]
        labels[400:460] = True
    return train, test, labels


def frame_auc(kind: str, seed: int = 0) -> float:
    train, test, labels = frame_case(kind, seed)
    return roc_auc_score(labels, score_frame(train, test))


@pytest.mark.parametrize("kind", KINDS)
def test_score_frame_finds_every_kind_before_any_false_alarm(kind):
    """Stuck and drift too: a metric that stops following the others breaks their correlation."""
    for seed in range(3):
        train, test, labels = frame_case(kind, seed)
        s = score_frame(train, test).to_numpy()
        first = int(np.flatnonzero(labels)[0])
        assert s[labels].max() > s[:first].max(), (kind, seed)


def test_score_frame_follow_lets_a_lasting_change_become_the_new_normal():
    train, test, labels = frame_case("level_shift")
    span = pd.Timedelta(minutes=200)
    still = score_frame(train, test).to_numpy()
    followed = score_frame(train, test, follow=span).to_numpy()
    assert followed[400:410].max() > 0.999                  # flagged when it happens
    assert np.mean(still[600:] >= 0.99) > 0.5               # judged against training alone: for ever
    assert np.mean(followed[600:] >= 0.99) <= 0.3           # against its recent past: mostly no longer
    with pytest.raises(ValueError, match="time index"):
        score_frame(train.reset_index(drop=True), test.reset_index(drop=True), follow="1D")


def test_score_frame_is_causal_and_trained_on_train_only(frames):
    train, test, _ = frames
    full = score_frame(train, test)
    np.testing.assert_array_equal(score_frame(train, test.iloc[:320]).to_numpy(), full.iloc[:320].to_numpy())
    np.testing.assert_array_equal(score_frame(train, test.iloc[:1]).to_numpy(), full.iloc[:1].to_numpy())


def test_a_metric_constant_in_training_is_left_out(frames):
    """Training says nothing about how it varies; its change is stream_scores' job (tested above)."""
    train, test, _ = frames
    test = test.copy()
    test.iloc[100:, 3] = 3.0  # a disk disappears and stays gone
    s = score_frame(train, test)
    assert np.mean(s.iloc[100:300] >= 0.99) <= 0.02


def test_score_frame_edge_cases(frames):
    train, test, _ = frames
    assert len(score_frame(train, test.iloc[:0])) == 0
    short = score_frame(train.iloc[:15], test.iloc[:30])  # little history
    assert len(short) == 30 and np.all((short >= 0) & (short < 1))
    with pytest.raises(ValueError, match="at least 2"):
        score_frame(train.iloc[:1], test)
    # Test before/overlapping train (no usable history): windows start at the first test row.
    early = score_frame(train.iloc[1000:], train.iloc[:200])
    assert len(early) == 200 and np.all(np.isfinite(early))
    with pytest.raises(ValueError, match="no numeric columns"):
        score_frame(pd.DataFrame({"host": ["a", "b"]}), test)
    # Numbers that arrive as objects (JSON, Elasticsearch, a mixed CSV) are metrics all the same.
    as_objects = score_frame(train.astype(object), test.astype(object))
    assert np.allclose(as_objects, score_frame(train, test))


def rolling_z_found(kind: str, bg: str, seed: int = 0) -> bool:
    """Baseline for the table below: |z| of each point against the mean/std of the 100 points before it."""
    _, x, labels = case(kind, bg, seed)
    s = pd.Series(x)
    z = ((s - s.rolling(100, min_periods=2).mean().shift(1)) / s.rolling(100, min_periods=2).std().shift(1)).abs()
    z = z.fillna(0).to_numpy()
    return bool(z[ONSET:ONSET + LENGTH].max() > z[WARMUP:ONSET].max())


def frame_found(kind: str, seed: int = 0) -> bool:
    train, test, labels = frame_case(kind, seed)
    s = score_frame(train, test).to_numpy()
    return bool(s[labels].max() > s[:int(np.flatnonzero(labels)[0])].max())


if __name__ == "__main__":
    seeds = range(5)
    shapes = BACKGROUNDS + REAL_SHAPES
    print("Share of 5 seeds in which the anomaly's highest score beats every normal point before it")
    print(f"{'kind':12s}" + "".join(f"{bg:>13s}" for bg in shapes) + f"{'rolling z':>11s}" + f"{'score_frame':>13s}")
    for kind in KINDS:
        values = [np.mean([found(kind, bg, seed) for seed in seeds]) for bg in shapes]
        base = np.mean([rolling_z_found(kind, bg, seed) for bg in shapes for seed in seeds])
        frame = np.mean([frame_found(kind, seed) for seed in seeds])
        print(f"{kind:12s}" + "".join(f"{v:13.1f}" for v in values) + f"{base:11.2f}" + f"{frame:13.1f}")
