"""Family models: scikit-learn novelty detectors over entities' feature vectors, calibrated, with peers.

All entities of a *family* (all worker nodes, all units, all hosts of a Zabbix group) share one
model trained on their normal history, so peers teach each other what normal looks like and a new
node needs no history of its own. A model is a small pipeline:

1. impute: a feature that is NaN (e.g. the autocorrelation of a constant window) takes its
   training median (z = 0);
2. robust scaling: (x - median) / MAD-sigma per feature, fitted on training data, so metrics in
   different units weigh alike and a few training outliers do not set the scale;
3. three parts, each calibrated (``scoring.Calibrator``) on training rows that behave like new
   normal data: a novelty detector from ``MODELS`` (IsolationForest by default: no distribution
   assumption, cheap, robust to irrelevant features; in-sample for it, out-of-fold for the other
   kinds, see ``train``); the largest |robust z| of the row (values beyond the training range,
   which a forest cannot score higher than its most extreme training value); and the cross-metric
   part (``correlation``: T² along and SPE off the usual correlations of the features);
4. their surprises added and that sum calibrated once more on the training rows, so that 0.99
   means "more anomalous than 99 % of normal history" for the model as a whole.

Peer comparison: at one time, each entity's features as robust z-scores against the other entities
(median and MAD across the family; the MAD never below how far entities normally deviate from their
peers, learned in training), the statistic being the largest |z|; calibrated the same way on
the training period when it had at least ``MIN_PEERS`` entities. The entity's score is the sum of
model and peer surprises calibrated on the training period (``FamilyModel.combined``), so the
false-alarm rate of the threshold ``1 - target_false_alarm`` holds for the combination too.

Every score comes with an ``Explanation``: the features with the largest |robust z| against normal
history and against the peers, grouped by metric.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from farmwatch.detect.correlation import Correlations
from farmwatch.detect.frames import split_column
from farmwatch.detect.scoring import Calibrator, combine, negligible, robust_center_scale, score_of

MIN_PEERS = 3
PEER_FLOOR = 0.1  # peer scale never below this fraction of the feature's training scale either
FOLDS = 3
FOLD_CHUNKS = 30
MAX_FIT_ROWS = 10_000
MIN_CALIBRATION_ROWS = 50  # rows with model and peers for their joint calibration

MODELS: dict[str, Callable[..., Any]] = {}


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add a model kind: ``factory(random_state, **params)`` returns an unfitted estimator with
    ``fit`` and ``score_samples`` (higher = more normal), as scikit-learn's novelty detectors have."""

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        MODELS[name] = factory
        return factory

    return deco


@register_model("isolation_forest")
def _isolation_forest(random_state: int, **params: Any) -> Any:
    from sklearn.ensemble import IsolationForest

    return IsolationForest(**{"n_estimators": 100, "random_state": random_state, **params})


@register_model("lof")
def _lof(random_state: int, **params: Any) -> Any:
    from sklearn.neighbors import LocalOutlierFactor

    return LocalOutlierFactor(**{"n_neighbors": 35, "novelty": True, **params})


@register_model("ocsvm")
def _ocsvm(random_state: int, **params: Any) -> Any:
    from sklearn.svm import OneClassSVM

    return OneClassSVM(**{"nu": 0.05, "gamma": "scale", **params})


@register_model("elliptic_envelope")
def _elliptic(random_state: int, **params: Any) -> Any:
    from sklearn.covariance import EllipticEnvelope

    return EllipticEnvelope(**{"random_state": random_state, "support_fraction": 0.9, **params})


# -- explanations ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Contribution:
    """One feature's part in a score: its value, what is normal, and how far off it is."""

    metric: str
    feature: str
    value: float
    normal: float
    z_normal: float
    peers: float | None = None
    z_peers: float | None = None

    @property
    def strength(self) -> float:
        return max(abs(self.z_normal), abs(self.z_peers or 0.0))


