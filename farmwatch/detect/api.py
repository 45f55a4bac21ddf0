"""The notebook/evaluation API: anomaly scores for one series or one entity from plain arrays.

Both functions use the detectors the services use (``frames.entity_features``, a ``models``
family model, ``scoring`` calibration; the window features are ``API_FEATURES``, chosen by
measurement) plus point-level robust residuals, because a window model alone sees a spike only as "the window that
contains it" and keeps flagging it for a whole window; the residual scores the spike *at* the
spike. Scores are calibrated so that on normal data they are roughly uniform on [0, 1]: a threshold
of 0.99 means about 1 % false alarms, on any series. How each part works and what it measured on a
labelled synthetic set: ``docs/detection.md``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from farmwatch.detect.frames import column_names, entity_features, filled
from farmwatch.detect.models import train
from farmwatch.detect.scoring import Calibrator, combine, halfnormal_score, negligible, robust_center_scale

API_FEATURES: tuple[str, ...] = (
    # The window features of both API functions, chosen by measurement on the labelled synthetic
    # set of tests/test_detect_api.py (docs/detection.md): level, spread, range, change, trend and
    # lag-1 autocorrelation. Adding shape features (peaks, strikes, locations of extremes, fft)
    # lowered the mean AUC there (stream 0.927 → 0.905, frame 0.935 → 0.923): for an
    # IsolationForest they are mostly noise dimensions.
    "value__mean",
    "value__median",
    "value__standard_deviation",
    "value__minimum",
    "value__maximum",
    "value__mean_change",
    "value__mean_abs_change",
    'value__linear_trend__attr_"slope"',
    'value__linear_trend__attr_"rvalue"',
    "value__autocorrelation__lag_1",
)
WARMUP_FRACTION = 0.15
WARMUP_MIN = 30
WARMUP_MAX = 5000
MIN_WINDOWS = 40          # fewer normal windows than this: no window model, point statistics only
MIN_CALIBRATION = 20      # fewer normal points than this: analytic (half-normal) calibration
SPIKE_CLIP = 4.0          # the window model sees a point this many robust sigmas off as the expected value
SEASONS = 3               # the seasonal reference is the median over this many past periods
SEASON_ACF = 0.3          # autocorrelation at the period needed to use the seasonal residual
SPIKE_CONTEXT = 5         # a point's expected value: the median of this many points before it
RETRAIN_EXCLUDE = 0.99    # windows scoring above this are not taught to the next model as normal
N_TREES = 25              # per (re)training of the stream's window model (retrained often: cheap trees)
RETRAIN_MIN = 500         # the window model is retrained every max(warmup, this) points
REGIME_SHARE = 0.8        # this share of the last `regime` points anomalous: a new normal
MIN_SPREAD_POINTS = 3     # a robust spread needs this many earlier points
SPAN_MAX = 1000           # rolling level/spread of the point statistics: the last min(warmup, this) points


def default_warmup(n: int) -> int:
    """15 % of the series (NAB's probationary period), at least 30 points and at most 5,000."""
    return int(min(n, min(max(int(WARMUP_FRACTION * n), WARMUP_MIN), WARMUP_MAX)))


def default_window(n_warmup: int) -> int:
    """Window length from the amount of normal history: a tenth of it, between 8 and 16 points
    (short windows react sooner and echo an anomaly for fewer points after it ends)."""
    return int(np.clip(n_warmup // 10, 8, 16))


# -- stream_scores --------------------------------------------------------------------------------
def stream_scores(timestamps: Any, values: Any, warmup: int | None = None, *, window: int | None = None,
                  random_state: int = 0) -> np.ndarray:
    """One anomaly score in [0, 1] per point of one series, causally.

    ``timestamps``: numpy datetime64, pandas datetimes or numbers (irregular, with gaps or
    duplicates); ``values``: floats, NaN for missing. Points are taken in time order (duplicates in
    the order given) and a point's score uses only the points before and at it. Normal behaviour is
    learned from the first ``warmup`` points (default ``default_warmup``); with a fixed ``warmup``,
    appending points never changes earlier scores (the default warmup grows with the series).

    - Warmup points get point-level robust z-scores (causal, against the points before them)
      mapped through the normal distribution: there is no history yet to calibrate against.
    - After warmup: the Šidák combination (``scoring.combine``) of calibrated scores, each "more
      unusual than this fraction of recent normal history": (1) the residual of the point against
      the median of the few points before it, scaled by the recent residuals' robust spread
      (spikes, dips); (2) the point against the robust level and spread of the recent past (level
      shifts, out of range); (3) when the warmup shows a period, the point against the same phase
      of the last periods; (4) a family model over the ``window``-point window ending at the point
      (variance change, drift, stuck-at-constant, shape change). The point statistics use rolling
      medians and quantiles over the last ``min(warmup, 1000)`` points; the window model and the
      calibrations are refitted every ``max(warmup, 500)`` points on the most recent points that
      did not look anomalous, and after a lasting change (see ``_after_warmup``) on the new
      regime, so drift of normal behaviour is followed while an anomaly is not learnt as normal.
    - Missing values (NaN, ±inf) score 0 (they are forward-filled for the windows of later
      points); a constant series scores 0 until it changes; a series shorter than a window gets
      point scores only; the first 3 points score 0 (no spread known yet). Timestamps that cannot
      be read as times leave the points in the given order.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        return np.empty(0)
    order = _time_order(timestamps, n)
    out = np.empty(n)
    out[order] = _stream_sorted(x[order], warmup, window, random_state)
    return out


def _time_order(timestamps: Any, n: int) -> np.ndarray:
    ts = pd.to_datetime(pd.Series(np.asarray(timestamps).ravel()), errors="coerce", utc=True) \
        if not np.issubdtype(np.asarray(timestamps).dtype, np.number) else pd.Series(np.asarray(timestamps, dtype=float))
    if len(ts) != n:
        raise ValueError(f"timestamps has {len(ts)} entries but values has {n}")
    if ts.isna().any():
        return np.arange(n)  # unknown times: keep the given order rather than guess
    return np.argsort(ts.to_numpy(), kind="stable")


def _stream_sorted(x: np.ndarray, warmup: int | None, window: int | None, random_state: int) -> np.ndarray:
    n = x.size
    missing = ~np.isfinite(x)
    if missing.all():
        return np.zeros(n)
    xf = filled(pd.DataFrame({"value": x}), ["value"])[:, 0]
    n_warm = default_warmup(n) if warmup is None else int(np.clip(warmup, 1, n))
    span = int(np.clip(n_warm, 50, SPAN_MAX))
    point, clean, plain = _point_statistics(xf, span, season(xf[:n_warm]))
    # Warmup: no history to calibrate against, and the period (found in the whole warmup) is not
    # known yet at a warmup point: the plain spike and level z-scores, through the normal CDF.
    scores = halfnormal_score(plain)
    if n_warm < n:
        length = window or default_window(n_warm)
        # Only the window model needs the standardised series (the point statistics are ratios of
        # differences already), and it only starts after warmup: this keeps warmup scores causal.
        clean = standardized(clean[:, None], clean[:n_warm, None])[:, 0]
        _after_warmup(clean, point, n_warm, length, scores, random_state)
    scores[missing] = 0.0
    return np.clip(np.nan_to_num(scores, nan=0.0), 0.0, 1.0)


def season(x: np.ndarray) -> int | None:
    """The period (in points) of a clear seasonality in ``x`` (the warmup), or None.

    The highest local maximum of the autocorrelation between lags ``2 * SPIKE_CONTEXT`` and
    ``len(x) / 2`` (at least two periods must be seen), if it exceeds ``SEASON_ACF`` and rises at
    least that much above the lowest autocorrelation at shorter lags.
    """
    n = len(x)
    lo, hi = 2 * SPIKE_CONTEXT, n // 2
    if hi <= lo + 2:
        return None
    y = x - x.mean()
    spec = np.fft.rfft(y, 2 * n)
    acf = np.fft.irfft(spec * np.conj(spec))[:hi + 1]
    if acf[0] <= 0:
        return None
    acf = acf / acf[0]
    inner = acf[lo:hi]
    peaks = np.flatnonzero((inner[1:-1] > inner[:-2]) & (inner[1:-1] >= inner[2:])) + 1
    if peaks.size == 0:
        return None
    best = peaks[np.argmax(inner[peaks])]
    # A real cycle's autocorrelation dips before it peaks again; a random walk's just decays slowly.
    prominent = inner[best] - inner[:best].min() >= SEASON_ACF
    return int(lo + best) if inner[best] >= SEASON_ACF and prominent else None


def _point_statistics(x: np.ndarray, span: int, period: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Causal robust z-scores of each point (rows: against the few points before it, against the
    recent level, and with a ``period``, against the same phase one period earlier) and the series
    with points more than ``SPIKE_CLIP`` robust sigmas off replaced by their expected value; and
    the larger of the spike and level z-scores without the period (for warmup points).

    The window model sees the clipped series: a spike is the point statistic's job, and a window
    model that saw it would flag every window containing it, a whole window of false alarms after it.
    """
    s = pd.Series(x)
    expected = s.rolling(SPIKE_CONTEXT, min_periods=1).median().shift(1)
    resid = (s - expected).fillna(0.0)
    sigma = _rolling_sigma(resid, span)
    spike = resid.abs() / sigma
    level = (s - s.rolling(span, min_periods=1).median().shift(1)).abs() / _rolling_sigma(s, span)
    stats = [spike, level]
    if period:
        # The same phase in the last SEASONS periods (median of 3 points around it in each, then
        # the median over the periods, so one anomalous period does not echo a period later), the
        # residual's recent median removed: a level shift stands out for a whole period even where
        # the cycle's own swing is larger than the shift.
        near = s.rolling(3, min_periods=1).median()
        lags = np.vstack([near.shift(k * period - 1).to_numpy() for k in range(1, SEASONS + 1)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # before the first period: all NaN
            seasonal = pd.Series(np.nanmedian(lags, axis=0), index=s.index)
        r = (s - seasonal).fillna(0.0)
        r = r - r.rolling(span, min_periods=1).median().shift(1).fillna(0.0)
        seasonal_z = r.abs() / _rolling_sigma(r, span)
        # A jump that happens every period at this phase (the edge of a square wave) is no spike.
        stats = [np.minimum(spike, seasonal_z.fillna(spike)), level, seasonal_z]
    clean = s.where(spike <= SPIKE_CLIP, expected).fillna(s)
    plain = np.fmax(spike.fillna(0.0).to_numpy(), level.fillna(0.0).to_numpy())
    return np.vstack([z.fillna(0.0).to_numpy() for z in stats]), clean.to_numpy(), plain


def _rolling_sigma(s: pd.Series, span: int) -> pd.Series:
    """Robust spread of the ``span`` points *before* each point: IQR as sigma, else the std, else tiny."""
    r = s.rolling(span, min_periods=MIN_SPREAD_POINTS)
    iqr = ((r.quantile(0.75) - r.quantile(0.25)) / 1.349).shift(1)
    std = r.std().shift(1)
    tiny = negligible(s.abs().rolling(span, min_periods=1).median().shift(1).fillna(0.0))
    sigma = iqr.where(iqr > tiny, std)
    # Too few points before it to know a spread: NaN, so the point's z-score is 0, not x / tiny.
    return sigma.where((sigma > tiny) | sigma.isna(), tiny)


def _after_warmup(x: np.ndarray, point: np.ndarray, n_warm: int, length: int, scores: np.ndarray,
                  random_state: int) -> None:
    """Scores for the points after warmup, block by block, each block with models of the history before it.

    A block normally spans ``max(warmup, RETRAIN_MIN)`` points and its models learn from the
    ``warmup`` points before it, leaving out those that scored as anomalies. A *regime change*
    ends a block early: when ``REGIME_SHARE`` of the last ``regime`` points scored as anomalies
    (a level shift that stays), the next block learns from just those points, so a lasting change
    is flagged when it starts and accepted as the new normal after about ``regime`` points.
    """
    n = x.size
    F = entity_features(x, length, 1, API_FEATURES, pad=True)  # row t: window ending at t
    columns = column_names(["value"], API_FEATURES)
    block = max(n_warm, RETRAIN_MIN)
    regime = max(MIN_WINDOWS + length, n_warm // 4)
    start, new_regime = n_warm, False
    while start < n:
        stop = min(n, start + block)
        if new_regime:
            normal = np.arange(start - regime, start)
        else:
            hist = np.arange(max(0, start - n_warm), start)
            normal = hist[scores[hist] < RETRAIN_EXCLUDE] if start > n_warm else hist
            if len(normal) < len(hist) // 2:
                normal = hist  # most of the recent past is "anomalous": it is the new normal
        recent = np.arange(start - regime, start) if new_regime else np.arange(max(0, start - n_warm), start)
        if len(normal) < MIN_CALIBRATION:
            scores[start:stop] = halfnormal_score(np.max(point[:, start:stop], axis=0))
        else:
            # Models learn from the normal-looking points, calibrations from all recent points.
            parts = [Calibrator.fit(stat[recent])(stat[start:stop]) for stat in point]
            full = normal[normal >= length - 1]  # windows without padding
            if len(full) >= MIN_WINDOWS:
                model = train(F[full], columns, features=API_FEATURES, window=length, metrics=["value"],
                              params={"n_estimators": N_TREES}, random_state=random_state, constant="ignore")
                model.recalibrate(F[recent[recent >= length - 1]])
                parts.append(model.score(F[start:stop]))
            scores[start:stop] = combine(*parts)
        cut = _regime_change(scores, start, stop, regime)
        new_regime = cut is not None
        start = stop if cut is None else cut


def _regime_change(scores: np.ndarray, start: int, stop: int, regime: int) -> int | None:
    """The first index in (start, stop) before which ``REGIME_SHARE`` of ``regime`` points were anomalous."""
    lo = start  # only this block's points: those before it were judged by the previous models
    flagged = np.concatenate([[0], np.cumsum(scores[lo:stop] >= RETRAIN_EXCLUDE)])
    ends = np.arange(lo + regime, stop)  # candidate starts of the next block
    if ends.size == 0:
        return None
    counts = flagged[ends - lo] - flagged[ends - lo - regime]
    hits = np.flatnonzero(counts >= REGIME_SHARE * regime)
    return None if hits.size == 0 else int(ends[hits[0]])


# -- score_frame ----------------------------------------------------------------------------------
def score_frame(train_df: pd.DataFrame, test_df: pd.DataFrame, *, window: int | None = None,
                kind: str = "isolation_forest", random_state: int = 0) -> pd.Series:
    """Causal anomaly score in [0, 1] for each row of ``test_df``, learned from ``train_df`` only.

    One entity: both frames have a time index and one column per metric (columns of ``train_df``
    define the metrics; extra test columns are ignored, missing ones are treated as missing). The
    score is the Šidák combination of (1) a ``kind`` family model over the features of every
    metric's window ending at the row, (2) the largest robust z of the row's values against the
    training distribution of each metric, (3) the largest robust z of the row's residual against
    the median of the few rows before it (spikes), scaled by the training residuals; (2) and (3)
    are calibrated on the training rows, and the window model sees spikes replaced by their
    expected value (so a spike does not make a whole window of false alarms after it).
    NaN values are forward-filled (training medians before a metric's first value); a metric that
    was constant in training takes part in (1) and (3) but not in (2), so its change is flagged
    when it happens instead of forever after. If ``test_df`` starts after ``train_df`` ends, the
    first test windows reach back into the training tail; otherwise they start from the first
    test row.
    """
    metrics = [c for c in train_df.columns if pd.api.types.is_numeric_dtype(train_df[c])]
    if not metrics:
        raise ValueError("train has no numeric columns")
    train_df = train_df.sort_index(kind="stable")
    test_df = test_df.sort_index(kind="stable")
    if len(test_df) == 0:
        return pd.Series([], index=test_df.index, dtype=np.float64, name="anomaly_score")
    tr = filled(train_df, metrics)
    med = {m: float(np.nanmedian(tr[:, j])) if len(tr) else 0.0 for j, m in enumerate(metrics)}
    contiguous = len(train_df) > 0 and _before(train_df.index, test_df.index)
    fill = {m: float(tr[-1, j]) for j, m in enumerate(metrics)} if contiguous else med
    te = filled(test_df, metrics, fill)
    te, tr = standardized(te, tr), standardized(tr, tr)
    length = window or int(np.clip(len(tr) // 20, 8, 16))
    parts = []
    # (2) + (3): point statistics, calibrated on the training rows.
    center, sigma = robust_center_scale(tr, axis=0)
    sigma = _std_floor(tr, center, sigma)
    varied = sigma > negligible(center)
    exp_tr = _expected(tr)
    exp_te = _expected(np.concatenate([tr, te]))[len(tr):] if contiguous else _expected(te)
    r_center, r_sigma = robust_center_scale(tr - exp_tr, axis=0)
    r_sigma = _std_floor(tr - exp_tr, r_center, r_sigma)
    z_tr, z_te = np.abs(tr - exp_tr) / r_sigma, np.abs(te - exp_te) / r_sigma
    stats_tr = [_level_stat(tr, center, sigma, varied), z_tr.max(axis=1)]
    stats_te = [_level_stat(te, center, sigma, varied), z_te.max(axis=1)]
    for s_tr, s_te in zip(stats_tr, stats_te):
        parts.append(Calibrator.fit(s_tr)(s_te) if len(tr) >= MIN_CALIBRATION else halfnormal_score(s_te))
    # The window model sees isolated spikes replaced by their expected value (see _point_statistics).
    tr = np.where(z_tr > SPIKE_CLIP, exp_tr, tr)
    te = np.where(z_te > SPIKE_CLIP, exp_te, te)
    history = tr[-(length - 1):] if contiguous and length > 1 else tr[:0]
    # (1): the window model.
    step = max(1, int(np.ceil((len(tr) - length + 1) / 10_000)))
    F_tr = entity_features(tr, length, step, API_FEATURES)
    if len(F_tr) >= MIN_WINDOWS:
        columns = column_names(metrics, API_FEATURES)
        model = train(F_tr, columns, features=API_FEATURES, metrics=metrics, window=length, step=step,
                      kind=kind, random_state=random_state, constant="ignore")
        F_te = entity_features(np.concatenate([history, te]), length, 1, API_FEATURES,
                               pad=len(history) < length - 1)
        parts.append(model.score(F_te[-len(te):]))
    score = np.nan_to_num(combine(*parts), nan=0.0)
    return pd.Series(score, index=test_df.index, name="anomaly_score")


def standardized(x: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """``x`` (n, metrics) centred and scaled by the robust level and spread of ``normal``.

    Makes every score independent of the metrics' units: some features (autocorrelations) follow
    tsfresh in treating a variance below an absolute 1e-8 as zero, which would make a metric
    expressed in tiny units look constant. Spread: MAD as sigma, else the std, else the level.
    """
    if len(normal) == 0:
        return x
    center, sigma = robust_center_scale(normal, axis=0)
    sigma = _std_floor(normal, center, sigma)
    sigma = np.where(sigma > negligible(center), sigma, np.where(center != 0, np.abs(center), 1.0))
    return (x - center) / sigma


def _expected(x: np.ndarray) -> np.ndarray:
    """Each row's expected values: the median of the ``SPIKE_CONTEXT`` rows before it (the row itself for the first)."""
    e = pd.DataFrame(x).rolling(SPIKE_CONTEXT, min_periods=1).median().shift(1).to_numpy()
    return np.where(np.isnan(e), x, e)


def _before(a: pd.Index, b: pd.Index) -> bool:
    try:
        return bool(a.max() < b.min())
    except TypeError:
        return False


def _std_floor(x: np.ndarray, center: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """MAD is 0 for a mostly-constant metric with rare changes: use its std then, so the rare values are not z=1e9."""
    tiny = negligible(center)
    std = np.std(x, axis=0) if len(x) else np.zeros_like(center)
    return np.where(sigma > tiny, sigma, np.maximum(std, tiny))


def _level_stat(x: np.ndarray, center: np.ndarray, sigma: np.ndarray, varied: np.ndarray) -> np.ndarray:
    if not varied.any():
        return np.zeros(len(x))
    return np.max(np.abs(x[:, varied] - center[varied]) / sigma[varied], axis=1)

