"""Helpers for experts in Jupyter: the store as pandas DataFrames, alerts as episodes, plots.

Everything here reads (a store opened read-only, so a notebook can sit next to running
collectors), returns plain pandas objects with a UTC ``DatetimeIndex``, and plots with matplotlib
onto an ``Axes`` you may pass in. The notebooks in ``notebooks/`` are written with these and run in
the test suite against the store ``farmwatch demo`` writes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import pandas as pd

from farmwatch.durations import parse_duration, parse_time
from farmwatch.store import SQLiteStore
from farmwatch.matchers import MatcherSpec
from farmwatch.store.rollup import choose

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from farmwatch.store.remote.reader import PrometheusReader

RUN_STATE = "daq.run_state"


def open_store(path: str | Path) -> SQLiteStore:
    """The store, read-only (collectors may keep writing to it)."""
    return SQLiteStore(path, readonly=True)


def open_prometheus(url: str, **options: Any) -> "PrometheusReader":
    """A Prometheus-compatible query API (VictoriaMetrics, Prometheus, Mimir, Thanos) that
    ``[remote_write]`` feeds, read like the store: ``frame``, ``states`` and ``newest`` work on it
    (``alerts`` and ``log_counts`` need the store). Options: ``prefix``, ``headers``, ``auth``,
    ``verify``, ``timeout``, ``lookback`` (``farmwatch.store.remote.reader.PrometheusReader``)."""
    from farmwatch.store.remote.reader import PrometheusReader

    return PrometheusReader(url, **options)


def _epoch(t: float | str | pd.Timestamp | None, now: float) -> float | None:
    """Epoch seconds from a number, a timestamp, or the words of every time option of the command
    line (``"10m"`` back from ``now``, ``"2026-11-22T10:00"``, ``"now"``: ``durations.parse_time``)."""
    if t is None or isinstance(t, (int, float)):
        return t
    if isinstance(t, str):
        return parse_time(t, now)
    return pd.Timestamp(t).timestamp()


def newest(store: SQLiteStore) -> float:
    """Time of the newest run-state value or sample of the HLT units: "now" for a finished recording."""
    found = store.latest(RUN_STATE)
    if found.empty:
        found = store.latest("up")
    return float(found["ts"].max().timestamp()) if not found.empty else float("nan")


def frame(store: SQLiteStore, name: str, matchers: MatcherSpec = None, *, since: Any = None, until: Any = None,
          by: str | Iterable[str] | None = None, aggregate: str = "sum", resample: str | None = None,
          resolution: str = "auto") -> pd.DataFrame:
    """Numeric series as a wide DataFrame: UTC time index, one column per series.

    Columns are named by the labels that differ between the selected series (``by`` chooses them:
    ``by="host"`` gives one column per worker node), so ``frame(store,
    "hlt.output.sent_events:rate", ["app=distributor", "host!="], by="host")`` has columns hltwk01, …
    (the events the distributor sent each worker node: its worker processes summed, ``aggregate``).
    ``since``/``until``: epoch seconds, timestamps, or durations back from the newest data (``"10m"``).
    ``resample``: a pandas offset (``"10s"``) averaging onto a regular grid. ``resolution``: ``raw``
    samples, or the means of ``1m``/``10m`` rollups; ``auto`` picks by the range (raw up to 6 h,
    1m up to 3 days, else 10m: months of history stay a few hundred points per series).
    """
    now = newest(store)
    lo, hi = _epoch(since, now), _epoch(until, now)
    res = choose(lo, hi, now) if resolution == "auto" else resolution
    if res == "raw":
        df = store.query(name, matchers, since=lo, until=hi, form="long")
        df = df[df["state"].isna()] if not df.empty else df
    else:
        df = store.rollup(name, matchers, since=lo, until=hi, resolution=res)
    if df.empty:
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="ts"))
    keys = _varying(df["labels"], by)
    df = df.assign(column=[_column(lbls, keys, n) for lbls, n in zip(df["labels"], df["name"])])
    wide = df.pivot_table(index="ts", columns="column", values="value", aggfunc=aggregate if by is not None else "last").sort_index()
    wide.columns.name = None
    if resample:
        wide = wide.resample(resample).mean()
    return wide


def states(store: SQLiteStore, name: str = RUN_STATE, matchers: MatcherSpec = None, *, since: Any = None,
           until: Any = None) -> pd.Series:
    """A state series (run state by default) as values at their change times, oldest first."""
    now = newest(store)
    df = store.query(name, matchers, since=_epoch(since, now), until=_epoch(until, now), form="long")
    df = df[df["state"].notna()] if not df.empty else df
    return pd.Series(df["state"].to_numpy(), index=pd.DatetimeIndex(df["ts"], name="ts"), name=name) if not df.empty \
        else pd.Series([], index=pd.DatetimeIndex([], tz="UTC", name="ts"), name=name, dtype=object)


def alerts(store: SQLiteStore, since: Any = None, until: Any = None) -> pd.DataFrame:
    """Alert episodes from the alert history: one row per alert from pending to resolved.

    Columns: rule, severity, labels (dict), label columns, pending, firing, resolved (UTC
    timestamps, NaT when it did not happen), summary (the text of its newest transition).
    """
    from farmwatch.alerting.state import AlertDB

    now = newest(store)
    rows = AlertDB(store).history(_epoch(since, now), _epoch(until, now))
    episodes: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}
    for r in rows:
        ep = open_.get(r["fingerprint"])
        if ep is None or r["event"] == "pending" and ep.get("resolved") is not None:
            ep = {"rule": r["rule"], "severity": r["severity"], "labels": r["labels"], "pending": None,
                  "firing": None, "resolved": None, "summary": r["summary"], "fingerprint": r["fingerprint"]}
            open_[r["fingerprint"]] = ep
            episodes.append(ep)
        if r["event"] in ("pending", "firing", "resolved") and ep[r["event"]] is None:
            ep[r["event"]] = r["ts"]
        elif r["event"] == "cancelled":
            ep["resolved"] = ep["resolved"] or r["ts"]
        ep["summary"] = r["summary"] or ep["summary"]
    df = pd.DataFrame(episodes, columns=["rule", "severity", "labels", "pending", "firing", "resolved", "summary", "fingerprint"])
    for col in ("pending", "firing", "resolved"):
        df[col] = pd.to_datetime(df[col].astype(float), unit="s", utc=True)
    labels = pd.DataFrame(list(df["labels"])) if len(df) else pd.DataFrame()
    return pd.concat([df, labels.drop(columns=[c for c in labels.columns if c in df.columns])], axis=1)


def log_counts(store: SQLiteStore, *, level: str | Iterable[str] | None = ("error", "fatal"), by: str = "host",
               host: str | None = None, service: str | None = None, freq: str = "1min", since: Any = None,
               until: Any = None) -> pd.DataFrame:
    """Stored log records counted per ``freq`` bin: one column per ``by`` value (host, service or
    level), zero where there were none — how an error burst stands out of the usual background.

    ``level``: the levels counted (default error and fatal; ``None``: all); ``host``/``service``:
    globs. Counted in SQL: only the counts come back to Python, however many records there are.
    """
    if by not in ("host", "service", "level"):
        raise ValueError(f"log records are counted by host, service or level, not {by!r}")
    now = newest(store)
    lo, hi = _epoch(since, now), _epoch(until, now)
    levels = [level] if isinstance(level, str) else list(level or ())
    where, params = ["ts >= ?", "ts <= ?"], [-math.inf if lo is None else lo, math.inf if hi is None else hi]
    if levels:
        where.append(f"level IN ({','.join('?' * len(levels))})")
        params += [x.lower() for x in levels]
    for column, glob in (("host", host), ("service", service)):
        if glob:
            where.append(f"{column} GLOB ?")
            params.append(glob)
    step = pd.Timedelta(freq).total_seconds()
    sql = (f"SELECT CAST(ts / ? AS INTEGER) * ? AS bin, {by}, count(*) FROM logs WHERE {' AND '.join(where)} "
           f"GROUP BY bin, {by}")
    with store.transaction("count log records") as conn:
        rows = conn.execute(sql, [step, step, *params]).fetchall()
    if not rows:
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="ts"))
    df = pd.DataFrame(rows, columns=["ts", by, "n"])
    df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True)
    wide = df.pivot_table(index="ts", columns=by, values="n", aggfunc="sum", fill_value=0).sort_index()
    wide = wide.resample(freq).sum()  # bins without records: 0
    wide.columns.name = None
    return wide


def align(frames: Mapping[str, pd.DataFrame | pd.Series], freq: str = "10s", limit: int | None = 3) -> pd.DataFrame:
    """Several frames/series on one regular time grid (mean per bin, gaps of up to ``limit`` bins
    filled forward), columns prefixed by the mapping's keys: series of different sources side by side."""
    parts = []
    for key, f in frames.items():
        f = f.to_frame(f.name or key) if isinstance(f, pd.Series) else f
        numeric = f.select_dtypes("number")
        if numeric.empty:
            continue
        parts.append(numeric.resample(freq).mean().add_prefix(f"{key}:" if len(numeric.columns) > 1 else "")
                     .rename(columns=lambda c: c if len(numeric.columns) > 1 else key))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, axis=1).sort_index().ffill(limit=limit)