@dataclass
class Explanation:
    """Why an entity scored what it scored, small enough for a chat message."""

    entity: str
    score: float
    model_score: float
    peer_score: float | None
    threshold: float
    contributions: list[Contribution] = field(default_factory=list)
    surprise: float = float("nan")   # -log10 of 1 - score: 2 at 0.99, 3 at 0.999 (never infinite)

    @property
    def anomalous(self) -> bool:
        return self.score >= self.threshold

    @property
    def metrics(self) -> list[str]:
        """Metrics by their strongest contribution, most anomalous first."""
        seen: dict[str, None] = {}
        for c in self.contributions:
            seen.setdefault(c.metric, None)
        return list(seen)

    def markdown(self, limit: int = 3) -> str:
        """A few lines for Rocket.Chat: the score, then the top features with value vs normal/peers."""
        peer = "" if self.peer_score is None else f", peers {self.peer_score:.3f}"
        lines = [f"**{self.entity}** anomaly score {self.score:.3f} (model {self.model_score:.3f}{peer}; "
                 f"1 in {_odds(self.surprise)} of normal windows)"]
        for c in self.contributions[:limit]:
            text = f"- `{c.metric}` {c.feature} = {_num(c.value)} (normal {_num(c.normal)}, z {c.z_normal:+.1f}"
            if c.z_peers is not None:
                text += f"; peers {_num(c.peers)}, z {c.z_peers:+.1f}"
            lines.append(text + ")")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "score": self.score, "surprise": self.surprise, "model_score": self.model_score,
                "peer_score": self.peer_score, "threshold": self.threshold, "anomalous": self.anomalous,
                "contributions": [c.__dict__ for c in self.contributions]}


def _odds(surprise: float) -> str:
    """"1 in <this>": 10^surprise, rounded to what a reader needs."""
    if not math.isfinite(surprise):
        return "?"
    odds = 10.0 ** surprise
    return f"{odds:,.0f}" if odds < 1e6 else f"10^{surprise:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"


