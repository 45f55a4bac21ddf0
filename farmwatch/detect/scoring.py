"""From raw anomaly statistics to calibrated scores in [0, 1], and how scores are combined.

Every detector in farmwatch (the family model, peer comparison, the point-level residuals of
``stream_scores``) produces a *raw statistic* whose scale means nothing to an operator: an
IsolationForest path length, a robust z-score, the largest |z| of 40 features. A ``Calibrator``
turns it into "more anomalous than this fraction of normal history": the empirical CDF of the same
statistic on normal (training) data. On new normal data calibrated scores are therefore close to
uniform on [0, 1], so a threshold of ``1 - rate`` gives a false-alarm rate of about ``rate`` whatever
the detector, and scores of different detectors can be compared and combined.

Above the 90 % quantile of the training statistic the CDF continues as an exponential tail fitted to
the excesses (the peaks-over-threshold idea behind SPOT): a value far beyond anything seen in
training still gets a distinct score closer to 1 instead of all such values tying at 1.0, which
matters for ranking (ROC, NAB-style thresholds) and for telling "a bit beyond normal" from "far".

Combining: ``combine`` takes the largest of k calibrated scores and raises it to the power k
(Šidák): if the k scores were independent and uniform on normal data, so is the combined score,
which keeps the threshold's false-alarm meaning. Correlated detectors make it slightly
conservative, never the other way.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

TABLE_SIZE = 2048
TAIL_P = 0.9
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Calibrator:
    """Maps a raw statistic (larger = more anomalous) to its CDF under normal behaviour.

    ``table`` is the sorted statistic on normal data (or 2,048 of its quantiles), ``tail_start``
    its 90 % quantile, ``tail_p`` the empirical CDF there and ``tail_scale`` the mean excess above it.
    """

    table: np.ndarray
    tail_start: float
    tail_p: float
    tail_scale: float

    @classmethod
    def fit(cls, raw: np.ndarray) -> Calibrator:
        """Learn the CDF from statistics of normal data (NaN and inf are ignored)."""
        raw = np.asarray(raw, dtype=np.float64).ravel()
        raw = raw[np.isfinite(raw)]
        if raw.size == 0:
            raw = np.zeros(1)
        raw = np.sort(raw)
        positions = np.arange(raw.size)
        # Quantiles of the sorted sample by interpolation (what np.quantile does, without re-sorting).
        table = raw if raw.size <= TABLE_SIZE else np.interp(np.linspace(0, raw.size - 1, TABLE_SIZE), positions, raw)
        start = float(np.interp(TAIL_P * (raw.size - 1), positions, raw))
        above = raw[raw > start] - start
        p0 = float(np.searchsorted(raw, start, side="right")) / raw.size
        scale = float(above.mean()) if above.size else 0.0
        # A statistic that never varied in training (a constant series): any excess is novel.
        floor = float(negligible(start))
        return cls(table=table, tail_start=start, tail_p=min(p0, 1.0 - 1.0 / (raw.size + 1)), tail_scale=max(scale, floor))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated scores in [0, 1]; NaN stays NaN."""
        raw = np.asarray(raw, dtype=np.float64)
        p = np.searchsorted(self.table, raw, side="left") / self.table.size
        over = raw > self.tail_start
        if np.any(over):
            with np.errstate(over="ignore"):  # a tail of width ~0 (constant training): excess = inf, p = 1
                excess = (raw[over] - self.tail_start) / self.tail_scale
            p[over] = 1.0 - (1.0 - self.tail_p) * np.exp(-excess)
        p[np.isnan(raw)] = np.nan
        return np.clip(p, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table.tolist(), "tail_start": self.tail_start, "tail_p": self.tail_p,
                "tail_scale": self.tail_scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        return cls(np.asarray(d["table"], dtype=np.float64), float(d["tail_start"]), float(d["tail_p"]),
                   float(d["tail_scale"]))


def surprise(p: np.ndarray) -> np.ndarray:
    """``-log(1 - p)``: calibrated scores on a scale where the far tail is not squeezed against 1.

    Calibrating a function of already calibrated scores (their maximum) must happen here: in
    [0, 1] every extreme value sits within 1e-3 of 1 and the new CDF's tail would cap them all
    at about the same score.
    """
    return -np.log1p(-np.minimum(np.asarray(p, dtype=np.float64), 1.0 - 1e-16))


def negligible(center: np.ndarray | float) -> np.ndarray:
    """A spread too small to be real at this magnitude (rounding noise): relative, so that scores
    do not depend on the unit a metric is expressed in (seconds or nanoseconds)."""
    return 1e-9 * np.abs(center) + 1e-300


def combine(*scores: np.ndarray) -> np.ndarray:
    """Šidák combination of calibrated scores: ``max(s_1..s_k) ** k`` over the non-NaN ones.

    A point with every score NaN gets NaN.
    """
    stacked = np.stack([np.asarray(s, dtype=np.float64) for s in scores])
    k = np.sum(~np.isnan(stacked), axis=0)
    with np.errstate(invalid="ignore"):
        best = np.max(np.where(np.isnan(stacked), -np.inf, stacked), axis=0)
    out = np.where(k > 0, np.power(np.maximum(best, 0.0), np.maximum(k, 1)), np.nan)
    return out


def robust_center_scale(x: np.ndarray, axis: int = 0, floor: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD (as a normal-consistent sigma) along ``axis``, NaN ignored.

    The scale never goes below ``floor`` nor below a tiny fraction of the centre's magnitude, so a
    dimension that did not vary yields large but finite z-scores instead of division by zero.
    """
    x = np.asarray(x, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: handled below
        center = np.nanmedian(x, axis=axis)
        mad = np.nanmedian(np.abs(x - np.expand_dims(center, axis)), axis=axis) * MAD_TO_SIGMA
    center = np.nan_to_num(center, nan=0.0)
    tiny = negligible(center)
    scale = np.maximum(np.nan_to_num(mad, nan=0.0), np.maximum(floor, tiny))
    return center, scale


def halfnormal_score(z: np.ndarray) -> np.ndarray:
    """Probability that a standard normal is within ±|z|: a calibration-free fallback for robust
    z-scores when there is too little normal history to learn a CDF from."""
    from scipy.special import erf

    z = np.abs(np.asarray(z, dtype=np.float64))
    return erf(z / np.sqrt(2.0))
