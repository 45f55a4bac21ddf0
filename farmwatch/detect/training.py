"""Training family models from the store: ``[detect]`` settings, normal periods, frames per entity.

A family is declared in the config::

    [detect]
    models = "models"                     # folder for <family>.joblib + .json, relative to the config
    [detect.families.worker]
    series = ["hlt.output.processed_events:rate", "hlt.worker.cpu"]   # one metric per series name (globs allowed)
    match = ["unit=~hlt0[1-4]"]           # label matchers, as in rules and `farmwatch query`
    entity = ["unit", "host"]             # the labels that identify one entity
    window = 60                           # points of the grid per window
    step = 5
    freq = "10s"                          # entities are resampled onto this grid (peers need one clock)

Only normal history is learned from: a window is left out when any of its points falls in a period
with a firing alert (from the alert history in the same store) or with a run state (series
``daq.run_state``) other than RUNNING, when the store has that series.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from farmwatch.detect import features as feats
from farmwatch.detect.models import MODELS

RUN_STATE = "daq.run_state"


class FamilySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    series: list[str] = Field(min_length=1)
    """Series names (globs) whose values are the metrics of each entity, e.g. `hlt.output.sent_events:rate`."""
    match: list[str] = Field(default_factory=list)
    """Label matchers restricting the series (`app=distributor`, `host!=`)."""
    entity: list[str] = Field(min_length=1)
    """Labels that name an entity (e.g. `["unit", "host"]`: one worker node); peers share the other labels."""
    window: int = Field(default=60, ge=3)
    """Points per feature window (at `freq`)."""
    step: int = Field(default=1, ge=1)
    """Points between training windows."""
    freq: str = "10s"
    """The grid the series are resampled to (pandas offset)."""
    kind: str = "isolation_forest"
    """Model kind: `isolation_forest`, `lof`, `ocsvm`, `elliptic_envelope` (or one registered with `register_model`)."""
    features: list[str] = Field(default_factory=lambda: list(feats.DEFAULT_FEATURES))
    """tsfresh feature names computed per metric window; default `farmwatch.detect.features.DEFAULT_FEATURES` (docs/features.md)."""
    target_false_alarm: float = Field(default=0.01, gt=0, lt=1)
    """False-alarm rate on normal history that sets the alert threshold (score >= 1 - rate)."""

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in MODELS:
            raise ValueError(f"{kind!r} is not a model kind (known: {', '.join(sorted(MODELS))})")
        return kind

    @field_validator("features")
    @classmethod
    def _supported(cls, features: list[str]) -> list[str]:
        unknown = sorted(set(features) - set(feats.supported()))
        if unknown:
            raise ValueError(f"unsupported features: {', '.join(unknown)} (see farmwatch.detect.features.supported())")
        return features


class DetectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    models: Path = Path("models")
    """Folder of the trained models (relative to the config file)."""
    families: dict[str, FamilySettings] = Field(default_factory=dict)
    """The model families by name."""


def metric_name(series: str) -> str:
    """The metric column of a series: its name (``hlt.worker.cpu``)."""
    return series


def entity_frames(store: Any, fam: FamilySettings, since: float | None, until: float | None) -> dict[str, pd.DataFrame]:
    """entity → wide frame (time index, one column per series name) of the family's series in the range."""
    parts: dict[str, dict[str, pd.Series]] = {}
    for pattern in fam.series:
        df = store.query(pattern, fam.match or None, since=since, until=until, form="long")
        df = df[df["state"].isna()] if "state" in df else df
        if df.empty:
            continue
        keys = df["labels"].map(lambda lbls: ",".join(f"{k}={lbls.get(k, '')}" for k in fam.entity))
        for (entity, name), rows in df.groupby([keys, df["name"]], sort=True):
            s = pd.Series(rows["value"].to_numpy(dtype=np.float64), index=pd.DatetimeIndex(rows["ts"]))
            # Several series of one entity and metric (a node's worker processes): their mean per
            # timestamp, not whichever series happens to come last.
            parts.setdefault(entity, {})[metric_name(name)] = s.groupby(level=0).mean()
    return {entity: pd.DataFrame(cols).sort_index() for entity, cols in parts.items()}


def excluded_periods(store: Any, since: float | None, until: float | None) -> list[tuple[float, float]]:
    """(start, end) epoch-second periods that are not normal: alerts firing, run state not RUNNING."""
    from farmwatch.alerting.state import AlertDB

    periods: list[tuple[float, float]] = []
    open_: dict[str, float] = {}
    for row in AlertDB(store).history(until=until):
        if row["event"] == "firing":
            open_.setdefault(row["fingerprint"], row["ts"])
        elif row["event"] in ("resolved", "cancelled") and row["fingerprint"] in open_:
            periods.append((open_.pop(row["fingerprint"]), row["ts"]))
    periods += [(start, math.inf) for start in open_.values()]
    states = store.query(RUN_STATE, since=None, until=until, form="long")
    if not states.empty:
        ts = _epoch(pd.DatetimeIndex(states["ts"]))
        values = states["state"].to_numpy()
        for i, state in enumerate(values):
            if state != "RUNNING":
                end = ts[i + 1] if i + 1 < len(ts) else math.inf
                periods.append((float(ts[i]), float(end)))
    lo = -math.inf if since is None else since
    return sorted((a, b) for a, b in periods if b >= lo)


def usable_mask(index: pd.DatetimeIndex, periods: list[tuple[float, float]]) -> np.ndarray:
    """True for the times of ``index`` outside every period."""
    t = _epoch(index) if len(index) else np.empty(0)
    ok = np.ones(len(index), bool)
    for a, b in periods:
        ok &= ~((t >= a) & (t < b))
    return ok


def _epoch(index: pd.DatetimeIndex) -> np.ndarray:
    """Epoch seconds of a DatetimeIndex whatever its unit (ns, us, ms) and time zone."""
    if index.tz is None:
        index = index.tz_localize("UTC")
    return np.asarray((index - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1), dtype=np.float64)


def train_from_store(store: Any, name: str, fam: FamilySettings, since: float | None, until: float | None,
                     progress: Callable[[str], None] | None = None, compute: Callable | None = None) -> Any:
    """Train family ``name`` on the store's normal history between ``since`` and ``until``."""
    from farmwatch.detect.family import train_family

    frames = entity_frames(store, fam, since, until)
    if not frames:
        raise ValueError(f"family {name!r}: no samples of {', '.join(fam.series)} match {fam.match or 'any labels'} in the range")
    periods = excluded_periods(store, since, until)
    return train_family(frames, family=name, window=fam.window, step=fam.step, features=fam.features,
                        metrics=sorted({metric_name(s) for f in frames.values() for s in f.columns}),
                        freq=fam.freq, kind=fam.kind, target_false_alarm=fam.target_false_alarm,
                        exclude=lambda index: usable_mask(index, periods), progress=progress, compute=compute)


def score_from_store(store: Any, fam: FamilySettings, model: Any, since: float, until: float | None = None) -> pd.DataFrame:
    """``family.score_history`` of the store's series of family ``fam`` between ``since`` and
    ``until`` (epoch seconds): the scores the service would have written, one column per entity
    (``unit=hlt02,host=hltwk06``), for notebooks and backtests of a model."""
    from farmwatch.detect.family import score_history

    lead = pd.Timedelta(fam.freq).total_seconds() * (model.window + 1)
    return score_history(model, entity_frames(store, fam, since - lead, until), fam.freq, since=since)