# -- the model ------------------------------------------------------------------------------------
@dataclass
class FamilyModel:
    """A trained, calibrated model of one family; ``persist.save``/``load`` keep it on disk."""

    family: str
    kind: str
    metrics: tuple[str, ...]
    features: tuple[str, ...]
    columns: tuple[str, ...]
    window: int
    step: int
    estimator: Any
    center: np.ndarray
    scale: np.ndarray
    calibrator: Calibrator
    peer_calibrator: Calibrator | None = None
    range_calibrator: Calibrator | None = None
    joint_calibrator: Calibrator | None = None
    correlations: Correlations | None = None
    t2_calibrator: Calibrator | None = None
    spe_calibrator: Calibrator | None = None
    total_calibrator: Calibrator | None = None
    peer_scale: np.ndarray | None = None
    target_false_alarm: float = 0.01
    trained: dict[str, Any] = field(default_factory=dict)
    ignored: np.ndarray | None = None

    @property
    def threshold(self) -> float:
        """The calibrated score above which about ``target_false_alarm`` of normal windows lie."""
        return 1.0 - self.target_false_alarm

    def z(self, X: np.ndarray) -> np.ndarray:
        """Robust z-scores against the training distribution (NaN features imputed to 0 = median)."""
        Z = (np.asarray(X, dtype=np.float64) - self.center) / self.scale
        Z = np.nan_to_num(Z, nan=0.0, posinf=1e6, neginf=-1e6).clip(-1e6, 1e6)
        if self.ignored is not None and self.ignored.any():
            Z[..., self.ignored] = 0.0
        return Z

    def raw(self, X: np.ndarray) -> np.ndarray:
        """The detector's raw statistic (larger = more anomalous) for feature rows ``X``."""
        if len(X) == 0:
            return np.empty(0)
        return -self.estimator.score_samples(self.z(X))

    def surprise(self, X: np.ndarray) -> np.ndarray:
        """Calibrated model surprises (``-log10 p``) for feature rows ``X`` (no peers).

        The detector's, the largest |z|'s and the cross-metric parts' surprises added, the sum
        calibrated on the training rows (the parts are correlated, so the sum is calibrated as it
        is rather than by a formula that assumes independence). Why the largest |z|:
        IsolationForest scores a value beyond the training range no higher than the most extreme
        training value (its splits are drawn within the training range), so a window with, say,
        zero variance where training never had less than some would look only mildly odd to it.
        """
        if len(X) == 0:
            return np.empty(0)
        total = self._parts(self.raw(X), self.z(X))
        return total if self.joint_calibrator is None else self.joint_calibrator.surprise(total)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Calibrated model scores in [0, 1) for feature rows ``X`` (no peers): ``1 - p``."""
        return score_of(self.surprise(X))

    def _parts(self, raw: np.ndarray, Z: np.ndarray, corr: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        total = self.calibrator.surprise(raw)
        if self.range_calibrator is not None:
            total = total + self.range_calibrator.surprise(np.max(np.abs(Z), axis=1))
        if self.correlations is not None and self.t2_calibrator is not None:
            t2, spe = self.correlations.parts(Z) if corr is None else corr
            total = total + self.t2_calibrator.surprise(t2)
            if self.spe_calibrator is not None:
                total = total + self.spe_calibrator.surprise(spe)
        return total

    def calibrate(self, raw: np.ndarray, Z: np.ndarray, random_state: int = 0,
                  folds: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
        """Fit the parts' calibrations and the joint one from the detector's raw statistic on
        normal rows and their robust z-scores ``Z``.

        The cross-metric part is calibrated on out-of-fold rows when ``folds`` (held-out block,
        rest) are given: a principal subspace fitted to a few hundred rows of dozens of features
        fits those rows far better than new ones, and in-sample calibration then flags normal
        windows (seen in the demo, trained on seven minutes). Returns the model surprises of the
        rows as new rows would get them (for the calibration of model and peers together).
        """
        self.calibrator = Calibrator.fit(raw)
        self.range_calibrator = Calibrator.fit(np.max(np.abs(Z), axis=1))
        self.correlations = Correlations.fit(Z, random_state=random_state)
        corr = None
        if self.correlations is not None:
            t2, spe = self.correlations.parts(Z)
            for block, rest in folds or ():
                held = Correlations.fit(Z[rest], random_state=random_state)
                if held is not None:
                    t2[block], spe[block] = held.parts(Z[block])
            corr = (t2, spe)
            self.t2_calibrator = Calibrator.fit(t2)
            self.spe_calibrator = Calibrator.fit(spe) if self.correlations.has_residual else None
        parts = self._parts(raw, Z, corr)
        self.joint_calibrator = Calibrator.fit(parts)
        return self.joint_calibrator.surprise(parts)

    def combined(self, model: np.ndarray, peer: np.ndarray | None) -> np.ndarray:
        """Model and peer surprises together: their sum calibrated on the training period (the two
        see the same anomaly, so a formula for independent parts would overstate agreement);
        Fisher's formula when the model has no such calibration."""
        if peer is None:
            return model
        if self.total_calibrator is None:
            return combine(model, peer)
        return self.total_calibrator.surprise(model + peer)

    def peer_z(self, X: np.ndarray) -> np.ndarray | None:
        """Robust z of each row against all rows (the family at one time); None with too few peers."""
        if len(X) < MIN_PEERS:
            return None
        return peer_z(X, PEER_FLOOR * self.scale if self.peer_scale is None else self.peer_scale)

    def score_entities(self, X: np.ndarray, entities: Sequence[str], top: int = 5) -> list[Explanation]:
        """Score the family at one time: ``X`` holds one feature row per entity (same order as ``entities``).

        Model and peer scores are combined when there are enough peers and the model was trained
        with peers; each result explains itself.
        """
        X = np.asarray(X, dtype=np.float64)
        model = self.surprise(X)
        pz = self.peer_z(X)
        peer = None
        if pz is not None and self.peer_calibrator is not None:
            peer = self.peer_calibrator.surprise(np.max(np.abs(pz), axis=1))
        total = self.combined(model, peer)
        zn = self.z(X)
        peer_median = None
        if pz is not None:
            with warnings.catch_warnings():  # a feature NaN for every peer (constant windows): NaN, no warning
                warnings.simplefilter("ignore", RuntimeWarning)
                peer_median = np.nanmedian(X, axis=0)
        out = []
        for i, entity in enumerate(entities):
            out.append(Explanation(
                entity=str(entity), score=float(score_of(total[i])), model_score=float(score_of(model[i])),
                peer_score=None if peer is None else float(score_of(peer[i])), threshold=self.threshold,
                contributions=self._contributions(X[i], zn[i], None if pz is None else pz[i], peer_median, top),
                surprise=float(total[i])))
        return out

    def explain(self, x: np.ndarray, entity: str = "", top: int = 5) -> Explanation:
        """Explanation of one feature row against normal history only."""
        x = np.asarray(x, dtype=np.float64).reshape(1, -1)
        surprise = float(self.surprise(x)[0])
        s = float(score_of(surprise))
        return Explanation(str(entity), s, s, None, self.threshold,
                           self._contributions(x[0], self.z(x)[0], None, None, top), surprise)

    def _contributions(self, x: np.ndarray, zn: np.ndarray, zp: np.ndarray | None,
                       peer_median: np.ndarray | None, top: int) -> list[Contribution]:
        strength = np.abs(zn) if zp is None else np.maximum(np.abs(zn), np.abs(zp))
        order = np.argsort(-strength, kind="stable")[:top]
        out = []
        for j in order:
            metric, feature = split_column(self.columns[j])
            out.append(Contribution(
                metric=metric, feature=feature, value=float(x[j]), normal=float(self.center[j]),
                z_normal=float(zn[j]),
                peers=None if peer_median is None else float(peer_median[j]),
                z_peers=None if zp is None else float(zp[j])))
        return out


