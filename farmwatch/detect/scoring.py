"""From raw anomaly statistics to calibrated, bounded scores, and how scores are combined.

Every detector (the stream statistics, the cross-metric parts of ``score_frame``, the family model,
peer comparison) produces a *raw statistic* whose scale means nothing to an operator. A
``Calibrator`` turns it into a p-value, "this unusual or more in this fraction of normal history",
reported two ways: the *surprise* ``-log10 p`` (2 = 1 in 100, 3 = 1 in 1,000) and the score
``1 - p`` in [0, 1]. On normal data like the calibration sample, ``score >= 1 - rate`` raises about
``rate`` false alarms.

- Up to the 99 % quantile of the sample, p is the empirical survival (with the usual +1, so it is
  never below 1/(n+1) there); beyond it an exponential tail fitted to the excesses over that
  quantile (peaks over threshold) ranks values the sample never saw.
- A sample of thousands cannot say whether something is a 1-in-10^9 or a 1-in-10^40 event, so the
  surprise is exact up to ``KNEE`` (p = 10^-6) and grows only logarithmically beyond (``tempered``);
  the score squeezes it below ``CEILING`` (p = 10^-12), so it never reaches 1.0 in floating point,
  and far-out values still rank by how far out they are.
- ``combine`` adds surprises (Fisher's method: the product of p-values) and turns the sum back into
  a p-value, exact for independent parts: parts that agree count more than one part alone, and the
  bound keeps the noisiest part from owning the top of the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CEILING", "KNEE", "Calibrator", "combine", "negligible", "score_of", "tempered"]

TABLE_SIZE = 2048
TAIL_P = 0.99        # above this quantile of the sample, the exponential tail
KNEE = 6.0           # surprises up to here are p-values; beyond, they grow logarithmically
CEILING = 12.0       # scores are 1 - 10^-s with s squeezed below this: never 1.0 in floating point
WIDTH = CEILING - KNEE
LN10 = float(np.log(10.0))
MAD_TO_SIGMA = 1.4826


def tempered(surprise: np.ndarray) -> np.ndarray:
    """Raw surprise above ``KNEE`` grown only logarithmically: continuous, slope 1 at the knee,
    strictly increasing and never infinite. What a calibration fitted on a sample can honestly say
    about values far beyond it is their order, not a probability of 10^-40."""
    s = np.asarray(surprise, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        grown = KNEE + WIDTH * np.log1p(np.maximum(s - KNEE, 0.0) / WIDTH)
    return np.where(s > KNEE, grown, s)


def capped(surprise: np.ndarray) -> np.ndarray:
    """A (tempered) surprise squeezed below ``CEILING``: slope 1 at the knee, strictly increasing,
    and slow enough near the ceiling that far-out values keep distinct scores in floating point."""
    s = np.asarray(surprise, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        t = np.log1p(np.maximum(s - KNEE, 0.0) / WIDTH)
        return np.where(s > KNEE, KNEE + WIDTH * t / (1.0 + t), s)


def score_of(surprise: np.ndarray) -> np.ndarray:
    """The [0, 1) score of a surprise: ``1 - 10^-surprise`` up to the knee (p = 10^-6), then
    squeezed (``capped``) so that it never reaches 1.0 in floating point."""
    return 0.0 - np.expm1(-capped(surprise) * LN10)  # 0.0 - : never -0.0


def negligible(center: np.ndarray | float) -> np.ndarray:
    """A spread too small to be real at this magnitude (rounding noise): relative, so that scores
    do not depend on the unit a metric is expressed in (seconds or nanoseconds)."""
    return 1e-9 * np.abs(center) + 1e-300


@dataclass(frozen=True)
class Calibrator:
    """Maps a raw statistic (larger = more anomalous) to its surprise under normal behaviour.

    ``table``: up to 2,048 quantiles of the statistic on normal data; ``n``: the sample's size;
    ``tail_start``: its ``TAIL_P`` quantile, ``tail_logp``: ln of the survival there,
    ``tail_scale``: the mean excess above it.
    """

    table: np.ndarray
    n: int
    tail_start: float
    tail_logp: float
    tail_scale: float

    @classmethod
    def fit(cls, raw: np.ndarray, tail_scale: float | None = None) -> Calibrator:
        """Learn from statistics of normal data (NaN and inf are ignored).

        ``tail_scale``: the tail's scale in the statistic's own units, the same for every series
        calibrated with it (``stream_scores``: a standard deviation), instead of the mean excess
        of this sample: a tail fitted to a few dozen excesses of one series ranks that series'
        far-out values on its own scale, which made one threshold for many series worse.
        """
        raw = np.asarray(raw, dtype=np.float64).ravel()
        raw = np.sort(raw[np.isfinite(raw)])
        if raw.size == 0:
            raw = np.zeros(1)
        n = raw.size
        positions = np.arange(n)
        table = raw if n <= TABLE_SIZE else np.interp(np.linspace(0, n - 1, TABLE_SIZE), positions, raw)
        start = float(np.interp(TAIL_P * (n - 1), positions, raw))
        above = raw[raw > start] - start
        at_or_above = n - int(np.searchsorted(raw, start, side="left"))
        # A statistic that never went above its quantile (constant, or few distinct values): any
        # excess is novel, measured against a spread too small to be real.
        scale = tail_scale if tail_scale is not None else float(above.mean()) if above.size else 0.0
        scale = max(scale, float(negligible(start)))
        return cls(table=table, n=n, tail_start=start, tail_logp=float(np.log((at_or_above + 1) / (n + 1))),
                   tail_scale=scale)

    def surprise(self, raw: np.ndarray) -> np.ndarray:
        """``-log10 p`` of each value, ``tempered`` beyond the knee; NaN stays NaN."""
        raw = np.asarray(raw, dtype=np.float64)
        size = self.table.size
        # P(statistic >= value) among normal data, +1 as for any empirical p-value. Between two
        # quantiles it is interpolated (a continuous ECDF, so the highest scores of a quantised
        # statistic do not tie); a value equal to a quantile gets the conservative p of the whole tie.
        levels = np.linspace(0.0, 1.0, size) if size > 1 else np.zeros(1)
        below = np.interp(raw, self.table, levels)
        left = np.searchsorted(self.table, raw, side="left")
        exact = self.table[np.minimum(left, size - 1)] == raw
        below = np.where(exact, levels[np.minimum(left, size - 1)], below)
        logp = np.log((self.n * (1.0 - below) + 1.0) / (self.n + 1.0))
        over = raw > self.tail_start
        if np.any(over):
            with np.errstate(over="ignore"):
                logp[over] = self.tail_logp - (raw[over] - self.tail_start) / self.tail_scale
        logp = np.minimum(logp, 0.0)
        logp[np.isnan(raw)] = np.nan
        return tempered(0.0 - logp / LN10)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Scores ``1 - p`` in [0, 1); NaN stays NaN."""
        return score_of(self.surprise(raw))

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table.tolist(), "n": self.n, "tail_start": self.tail_start,
                "tail_logp": self.tail_logp, "tail_scale": self.tail_scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        return cls(np.asarray(d["table"], dtype=np.float64), int(d["n"]), float(d["tail_start"]),
                   float(d["tail_logp"]), float(d["tail_scale"]))