def context(store: SQLiteStore, alert: Mapping[str, Any], before: str = "10m", after: str = "5m") -> dict[str, Any]:
    """What an expert looks at around one alert (a row of ``alerts()``): the unit's input and output
    rates, its worker nodes' rates and anomaly scores (``anomaly``: empty without a trained model),
    the run state, the other alerts of that time, and the warnings and errors its host (or unit)
    logged (``logs``)."""
    start = alert["pending"] if pd.notna(alert["pending"]) else alert["firing"]
    end = alert["resolved"] if pd.notna(alert["resolved"]) else start
    since, until = start.timestamp() - parse_duration(before), end.timestamp() + parse_duration(after)
    lbls = alert["labels"]
    unit = {"unit": lbls["unit"]} if "unit" in lbls else {}
    out: dict[str, Any] = {
        "input": frame(store, "hlt.input.received_events:rate", {**unit, "app": "distributor", "host": ""}, since=since, until=until, by="unit"),
        "output": frame(store, "hlt.output.sent_events:rate", {**unit, "app": "finalcollector", "host": ""}, since=since, until=until, by="unit"),
        "nodes": frame(store, "hlt.output.sent_events:rate", [*(f"unit={u}" for u in unit.values()), "app=distributor", "host!="],
                       since=since, until=until, by="host"),
        "anomaly": frame(store, "anomaly.score", [f"unit={u}" for u in unit.values()], since=since, until=until,
                         by="host"),
        "run_state": states(store, since=since - 86400, until=until),
        "alerts": (a := alerts(store))[(a["pending"].fillna(a["firing"]) <= pd.Timestamp(until, unit="s", tz="UTC"))
                                       & (a["resolved"].isna() | (a["resolved"] >= pd.Timestamp(since, unit="s", tz="UTC")))],
        "since": pd.Timestamp(since, unit="s", tz="UTC"), "until": pd.Timestamp(until, unit="s", tz="UTC"),
    }
    if "host" in lbls:
        out["host"] = frame(store, "zabbix.*", {"host": lbls["host"]}, since=since, until=until, by="item")
    out["logs"] = _context_logs(store, lbls, since, until)
    out["patterns"] = log_patterns(store, since=since, until=until, host=lbls.get("host"),
                                   unit=lbls.get("unit") if "host" not in lbls else None)
    return out


