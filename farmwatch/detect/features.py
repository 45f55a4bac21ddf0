"""tsfresh features for many windows at once, equal to ``tsfresh.extract_features``.

Why: tsfresh computes each feature with one Python call per time series, which is fine offline
(feature discovery, ``select_features``) but far too slow to score the whole farm (20,000 series)
every step. Here every feature is one numpy expression over a ``(n_windows, length)`` array, and
intermediate results (mean, centred values, sorted values, differences, the linear fit) are
computed once per call and shared by the features that need them.

Names are tsfresh's own column names for a series called ``value`` (``value__mean``,
``value__linear_trend__attr_"slope"``, ``value__quantile__q_0.1``), so a feature set found with
tsfresh offline is used online as is, and ``to_tsfresh_settings`` turns a set back into tsfresh
settings. Parity with tsfresh 0.21.2 is tested in ``tests/test_detect_features.py``; the default
set and its cost are measured in ``benchmarks/bench_features.py`` and explained in
``docs/features.md``.

Missing points. ``tsfresh.extract_features`` refuses a series that contains NaN ("Column must not
contain NaN values"), so tsfresh has no value to be equal to. ``compute`` gives NaN in *every*
feature column of a window that contains a NaN, and computes the other windows normally (a gap
never leaks into another window's values). Callers that want a value anyway (the models,
``stream_scores``) should fill gaps *before* calling ``compute``: resample irregular timestamps
onto the window's grid, then forward-fill (carry the last value; what a monitoring gauge means)
or linearly interpolate short gaps, and treat windows that are still NaN (gap at the start,
gap longer than the fill limit) as "no score". ``inf`` values are not missing: they go through
the same arithmetic as in tsfresh (results are then inf or NaN) and are not part of the parity
tests.

Extending. A feature family is one function registered with ``@feature("<tsfresh name>",
catalogue)``: it receives a ``Windows`` (the array plus shared, lazily computed intermediates)
and the parameters parsed from the column name as keyword arguments, and returns one float64
value per window. ``catalogue`` lists the parameter sets ``supported()`` advertises (tsfresh's
``ComprehensiveFCParameters`` choices); other parameter values of the same family work too. Add
a parity case for the new names in the test file; the test runs every name in ``supported()``
against tsfresh automatically.
"""

from __future__ import annotations

import ast
import inspect
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from farmwatch.detect.settings import DEFAULT_FEATURES

__all__ = ["DEFAULT_FEATURES", "Windows", "compute", "feature", "supported", "to_tsfresh_settings",
           "windows_of"]

KIND = "value"

# Windows are computed in blocks of about this many values (1 MiB of float64): the temporaries
# of a block stay in the CPU cache and are reused by the allocator, which made the default set
# ~1.7x faster on 20,000 x 60 windows than one block for all (benchmarks/bench_features.py).
BLOCK_VALUES = 131_072

Params = dict[str, Any]
Calculator = Callable[..., np.ndarray]


@dataclass(frozen=True)
class _Family:
    name: str
    fn: Calculator
    catalogue: tuple[Params, ...]


_FAMILIES: dict[str, _Family] = {}


def feature(name: str, catalogue: Iterable[Params] = ({},)) -> Callable[[Calculator], Calculator]:
    """Register ``fn(w: Windows, **params) -> (n_windows,) float64`` as the tsfresh family ``name``."""
    def register(fn: Calculator) -> Calculator:
        _FAMILIES[name] = _Family(name, fn, tuple(dict(p) for p in catalogue))
        return fn
    return register


def feature_name(family: str, params: Params | None = None) -> str:
    """The tsfresh column name: parameters sorted by name, strings in double quotes."""
    if not params:
        return f"{KIND}__{family}"
    parts = [f'{k}_"{v}"' if isinstance(v, str) else f"{k}_{v}" for k, v in sorted(params.items())]
    return "__".join([KIND, family, *parts])