def combine(*surprises: np.ndarray) -> np.ndarray:
    """Fisher's combination of surprises: the surprise of the product of the parts' p-values.

    With k non-NaN parts and ``T = -ln(p_1 ... p_k)``, the combined p is
    ``exp(-T) * sum_{j<k} T^j / j!`` (exact when the parts are independent and uniform on normal
    data, so the threshold keeps its meaning), tempered like every surprise. NaN parts are left out;
    a point with every part NaN gets NaN.
    """
    stacked = np.stack([np.asarray(s, dtype=np.float64) for s in surprises])
    k = np.sum(~np.isnan(stacked), axis=0)
    total = np.nansum(stacked, axis=0) * LN10
    # ln of sum_{j<k} T^j / j!, accumulated term by term (k is small).
    series = np.ones_like(total)
    term = np.ones_like(total)
    for j in range(1, int(k.max(initial=1))):
        term = term * total / j
        series = series + np.where(j < k, term, 0.0)
    out = (total - np.log(series)) / LN10
    return np.where(k > 0, tempered(np.maximum(out, 0.0)), np.nan)


def robust_center_scale(x: np.ndarray, axis: int = 0, floor: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD (as a normal-consistent sigma) along ``axis``, NaN ignored.

    The scale never goes below ``floor`` nor below a tiny fraction of the centre's magnitude, so a
    dimension that did not vary yields large but finite z-scores instead of division by zero.
    """
    import warnings

    x = np.asarray(x, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: handled below
        center = np.nanmedian(x, axis=axis)
        mad = np.nanmedian(np.abs(x - np.expand_dims(center, axis)), axis=axis) * MAD_TO_SIGMA
    center = np.nan_to_num(center, nan=0.0)
    scale = np.maximum(np.nan_to_num(mad, nan=0.0), np.maximum(floor, negligible(center)))
    return center, scale