def log_templates(messages: list[str]) -> list[str]:
    """One template per message (variable parts as ``<*>``), in input order, by the miner the log
    pipeline uses: every message is learnt first, then each gets its settled template."""
    from farmwatch.logtemplates import log_templates as mine

    return mine(messages)


def log_patterns(store: SQLiteStore, *, since: Any = None, until: Any = None, host: str | None = None,
                 level: str | Iterable[str] | None = None, unit: str | None = None, new: bool = False,
                 limit: int = 50) -> pd.DataFrame:
    """The message templates of the stored records in a time range, most frequent first: count,
    first and last seen (UTC), hosts, levels, an example line, and ``new`` (first seen in the
    range) — ``farmwatch logs patterns`` as a DataFrame. ``unit`` keeps templates of that unit's
    hosts (the records' ``labels.unit``)."""
    from farmwatch.logtemplates import TemplateStore

    now = newest(store)
    lo, hi = _epoch(since, now), _epoch(until, now)
    levels = [level] if isinstance(level, str) else list(level or ())
    hosts = None
    if unit is not None:
        with store.transaction("hosts of a unit") as conn:
            hosts = {h for (h,) in conn.execute("SELECT DISTINCT host FROM logs WHERE ts >= ? AND ts <= ? AND "
                                                "json_extract(fields, '$.\"labels.unit\"') = ?",
                                                (-math.inf if lo is None else lo, math.inf if hi is None else hi, unit))}
    rows = TemplateStore(store).patterns(since=lo, until=hi, host=host, level=levels, new=new, limit=10 * limit if hosts else limit)
    if hosts is not None:
        rows = [r for r in rows if hosts & set(r["hosts"])][:limit]
    df = pd.DataFrame(rows, columns=["id", "template", "count", "first", "last", "hosts", "levels", "first_seen", "example"])
    for col in ("first", "last", "first_seen"):
        df[col] = pd.to_datetime(df[col].astype(float), unit="s", utc=True)
    df["new"] = df["first_seen"] >= (pd.Timestamp(lo, unit="s", tz="UTC") if lo is not None else df["first_seen"].min())
    return df


