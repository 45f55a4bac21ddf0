"""Training family models (``[detect]``, ``farmwatch.detect.settings``) from the store: normal
periods, frames per entity.

Only normal history is learned from: a window is left out when any of its points falls in a period
with a firing alert (the caller passes those: the alert history is alerting's, above this layer)
or with a run state (series ``daq.run_state``) other than RUNNING, when the store has that series.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from farmwatch.detect.models import FamilyModel
from farmwatch.detect.settings import DetectSettings, FamilySettings
from farmwatch.store.protocol import SampleStore

RUN_STATE = "daq.run_state"
Period = tuple[float, float]
"""(start, end) in epoch seconds; end may be inf (still going on)."""


def metric_name(series: str) -> str:
    """The metric column of a series: its name (``hlt.worker.cpu``)."""
    return series


def entity_frames(store: SampleStore, fam: FamilySettings, since: float | None, until: float | None) -> dict[str, pd.DataFrame]:
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


def excluded_periods(store: SampleStore, since: float | None, until: float | None,
                     alerts: Iterable[Period] = ()) -> list[Period]:
    """(start, end) epoch-second periods that are not normal: ``alerts`` (the periods with a firing
    alert, from the caller: ``AlertDB.firing_periods``) and the run state not RUNNING."""
    periods: list[Period] = list(alerts)
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


def usable_mask(index: pd.DatetimeIndex, periods: list[Period]) -> np.ndarray:
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


def train_from_store(store: SampleStore, name: str, fam: FamilySettings, since: float | None, until: float | None,
                     progress: Callable[[str], None] | None = None, compute: Callable | None = None, *,
                     alert_periods: Iterable[Period] = ()) -> FamilyModel:
    """Train family ``name`` on the store's normal history between ``since`` and ``until``,
    leaving out ``alert_periods`` (``AlertDB.firing_periods``) and what is not RUNNING."""
    from farmwatch.detect.family import train_family

    frames = entity_frames(store, fam, since, until)
    if not frames:
        raise ValueError(f"family {name!r}: no samples of {', '.join(fam.series)} match {fam.match or 'any labels'} in the range")
    periods = excluded_periods(store, since, until, alert_periods)
    return train_family(frames, family=name, window=fam.window, step=fam.step, features=fam.features,
                        metrics=sorted({metric_name(s) for f in frames.values() for s in f.columns}),
                        freq=fam.freq, kind=fam.kind, target_false_alarm=fam.target_false_alarm,
                        exclude=lambda index: usable_mask(index, periods), progress=progress, compute=compute)


def score_from_store(store: SampleStore, fam: FamilySettings, model: FamilyModel, since: float, until: float | None = None) -> pd.DataFrame:
    """``family.score_history`` of the store's series of family ``fam`` between ``since`` and
    ``until`` (epoch seconds): the scores the service would have written, one column per entity
    (``unit=hlt02,host=hltwk06``), for notebooks and backtests of a model."""
    from farmwatch.detect.family import score_history

    lead = pd.Timedelta(fam.freq).total_seconds() * (model.window + 1)
    return score_history(model, entity_frames(store, fam, since - lead, until), fam.freq, since=since)


__all__ = ["RUN_STATE", "DetectSettings", "FamilySettings", "Period", "entity_frames", "excluded_periods",
           "metric_name", "score_from_store", "train_from_store", "usable_mask"]