@lru_cache(maxsize=4096)
def _parse(name: str) -> tuple[_Family, Params]:
    """Family and parameters of a column name (tsfresh's own rule: ``key_value`` split at the
    last underscore, the value a Python literal)."""
    parts = name.split("__")
    if len(parts) < 2 or parts[0] != KIND:
        raise ValueError(f"feature {name!r}: expected a tsfresh column name for the series "
                         f"'{KIND}', like '{KIND}__mean'")
    family = _FAMILIES.get(parts[1])
    if family is None:
        raise ValueError(f"feature {name!r}: farmwatch does not compute tsfresh's {parts[1]!r}; "
                         f"supported families: {', '.join(sorted(_FAMILIES))}")
    params: Params = {}
    for part in parts[2:]:
        key, sep, raw = part.rpartition("_")
        if not sep or not key:
            raise ValueError(f"feature {name!r}: parameter {part!r} is not 'name_value'")
        lowered = raw.lower()
        if lowered in ("nan", "inf", "-inf"):
            params[key] = float(lowered)
            continue
        try:
            params[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise ValueError(f"feature {name!r}: parameter value {raw!r} is not a literal") from None
    try:
        inspect.signature(family.fn).bind(None, **params)
    except TypeError as exc:
        raise ValueError(f"feature {name!r}: wrong parameters for {family.name} ({exc})") from None
    return family, params


class Windows:
    """The windows being computed plus intermediates shared between features, each computed
    at most once. The formulas repeat tsfresh's (numpy's) order of operations so that values
    are bit-for-bit or within rounding of tsfresh's."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.n, self.length = x.shape
        self._memo: dict[Any, np.ndarray] = {}

    def memo(self, key: Any, make: Callable[[], np.ndarray]) -> np.ndarray:
        """Share a result between features of one call (e.g. all lags of one autocorrelation)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def full(self, value: float) -> np.ndarray:
        return np.full(self.n, value, dtype=np.float64)

    @cached_property
    def mean(self) -> np.ndarray:
        return np.mean(self.x, axis=1)

    @cached_property
    def centred(self) -> np.ndarray:
        return self.x - self.mean[:, None]

    @cached_property
    def var(self) -> np.ndarray:
        c = self.centred
        return np.einsum("ij,ij->i", c, c) / self.length

    @cached_property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    @cached_property
    def min(self) -> np.ndarray:
        return np.min(self.x, axis=1)

    @cached_property
    def max(self) -> np.ndarray:
        return np.max(self.x, axis=1)

    @cached_property
    def sorted(self) -> np.ndarray:
        return np.sort(self.x, axis=1)

    @cached_property
    def diff(self) -> np.ndarray:
        return np.diff(self.x, axis=1)

    @cached_property
    def square(self) -> np.ndarray:
        return self.x * self.x

    @cached_property
    def ties(self) -> np.ndarray:
        """``sorted[:, i] == sorted[:, i + 1]``: neighbours in sorted order that are equal."""
        s = self.sorted
        return s[:, 1:] == s[:, :-1]

    def quantile(self, q: float) -> np.ndarray:
        """``np.quantile(x, q)`` (linear method) of every window, from the sorted values."""
        def make() -> np.ndarray:
            pos = q * (self.length - 1)
            lo = int(np.floor(pos))
            hi = min(lo + 1, self.length - 1)
            t = pos - lo
            a, b = self.sorted[:, lo], self.sorted[:, hi]
            d = b - a
            return b - d * (1 - t) if t >= 0.5 else a + d * t
        return self.memo(("quantile", q), make)


def _rows_with_nan(x: np.ndarray) -> np.ndarray:
    """Rows containing NaN; a row sum is NaN only if the row has a NaN (or +inf and -inf), so
    only those rows are checked element by element."""
    suspect = np.flatnonzero(np.isnan(np.sum(x, axis=1)))
    missing = np.zeros(x.shape[0], dtype=bool)
    if suspect.size:
        missing[suspect] = np.isnan(x[suspect]).any(axis=1)
    return missing


def compute(windows: np.ndarray, features: Sequence[str] = DEFAULT_FEATURES) -> np.ndarray:
    """windows: float64 array (n_windows, length); NaN marks a missing point. Returns float64
    (n_windows, len(features)) equal to what tsfresh.extract_features gives for each window as one
    time series (column 'value'), same NaN/inf where tsfresh gives them; a window containing NaN
    gives NaN in every column (tsfresh refuses such a series)."""
    if isinstance(features, str):
        raise TypeError("features must be a sequence of names, not one string")
    names = tuple(features)
    x = np.asarray(windows, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"windows must be 2-D (n_windows, length), got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError("windows must have at least one point (length >= 1)")
    parsed = [_parse(name) for name in names]
    out = np.empty((x.shape[0], len(names)), dtype=np.float64)
    if x.shape[0] == 0:
        return out
    missing = _rows_with_nan(x)
    has_missing = bool(missing.any())
    if has_missing:
        x = np.where(missing[:, None], 0.0, x)
    rows = max(1, BLOCK_VALUES // x.shape[1])
    with np.errstate(all="ignore"):
        for start in range(0, x.shape[0], rows):
            w = Windows(x[start: start + rows])
            for j, (family, params) in enumerate(parsed):
                out[start: start + rows, j] = family.fn(w, **params)
    if has_missing:
        out[missing] = np.nan
    return out


def windows_of(values: np.ndarray, length: int, step: int = 1) -> np.ndarray:
    """Sliding windows (n, length) over a 1-D series (a strided view, no copy), the newest last.

    Window ``i`` is ``values[i * step : i * step + length]`` (numpy's ``sliding_window_view``
    taken every ``step``); with ``step > 1`` the last window ends at the last value only when
    ``(len(values) - length) % step == 0``, so online scoring of the newest point should use
    ``values[-length:]``. A series shorter than ``length`` gives zero windows."""
    if length < 1 or step < 1:
        raise ValueError(f"length and step must be >= 1, got length={length}, step={step}")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    if v.shape[0] < length:
        return sliding_window_view(np.empty(length), length)[:0]
    return sliding_window_view(v, length)[::step]


def supported() -> tuple[str, ...]:
    """Every feature name compute() can calculate with the catalogued parameters (other parameter
    values of the same families work too)."""
    return tuple(feature_name(f.name, p) for f in _FAMILIES.values() for p in f.catalogue)


def to_tsfresh_settings(features: Sequence[str] = DEFAULT_FEATURES) -> dict[str, Any]:
    """The ``default_fc_parameters`` form of a feature set, so that
    ``tsfresh.extract_features(df, default_fc_parameters=to_tsfresh_settings(f))`` computes the
    same columns (tsfresh may order them differently; select by name)."""
    if isinstance(features, str):
        raise TypeError("features must be a sequence of names, not one string")
    names = tuple(features)
    settings: dict[str, Any] = {}
    for name in names:
        family, params = _parse(name)
        if not params:
            settings[family.name] = None
        elif params not in settings.setdefault(family.name, []):
            settings[family.name].append(dict(params))
    return settings


# ---------------------------------------------------------------------------------------------
# Feature families. Each returns one value per window; ``w.length`` is the same for all rows, so
# tsfresh's length-dependent branches (short series) become plain ``if``s.
# ---------------------------------------------------------------------------------------------

@feature("mean")
def _mean(w: Windows) -> np.ndarray:
    return w.mean


@feature("median")
def _median(w: Windows) -> np.ndarray:
    half = w.length // 2
    s = w.sorted
    if w.length % 2:
        return s[:, half]
    return (s[:, half - 1] + s[:, half]) / 2.0


@feature("standard_deviation")
def _standard_deviation(w: Windows) -> np.ndarray:
    return w.std


@feature("variance")
def _variance(w: Windows) -> np.ndarray:
    return w.var


@feature("minimum")
def _minimum(w: Windows) -> np.ndarray:
    return w.min


@feature("maximum")
def _maximum(w: Windows) -> np.ndarray:
    return w.max


@feature("absolute_maximum")
def _absolute_maximum(w: Windows) -> np.ndarray:
    return np.max(np.abs(w.x), axis=1)


@feature("length")
def _length(w: Windows) -> np.ndarray:
    return w.full(w.length)


@feature("sum_values")
def _sum_values(w: Windows) -> np.ndarray:
    return np.sum(w.x, axis=1)


@feature("abs_energy")
def _abs_energy(w: Windows) -> np.ndarray:
    return np.einsum("ij,ij->i", w.x, w.x)


@feature("root_mean_square")
def _root_mean_square(w: Windows) -> np.ndarray:
    return np.sqrt(np.mean(w.square, axis=1))


@feature("mean_change")
def _mean_change(w: Windows) -> np.ndarray:
    if w.length < 2:
        return w.full(np.nan)
    return (w.x[:, -1] - w.x[:, 0]) / (w.length - 1)


@feature("mean_abs_change")
def _mean_abs_change(w: Windows) -> np.ndarray:
    return np.mean(np.abs(w.diff), axis=1) if w.length > 1 else w.full(np.nan)


@feature("absolute_sum_of_changes")
def _absolute_sum_of_changes(w: Windows) -> np.ndarray:
    return np.sum(np.abs(w.diff), axis=1)


@feature("mean_second_derivative_central")
def _mean_second_derivative_central(w: Windows) -> np.ndarray:
    if w.length < 3:
        return w.full(np.nan)
    x = w.x
    return (x[:, -1] - x[:, -2] - x[:, 1] + x[:, 0]) / (2 * (w.length - 2))


@feature("variation_coefficient")
def _variation_coefficient(w: Windows) -> np.ndarray:
    return np.where(w.mean == 0, np.nan, w.std / w.mean)


@feature("count_above_mean")
def _count_above_mean(w: Windows) -> np.ndarray:
    return np.count_nonzero(w.x > w.mean[:, None], axis=1).astype(np.float64)


@feature("count_below_mean")
def _count_below_mean(w: Windows) -> np.ndarray:
    return np.count_nonzero(w.x < w.mean[:, None], axis=1).astype(np.float64)


def _longest_run(b: np.ndarray) -> np.ndarray:
    """Length of the longest run of True in each row (0 if none). A loop over the window's
    positions, each step vectorised across all windows: ~10x faster than cumulative-sum tricks,
    which need several (n, length) temporaries."""
    columns = np.ascontiguousarray(b.T)
    current = np.zeros(b.shape[0], dtype=np.int32)
    longest = np.zeros(b.shape[0], dtype=np.int32)
    for column in columns:
        current += 1
        current *= column
        np.maximum(longest, current, out=longest)
    return longest.astype(np.float64)


@feature("longest_strike_above_mean")
def _longest_strike_above_mean(w: Windows) -> np.ndarray:
    return _longest_run(w.x > w.mean[:, None])


@feature("longest_strike_below_mean")
def _longest_strike_below_mean(w: Windows) -> np.ndarray:
    return _longest_run(w.x < w.mean[:, None])


@feature("first_location_of_maximum")
def _first_location_of_maximum(w: Windows) -> np.ndarray:
    return np.argmax(w.x, axis=1) / w.length


@feature("last_location_of_maximum")
def _last_location_of_maximum(w: Windows) -> np.ndarray:
    return 1.0 - np.argmax(w.x[:, ::-1], axis=1) / w.length


@feature("first_location_of_minimum")
def _first_location_of_minimum(w: Windows) -> np.ndarray:
    return np.argmin(w.x, axis=1) / w.length


@feature("last_location_of_minimum")
def _last_location_of_minimum(w: Windows) -> np.ndarray:
    return 1.0 - np.argmin(w.x[:, ::-1], axis=1) / w.length


_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9)


@feature("quantile", [{"q": q} for q in _QUANTILES])
def _quantile(w: Windows, q: float) -> np.ndarray:
    return w.quantile(q)


_LINREG_ATTRS = ("pvalue", "rvalue", "intercept", "slope", "stderr")


def _linregress_rows(y: np.ndarray, ymean: np.ndarray | None = None,
                     yc: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``scipy.stats.linregress(range(m), row)`` for every row of ``y`` (n, m), same formulas and
    special cases: r clipped to [-1, 1], NaN r when both sums of squares vanish, zero stderr and a
    0/1 p-value for two points. ``ymean``/``yc`` (row means, centred rows) if already known."""
    n = y.shape[1]
    t = np.arange(n, dtype=np.float64)
    tmean = np.mean(t)
    tc = t - tmean
    if ymean is None or yc is None:
        ymean = np.mean(y, axis=1)
        yc = y - ymean[:, None]
    ssxm = np.dot(tc, tc) / n
    ssxym = (yc @ tc) / n
    ssym = np.einsum("ij,ij->i", yc, yc) / n
    if ssxm == 0.0:
        r = np.where(ssxym == 0, np.nan, 0.0)
    else:
        r = np.where(ssym == 0.0, np.where(ssxym == 0, np.nan, 0.0),
                     np.clip(ssxym / np.sqrt(ssxm * ssym), -1.0, 1.0))
    slope = ssxym / ssxm
    intercept = ymean - slope * tmean
    if n == 2:
        stderr = np.zeros(y.shape[0])
        pvalue = np.where(y[:, 0] == y[:, 1], 1.0, 0.0)
    else:
        df = n - 2
        stderr = np.sqrt((1 - r**2) * ssym / ssxm / df)
        pvalue = _t_two_sided_pvalue(r, df)
    return {"slope": slope, "intercept": intercept, "rvalue": r, "stderr": stderr, "pvalue": pvalue}


def _linregress(w: Windows) -> dict[str, np.ndarray]:
    def make() -> dict[str, np.ndarray]:
        return _linregress_rows(w.x, w.mean, w.centred)
    return w.memo("linregress", make)  # type: ignore[arg-type, return-value]


def _t_two_sided_pvalue(r: np.ndarray, df: int) -> np.ndarray:
    """scipy's p-value of a correlation r with ``df`` degrees of freedom (two-sided t-test)."""
    from scipy import special

    tiny = 1.0e-20
    if df <= 0:
        return np.full_like(r, np.nan)
    t = r * np.sqrt(df / ((1.0 - r + tiny) * (1.0 + r + tiny)))
    return 2 * special.stdtr(df, -np.abs(t))


@feature("linear_trend", [{"attr": a} for a in _LINREG_ATTRS])
def _linear_trend(w: Windows, attr: str) -> np.ndarray:
    if attr not in _LINREG_ATTRS:
        raise ValueError(f"linear_trend: attr must be one of {_LINREG_ATTRS}, got {attr!r}")
    return _linregress(w)[attr]


def _lag_products(w: Windows, lag: int) -> np.ndarray:
    """``sum((x[t] - mean) * (x[t + lag] - mean))`` per window."""
    def make() -> np.ndarray:
        c = w.centred
        return np.sum(c[:, : w.length - lag] * c[:, lag:], axis=1)
    return w.memo(("lag_products", lag), make)


@feature("autocorrelation", [{"lag": lag} for lag in range(10)])
def _autocorrelation(w: Windows, lag: int) -> np.ndarray:
    if w.length < lag:
        return w.full(np.nan)
    v = w.var
    value = _lag_products(w, lag) / ((w.length - lag) * v)
    return np.where(np.abs(v) <= 1e-8, np.nan, value)  # tsfresh: np.isclose(v, 0) -> NaN


def _acf(w: Windows) -> np.ndarray:
    """statsmodels' ``acf(x, adjusted=True)`` for all lags 0..length-1: lag products divided by
    (length - lag), over the lag-0 value. Products for all lags at once through one real FFT
    (zero-padded, so no wrap-around): O(L log L) per window instead of O(L^2); the rounding
    difference to the direct sums is ~1e-16 of the lag-0 sum."""
    def make() -> np.ndarray:
        n, c = w.length, w.centred
        if n <= 8:
            products = np.column_stack([np.einsum("ij,ij->i", c[:, k:], c[:, : n - k])
                                        for k in range(n)])
        else:
            size = 1 << (2 * n - 1).bit_length()
            spectrum = np.fft.rfft(c, size, axis=1)
            products = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, size, axis=1)[:, :n]
        products = products / (n - np.arange(n))
        return products / products[:, :1]
    return w.memo("acf", make)


_AGGS = {"mean": np.mean, "median": np.median, "var": np.var, "std": np.std}


@feature("agg_autocorrelation", [{"f_agg": f, "maxlag": 40} for f in ("mean", "median", "var")])
def _agg_autocorrelation(w: Windows, f_agg: str, maxlag: int) -> np.ndarray:
    """statsmodels' ``acf(x, adjusted=True)`` for lags 1..min(maxlag, length - 1), aggregated."""
    if f_agg not in _AGGS:
        raise ValueError(f"agg_autocorrelation: f_agg must be one of {sorted(_AGGS)}, got {f_agg!r}")
    n = w.length
    lags = min(maxlag, n - 1)
    if lags < 1:
        return w.full(0.0)
    flat = np.abs(w.var) < 1e-10  # tsfresh: a list of zeros instead of the acf
    acf = np.where(flat[:, None], 0.0, _acf(w)[:, 1: lags + 1])
    return _AGGS[f_agg](acf, axis=1)


@feature("number_crossing_m", [{"m": m} for m in (-1, 0, 1)])
def _number_crossing_m(w: Windows, m: float) -> np.ndarray:
    positive = w.x > m
    return np.count_nonzero(positive[:, 1:] != positive[:, :-1], axis=1).astype(np.float64)


@feature("ratio_beyond_r_sigma", [{"r": r} for r in (0.5, 1, 1.5, 2, 2.5, 3, 5, 6, 7, 10)])
def _ratio_beyond_r_sigma(w: Windows, r: float) -> np.ndarray:
    beyond = np.abs(w.centred) > (r * w.std)[:, None]
    return np.count_nonzero(beyond, axis=1) / w.length


@feature("c3", [{"lag": lag} for lag in (1, 2, 3)])
def _c3(w: Windows, lag: int) -> np.ndarray:
    n = w.length
    if 2 * lag >= n:
        return w.full(0.0)
    x = w.x
    return np.mean(x[:, 2 * lag:] * x[:, lag: n - lag] * x[:, : n - 2 * lag], axis=1)


@feature("cid_ce", [{"normalize": True}, {"normalize": False}])
def _cid_ce(w: Windows, normalize: bool) -> np.ndarray:
    if not normalize:
        d = w.diff
        return np.sqrt(np.einsum("ij,ij->i", d, d))
    s = w.std
    z = (w.x - w.mean[:, None]) / np.where(s != 0, s, 1.0)[:, None]
    d = np.diff(z, axis=1)
    return np.where(s != 0, np.sqrt(np.einsum("ij,ij->i", d, d)), 0.0)


# Values that occur more than once, from the sorted windows: a run of equal neighbours in sorted
# order is one repeated value.

def _repeat_starts(w: Windows) -> np.ndarray:
    """True at i where sorted[i] == sorted[i+1] and sorted[i-1] != sorted[i]: one per repeated value."""
    t = w.ties
    start = t.copy()
    start[:, 1:] &= ~t[:, :-1]
    return start


def _in_repeat(w: Windows) -> np.ndarray:
    """True at every sorted position whose value occurs more than once."""
    t = w.ties
    member = np.zeros(w.x.shape, dtype=bool)
    member[:, 1:] |= t
    member[:, :-1] |= t
    return member


@feature("percentage_of_reoccurring_values_to_all_values")
def _pct_reoccurring_values(w: Windows) -> np.ndarray:
    unique = w.length - np.count_nonzero(w.ties, axis=1)
    return np.count_nonzero(_repeat_starts(w), axis=1) / unique


@feature("percentage_of_reoccurring_datapoints_to_all_datapoints")
def _pct_reoccurring_datapoints(w: Windows) -> np.ndarray:
    return np.count_nonzero(_in_repeat(w), axis=1) / w.length


@feature("sum_of_reoccurring_values")
def _sum_of_reoccurring_values(w: Windows) -> np.ndarray:
    s = w.sorted[:, :-1]
    return np.sum(np.where(_repeat_starts(w), s, 0.0), axis=1)


@feature("sum_of_reoccurring_data_points")
def _sum_of_reoccurring_data_points(w: Windows) -> np.ndarray:
    return np.sum(np.where(_in_repeat(w), w.sorted, 0.0), axis=1)


@feature("ratio_value_number_to_time_series_length")
def _ratio_value_number(w: Windows) -> np.ndarray:
    return (w.length - np.count_nonzero(w.ties, axis=1)) / w.length


@feature("has_duplicate")
def _has_duplicate(w: Windows) -> np.ndarray:
    return np.any(w.ties, axis=1).astype(np.float64)


@feature("has_duplicate_max")
def _has_duplicate_max(w: Windows) -> np.ndarray:
    return (np.count_nonzero(w.x == w.max[:, None], axis=1) >= 2).astype(np.float64)


@feature("has_duplicate_min")
def _has_duplicate_min(w: Windows) -> np.ndarray:
    return (np.count_nonzero(w.x == w.min[:, None], axis=1) >= 2).astype(np.float64)


def _moments(w: Windows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central moment sums m2, m3, m4 for tsfresh's skewness and kurtosis
    (``pd.Series.skew``/``kurtosis``). Two passes over the values minus each window's first
    value: the shift is exact (Sterbenz), so a nearly constant window (one 1e-13 spike on 100)
    keeps its digits; pandas gets there with a one-pass update, and both agree to ~1e-15."""
    def make() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shifted = w.x - w.x[:, :1]
        c = shifted - np.mean(shifted, axis=1)[:, None]
        c2 = c * c
        m2 = np.sum(c2, axis=1)
        m3 = np.einsum("ij,ij->i", c2, c)
        m4 = np.einsum("ij,ij->i", c2, c2)
        return m2, m3, m4
    return w.memo("moments", make)  # type: ignore[arg-type, return-value]


@feature("skewness")
def _skewness(w: Windows) -> np.ndarray:
    n = float(w.length)
    if w.length < 3:
        return w.full(np.nan)
    m2, m3, _ = _moments(w)
    return m3 / (m2 * np.sqrt(m2)) * ((n * np.sqrt(n - 1.0)) / (n - 2.0))


@feature("kurtosis")
def _kurtosis(w: Windows) -> np.ndarray:
    n = float(w.length)
    if w.length < 4:
        return w.full(np.nan)
    m2, _, m4 = _moments(w)
    inner = n * (n + 1.0) * (m4 / (m2 * m2)) - 3.0 * (n - 1.0)
    return (n - 1.0) / ((n - 2.0) * (n - 3.0)) * inner


_CHANGE_AGGS = ("mean", "var", "std", "median")


@feature("change_quantiles", [{"ql": ql, "qh": qh, "isabs": b, "f_agg": f}
                              for ql in (0.0, 0.2, 0.4, 0.6, 0.8) for qh in (0.2, 0.4, 0.6, 0.8, 1.0)
                              for b in (False, True) for f in ("mean", "var") if ql < qh])
def _change_quantiles(w: Windows, ql: float, qh: float, isabs: bool, f_agg: str) -> np.ndarray:
    """Aggregate of the changes whose both ends lie in the corridor [quantile(ql), quantile(qh)]
    (pandas ``qcut`` with ``include_lowest``); 0 when there is none."""
    if f_agg not in _CHANGE_AGGS:
        raise ValueError(f"change_quantiles: f_agg must be one of {_CHANGE_AGGS}, got {f_agg!r}")
    if ql >= qh or w.length < 2:
        return w.full(0.0)
    lo, hi = w.quantile(ql), w.quantile(qh)
    inside = (w.x >= lo[:, None]) & (w.x <= hi[:, None])
    both = inside[:, 1:] & inside[:, :-1]
    count = np.count_nonzero(both, axis=1)
    div = np.abs(w.diff) if isabs else w.diff
    if f_agg == "median":
        with warnings.catch_warnings():  # rows without a change inside: handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            value = np.nanmedian(np.where(both, div, np.nan), axis=1)
    else:
        mean = np.sum(np.where(both, div, 0.0), axis=1) / count
        if f_agg == "mean":
            value = mean
        else:
            dev = np.where(both, div - mean[:, None], 0.0)
            value = np.sum(dev * dev, axis=1) / count
            if f_agg == "std":
                value = np.sqrt(value)
    return np.where(count == 0, 0.0, value)


@feature("index_mass_quantile", [{"q": q} for q in _QUANTILES])
def _index_mass_quantile(w: Windows, q: float) -> np.ndarray:
    def make() -> tuple[np.ndarray, np.ndarray]:
        a = np.abs(w.x)
        total = np.sum(a, axis=1)
        return np.cumsum(a, axis=1) / total[:, None], total
    mass, total = w.memo("mass", make)  # type: ignore[misc]
    value = (np.argmax(mass >= q, axis=1) + 1) / w.length
    return np.where(total == 0, np.nan, value)


@feature("energy_ratio_by_chunks", [{"num_segments": 10, "segment_focus": i} for i in range(10)])
def _energy_ratio_by_chunks(w: Windows, num_segments: int, segment_focus: int) -> np.ndarray:
    if not 0 <= segment_focus < num_segments:
        raise ValueError("energy_ratio_by_chunks: need 0 <= segment_focus < num_segments")
    full = w.memo("sum_of_squares", lambda: np.sum(w.square, axis=1))
    size, extra = divmod(w.length, num_segments)  # np.array_split: the first `extra` get one more
    start = segment_focus * size + min(segment_focus, extra)
    stop = start + size + (1 if segment_focus < extra else 0)
    part = np.sum(w.square[:, start:stop], axis=1)
    return np.where(full == 0, np.nan, part / full)


@feature("number_peaks", [{"n": n} for n in (1, 3, 5, 10, 50)])
def _number_peaks(w: Windows, n: int) -> np.ndarray:
    L = w.length
    if L <= 2 * n:
        return w.full(0.0)
    x = w.x
    centre = x[:, n: L - n]
    peak = np.ones(centre.shape, dtype=bool)
    for i in range(1, n + 1):
        peak &= centre > x[:, n - i: L - n - i]
        peak &= centre > x[:, n + i: L - n + i]
    return np.count_nonzero(peak, axis=1).astype(np.float64)


@feature("time_reversal_asymmetry_statistic", [{"lag": lag} for lag in (1, 2, 3)])
def _time_reversal_asymmetry_statistic(w: Windows, lag: int) -> np.ndarray:
    L = w.length
    if 2 * lag >= L:
        return w.full(0.0)
    x = w.x[:, : L - 2 * lag]
    one = w.x[:, lag: L - lag]
    two = w.x[:, 2 * lag:]
    return np.mean(two * two * one - one * x * x, axis=1)


@feature("mean_n_absolute_max", [{"number_of_maxima": k} for k in (3, 5, 7)])
def _mean_n_absolute_max(w: Windows, number_of_maxima: int) -> np.ndarray:
    if number_of_maxima < 1:
        raise ValueError("mean_n_absolute_max: number_of_maxima must be >= 1")
    if w.length <= number_of_maxima:
        return w.full(np.nan)
    top = w.memo("sorted_abs", lambda: np.sort(np.abs(w.x), axis=1))
    return np.mean(top[:, -number_of_maxima:], axis=1)


@feature("count_above", [{"t": 0}])
def _count_above(w: Windows, t: float) -> np.ndarray:
    return np.count_nonzero(w.x >= t, axis=1) / w.length


@feature("count_below", [{"t": 0}])
def _count_below(w: Windows, t: float) -> np.ndarray:
    return np.count_nonzero(w.x <= t, axis=1) / w.length


@feature("value_count", [{"value": v} for v in (0, 1, -1)])
def _value_count(w: Windows, value: float) -> np.ndarray:
    if np.isnan(value):  # windows with NaN give NaN anyway
        return w.full(0.0)
    return np.count_nonzero(w.x == value, axis=1).astype(np.float64)


@feature("range_count", [{"min": -1, "max": 1}, {"min": -1e12, "max": 0}, {"min": 0, "max": 1e12}])
def _range_count(w: Windows, min: float, max: float) -> np.ndarray:  # noqa: A002 (tsfresh's names)
    return np.count_nonzero((w.x >= min) & (w.x < max), axis=1).astype(np.float64)


@feature("large_standard_deviation", [{"r": r * 0.05} for r in range(1, 20)])
def _large_standard_deviation(w: Windows, r: float) -> np.ndarray:
    return (w.std > r * (w.max - w.min)).astype(np.float64)


@feature("variance_larger_than_standard_deviation")
def _variance_larger_than_standard_deviation(w: Windows) -> np.ndarray:
    return (w.var > np.sqrt(w.var)).astype(np.float64)


@feature("symmetry_looking", [{"r": r * 0.05} for r in range(20)])
def _symmetry_looking(w: Windows, r: float) -> np.ndarray:
    return (np.abs(w.mean - _median(w)) < r * (w.max - w.min)).astype(np.float64)


_FFT_ATTRS = ("real", "imag", "abs", "angle")


def _rfft(w: Windows) -> np.ndarray:
    return w.memo("rfft", lambda: np.fft.rfft(w.x, axis=1))


@feature("fft_coefficient", [{"coeff": k, "attr": a} for a in _FFT_ATTRS for k in range(100)])
def _fft_coefficient(w: Windows, coeff: int, attr: str) -> np.ndarray:
    if attr not in _FFT_ATTRS or coeff < 0:
        raise ValueError(f"fft_coefficient: attr must be one of {_FFT_ATTRS} and coeff >= 0")
    spectrum = _rfft(w)
    if coeff >= spectrum.shape[1]:
        return w.full(np.nan)
    c = spectrum[:, coeff]
    if attr == "real":
        return c.real.copy()
    if attr == "imag":
        return c.imag.copy()
    if attr == "abs":
        return np.abs(c)
    return np.angle(c, deg=True)


@feature("fft_aggregated", [{"aggtype": a} for a in ("centroid", "variance", "skew", "kurtosis")])
def _fft_aggregated(w: Windows, aggtype: str) -> np.ndarray:
    """Moments of the amplitude spectrum, with tsfresh's formulas as they are (its kurtosis
    subtracts ``3 * centroid`` where the textbook has ``3 * centroid**4``)."""
    y = w.memo("fft_abs", lambda: np.abs(_rfft(w)))
    total = np.sum(y, axis=1)
    k = np.arange(y.shape[1], dtype=float)

    def moment(p: int) -> np.ndarray:
        return (y @ k**p) / total

    centroid = moment(1)
    variance = moment(2) - centroid**2
    if aggtype == "centroid":
        return centroid
    if aggtype == "variance":
        return variance
    if aggtype == "skew":
        value = (moment(3) - 3 * centroid * variance - centroid**3) / variance**1.5
    elif aggtype == "kurtosis":
        value = (moment(4) - 4 * centroid * moment(3) + 6 * moment(2) * centroid**2
                 - 3 * centroid) / variance**2
    else:
        raise ValueError(f"fft_aggregated: unknown aggtype {aggtype!r}")
    return np.where(variance < 0.5, np.nan, value)


@feature("binned_entropy", [{"max_bins": 10}])
def _binned_entropy(w: Windows, max_bins: int) -> np.ndarray:
    """Entropy of ``np.histogram(x, bins=max_bins)``, with numpy's own bin assignment (edges by
    ``linspace``, then the same off-by-one corrections). Where the value range is too narrow for
    ``max_bins`` distinct float edges (e.g. 1e9 + 1e-6 noise) numpy, and so tsfresh, raises
    "Too many bins for data range"; that window gets NaN here."""
    lo, hi = w.min.copy(), w.max.copy()
    flat = lo == hi
    lo[flat] -= 0.5
    hi[flat] += 0.5
    edges = np.linspace(lo, hi, max_bins + 1, axis=1)
    degenerate = np.any(edges[:, :-1] >= edges[:, 1:], axis=1)
    f = ((w.x - lo[:, None]) / (hi - lo)[:, None]) * max_bins
    idx = f.astype(np.intp)
    idx[idx == max_bins] -= 1
    idx -= w.x < np.take_along_axis(edges, idx, axis=1)
    up = (w.x >= np.take_along_axis(edges, idx + 1, axis=1)) & (idx != max_bins - 1)
    idx += up
    rows = np.arange(w.n)[:, None]
    hist = np.bincount((rows * max_bins + idx).ravel(), minlength=w.n * max_bins)
    p = hist.reshape(w.n, max_bins) / w.length
    p[p == 0] = 1.0
    return np.where(degenerate, np.nan, -np.sum(p * np.log(p), axis=1))


_CHUNK_AGGS = ("max", "min", "mean", "var")


@feature("agg_linear_trend", [{"attr": a, "chunk_len": c, "f_agg": f}
                              for a in ("rvalue", "intercept", "slope", "stderr")
                              for c in (5, 10, 50) for f in _CHUNK_AGGS])
def _agg_linear_trend(w: Windows, attr: str, chunk_len: int, f_agg: str) -> np.ndarray:
    """Linear fit over chunk aggregates (the last chunk may be shorter, as in tsfresh)."""
    if attr not in _LINREG_ATTRS or f_agg not in _CHUNK_AGGS or chunk_len < 1:
        raise ValueError(f"agg_linear_trend: attr in {_LINREG_ATTRS}, f_agg in {_CHUNK_AGGS}, "
                         "chunk_len >= 1")
    if chunk_len >= w.length:
        return w.full(np.nan)

    def make() -> dict[str, np.ndarray]:
        agg = getattr(np, f_agg)
        whole = w.length // chunk_len * chunk_len
        parts = [agg(w.x[:, :whole].reshape(w.n, -1, chunk_len), axis=2)]
        if whole < w.length:
            parts.append(agg(w.x[:, whole:], axis=1)[:, None])
        return _linregress_rows(np.concatenate(parts, axis=1))
    return w.memo(("agg_linear_trend", chunk_len, f_agg), make)[attr]  # type: ignore[index]