def peer_z(X: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Robust z of each row of ``X`` (entities at one time) against the median of all rows.

    The scale is the peers' MAD now, but never below ``floor``: how far entities normally
    deviate from their peers on that feature (learned in training). Peers that happen to agree
    exactly (a count that is 0 on most nodes) would otherwise turn any difference into z = 1e9.
    """
    center, scale = robust_center_scale(X, axis=0, floor=floor)
    return np.nan_to_num((X - center) / scale, nan=0.0).clip(-1e6, 1e6)


def train(
    X: np.ndarray,
    columns: Sequence[str],
    *,
    family: str = "",
    metrics: Sequence[str] | None = None,
    features: Sequence[str] = (),
    window: int = 0,
    step: int = 1,
    times: np.ndarray | None = None,
    entities: np.ndarray | None = None,
    kind: str = "isolation_forest",
    params: dict[str, Any] | None = None,
    target_false_alarm: float = 0.01,
    random_state: int = 0,
    trained: dict[str, Any] | None = None,
    calibration: str = "auto",
    constant: str = "flag",
) -> FamilyModel:
    """Fit and calibrate a family model on normal feature rows ``X`` (n_rows, n_columns).

    ``times`` (one per row; rows of several entities may share a time) orders the rows for
    time-blocked calibration folds and, together with ``entities``, lets the peer comparison be
    calibrated on the same period. Without ``times`` the rows are taken to be in time order.

    ``calibration``: ``"insample"`` calibrates on the fitted model's own training scores, right
    for IsolationForest (each tree sees 256 random rows, so a row barely influences its own score;
    held-out normal data then scores uniformly, see the tests); ``"folds"``: ``FOLDS`` folds of
    time chunks give out-of-fold scores (needed for LOF, one-class SVM, elliptic envelope, which
    fit their training rows closely), then the model is refitted on everything. ``"auto"`` picks
    by ``kind``.

    ``constant``: what a feature that never varied in training means later. ``"flag"`` (services):
    any other value is far outside normal (an error counter that was always 0 now is not); the
    model says so for as long as it lasts. ``"ignore"``: the feature is left out of the model (the
    API functions, which flag the change itself with their point statistics and must not flag
    every point after it).
    """
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(sorted(MODELS))}")
    if not 0.0 < target_false_alarm < 1.0:
        raise ValueError(f"target_false_alarm must be in (0, 1), not {target_false_alarm!r}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(columns) or len(X) < 2:
        raise ValueError(f"need at least 2 feature rows with {len(columns)} columns, got shape {X.shape}")
    X = np.where(np.isfinite(X), X, np.nan)
    center, mad = robust_center_scale(X, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN feature (constant windows): std 0
        std = np.nan_to_num(np.nanstd(X, axis=0), nan=0.0)
    # MAD is zero for a feature that is mostly constant but not always (counts, strikes): fall back
    # to the standard deviation so its rare values do not become z = 1e9.
    scale = np.where(mad > negligible(center), mad, np.maximum(std, mad))
    if constant not in ("flag", "ignore"):
        raise ValueError(f"constant must be 'flag' or 'ignore', not {constant!r}")
    model = FamilyModel(
        family=family, kind=kind, metrics=tuple(metrics or sorted({split_column(c)[0] for c in columns})),
        features=tuple(features), columns=tuple(columns), window=int(window), step=int(step),
        estimator=None, center=center, scale=scale, calibrator=Calibrator.fit(np.zeros(1)),
        target_false_alarm=float(target_false_alarm), trained=dict(trained or {}),
        ignored=(std <= negligible(center)) if constant == "ignore" else None)
    Z = model.z(X)
    order = np.argsort(times, kind="stable") if times is not None else np.arange(len(X))
    rng = np.random.default_rng(random_state)
    params = params or {}

    def fit(rows: np.ndarray) -> Any:
        if len(rows) > MAX_FIT_ROWS:
            rows = rng.choice(rows, MAX_FIT_ROWS, replace=False)
        return MODELS[kind](random_state, **params).fit(Z[rows])

    if calibration == "auto":
        calibration = "insample" if kind == "isolation_forest" else "folds"
    if calibration not in ("insample", "folds"):
        raise ValueError(f"calibration must be 'auto', 'insample' or 'folds', not {calibration!r}")
    model.estimator = fit(np.arange(len(X)))
    folds = None
    if len(X) >= FOLDS * 20:
        # Folds of contiguous time chunks dealt to folds at random: each fold spans the whole
        # period, and overlapping windows leak only at chunk edges. (Round-robin dealing can put
        # the same phase of every cycle into one fold, which makes calibration pessimistic.)
        chunks = np.array_split(order, min(FOLD_CHUNKS, len(X) // 20))
        fold_of = rng.permutation(np.arange(len(chunks)) % FOLDS)
        folds = []
        for k in range(FOLDS):
            block = np.concatenate([c for c, f in zip(chunks, fold_of) if f == k])
            folds.append((block, np.setdiff1d(order, block, assume_unique=True)))
    if calibration == "insample" or folds is None:
        oof = -model.estimator.score_samples(Z)
    else:
        oof = np.empty(len(X))
        for block, rest in folds:
            oof[block] = -fit(rest).score_samples(Z[block])
    model_surprise = model.calibrate(oof, Z, random_state, folds)
    if times is not None and entities is not None:
        peers = _peer_calibration(X, np.asarray(times), np.asarray(entities), scale)
        if peers is not None:
            model.peer_calibrator, model.peer_scale, peer_stat = peers
            both = np.isfinite(peer_stat)
            if both.sum() >= MIN_CALIBRATION_ROWS:
                peer_surprise = model.peer_calibrator.surprise(peer_stat[both])
                model.total_calibrator = Calibrator.fit(model_surprise[both] + peer_surprise)
    model.trained.setdefault("n_samples", int(len(X)))
    if entities is not None:
        model.trained.setdefault("n_entities", int(len(set(np.asarray(entities).tolist()))))
    return model


def _peer_calibration(X: np.ndarray, times: np.ndarray, entities: np.ndarray,
                      train_scale: np.ndarray) -> tuple[Calibrator, np.ndarray, np.ndarray] | None:
    """How far entities normally deviate from their peers (per feature), the calibration of the
    peer statistic (largest |peer z|) over the training period, and that statistic per row of
    ``X`` (NaN where its time had too few peers).

    Rows are laid out as a (time, entity, feature) cube, NaN where an entity has no row at a
    time, so the medians across peers are computed for all times at once.
    """
    t_idx = np.unique(times, return_inverse=True)[1]
    e_idx = np.unique(entities, return_inverse=True)[1]
    cube = np.full((t_idx.max() + 1, e_idx.max() + 1, X.shape[1]), np.nan)
    cube[t_idx, e_idx] = X
    present = np.isfinite(cube).any(axis=2)
    enough = present.sum(axis=1) >= MIN_PEERS
    if not enough.any():
        return None
    cube = cube[enough]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features
        deviation = (cube - np.nanmedian(cube, axis=1, keepdims=True))[present[enough]]
        _, dev_scale = robust_center_scale(deviation, axis=0)
        dev_std = np.nan_to_num(np.nanstd(deviation, axis=0), nan=0.0)
    tiny = PEER_FLOOR * train_scale
    floor = np.where(dev_scale > tiny, dev_scale, np.maximum(dev_std, tiny))
    center, scale = robust_center_scale(cube, axis=1, floor=floor)
    z = np.abs((cube - center[:, None, :]) / scale[:, None, :])
    stat = np.nanmax(np.nan_to_num(z, nan=0.0), axis=2)  # (times with enough peers, entity)
    per_time = np.full(present.shape, np.nan)
    per_time[enough] = np.where(present[enough], stat, np.nan)
    return Calibrator.fit(stat[present[enough]]), floor, per_time[t_idx, e_idx]