def _context_logs(store: SQLiteStore, lbls: Mapping[str, str], since: float, until: float,
                  limit: int = 200) -> pd.DataFrame:
    """Warnings and errors of the alert's host, or of its unit's hosts (``labels.unit`` of the
    records), newest first: what the applications said while it happened."""
    from farmwatch.store.logs import LogStore

    found = LogStore(store).search_frame(host=lbls.get("host"), level="warning,error,fatal", since=since,
                                         until=until, limit=limit if "host" in lbls else 20 * limit)
    if "host" not in lbls and "unit" in lbls and len(found):
        found = found[[f.get("labels.unit") == lbls["unit"] for f in found["fields"]]]
    return found.head(limit).reset_index(drop=True)


def plot(df: pd.DataFrame | pd.Series, *, alerts: pd.DataFrame | None = None, run_state: pd.Series | None = None,
         ax: "Axes | None" = None, title: str | None = None, ylabel: str | None = None) -> "Axes":
    """Lines of ``df``; firing alerts as red spans (pending: light), run states other than RUNNING grey."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(11, 3.2))
    if len(df):
        df.plot(ax=ax, lw=1.2)
    lo, hi = (df.index.min(), df.index.max()) if len(df) else (None, None)
    if run_state is not None and len(run_state) and lo is not None:
        changes = list(run_state.items()) + [(hi, None)]
        for (t0, state), (t1, _) in zip(changes, changes[1:]):
            if state != "RUNNING" and t1 is not None and t1 > lo:
                ax.axvspan(max(t0, lo), t1, color="0.85", zorder=0, lw=0)
    if alerts is not None and len(alerts) and lo is not None:
        for _, a in alerts.iterrows():
            end = a["resolved"] if pd.notna(a["resolved"]) else hi
            if pd.notna(a["pending"]) and pd.notna(a["firing"]):
                ax.axvspan(a["pending"], a["firing"], color="tab:red", alpha=0.08, lw=0)
            if pd.notna(a["firing"]):
                ax.axvspan(a["firing"], end, color="tab:red", alpha=0.18, lw=0)
                ax.annotate(a["rule"], (a["firing"], 1.0), xycoords=("data", "axes fraction"), rotation=90,
                            va="top", ha="right", fontsize=7, color="tab:red")
    if title:
        ax.set_title(title, fontsize=10)
    if ylabel:
        ax.set_ylabel(ylabel)
    if len(df.shape) > 1 and df.shape[1] > 1:
        ax.legend(fontsize=7, ncol=min(6, df.shape[1]), loc="lower left")
    ax.grid(alpha=0.3)
    return ax


def timeline(episodes: pd.DataFrame, *, ax: "Axes | None" = None, until: pd.Timestamp | None = None) -> "Axes":
    """One row per rule, a bar from firing to resolved (lighter: pending), coloured by severity."""
    import matplotlib.pyplot as plt

    rules = sorted(episodes["rule"].unique()) if len(episodes) else []
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 0.45 * max(2, len(rules)) + 0.8))
    colours = {"critical": "tab:red", "warning": "tab:orange"}
    end_default = until if until is not None else (episodes[["pending", "firing", "resolved"]].max().max() if len(episodes) else None)
    for i, rule in enumerate(rules):
        for _, a in episodes[episodes["rule"] == rule].iterrows():
            colour = colours.get(a["severity"], "tab:blue")
            start = a["pending"] if pd.notna(a["pending"]) else a["firing"]
            fired_end = a["resolved"] if pd.notna(a["resolved"]) else end_default
            if pd.notna(a["firing"]):
                ax.barh(i, fired_end - a["firing"], left=a["firing"], color=colour, height=0.6)
                if start < a["firing"]:
                    ax.barh(i, a["firing"] - start, left=start, color=colour, alpha=0.3, height=0.6)
            elif pd.notna(start):
                ax.barh(i, (a["resolved"] if pd.notna(a["resolved"]) else end_default) - start, left=start, color=colour, alpha=0.3, height=0.6)
    ax.set_yticks(range(len(rules)), rules, fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return ax


def _varying(labels: pd.Series, by: str | Iterable[str] | None) -> list[str]:
    if by is not None:
        return [by] if isinstance(by, str) else list(by)
    dicts = list(labels)
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({d.get(k) for d in dicts}) > 1]


def _column(lbls: Mapping[str, str], keys: list[str], name: str) -> str:
    parts = [str(lbls.get(k, "")) for k in keys]
    return ",".join(p for p in parts if p) or name


__all__ = ["align", "alerts", "context", "frame", "log_counts", "log_patterns", "log_templates", "newest",
           "open_prometheus", "open_store", "plot", "states", "timeline"]
