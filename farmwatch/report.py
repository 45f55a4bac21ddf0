"""A self-contained HTML report of a store: rates with alert markers, worker nodes, anomaly scores, log errors,
alert timeline.

Written by ``farmwatch demo`` next to its store, so that what happened can be looked at (and
shared) without a notebook server: one file, plots embedded as PNG, every text from the store
escaped. Built from ``farmwatch.analysis``, the same helpers the notebooks use.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from farmwatch import analysis as fa
from farmwatch.store import SQLiteStore

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
th{background:#f3f3f3}img{max-width:100%}.crit{color:#b00}.warn{color:#b60}h2{margin-top:1.6em}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(rows: Iterable[Mapping[str, object]]) -> str:
    rows = list(rows)
    if not rows:
        return "<p>none</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(store: SQLiteStore, path: Path, *, title: str = "farmwatch report",
                 summary: Iterable[Mapping[str, object]] = (), notes: Iterable[str] = ()) -> Path:
    """Write the report to ``path`` and return it; ``summary`` rows become the first table."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    episodes = fa.alerts(store)
    run_state = fa.states(store)
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    summary = list(summary)
    if summary:
        parts += ["<h2>Faults injected → alerts → chat</h2>", _table(summary)]

    rin = fa.frame(store, "hlt.input.received_events:rate", ["app=distributor", "host="], by="unit")
    rout = fa.frame(store, "hlt.output.sent_events:rate", ["app=finalcollector", "host="], by="unit")
    fig, axes = plt.subplots(2, 1, figsize=(12, 5.5), sharex=True)
    fa.plot(rin, run_state=run_state, alerts=episodes[episodes["severity"] == "critical"] if len(episodes) else None,
            ax=axes[0], title="input: events/s into the distributor, per unit (red: critical alerts firing; grey: not RUNNING)")
    fa.plot(rout, run_state=run_state, ax=axes[1], title="output: events/s from the final collector to storage")
    parts += ["<h2>Event rates per unit</h2>", _png(fig)]

    nodes = fa.frame(store, "hlt.output.sent_events:rate", ["app=distributor", "host!="], by=["unit", "host"])
    units = sorted({c.split(",")[0] for c in nodes.columns})
    if units:
        fig, axes = plt.subplots(len(units), 1, figsize=(12, 3 * len(units)), squeeze=False)
        for ax, unit in zip(axes[:, 0], units):
            cols = [c for c in nodes.columns if c.startswith(unit + ",")]
            slow = episodes[(episodes["rule"] == "HltWorkerNodeSlow")] if len(episodes) else None
            fa.plot(nodes[cols].rename(columns=lambda c: c.split(",")[1]), run_state=run_state, alerts=slow, ax=ax,
                    title=f"{unit}: events/s the distributor sends each worker node")
        parts += ["<h2>Worker nodes</h2>", _png(fig)]

    scores = fa.frame(store, "anomaly.score", by="entity")
    if not scores.empty:
        fig, ax = plt.subplots(figsize=(12, 3.4))
        odd = episodes[episodes["rule"] == "AnomalyScoreHigh"] if len(episodes) else None
        fa.plot(scores, run_state=run_state, alerts=odd, ax=ax,
                title="anomaly score per worker node (family model; red: AnomalyScoreHigh firing; grey: not RUNNING)")
        ax.axhline(0.99, color="red", lw=0.8, ls="--")
        parts += ["<h2>Anomaly scores</h2>", _png(fig)]

    parts += _logs_section(store, episodes, run_state)

    if len(episodes):
        ax = fa.timeline(episodes)
        parts += ["<h2>Alerts</h2>", _png(ax.figure)]
        cols = ["rule", "severity", "pending", "firing", "resolved", "summary"]
        rows = [{c: ("" if pd.isna(v) else (f"{v:%H:%M:%S}" if isinstance(v, pd.Timestamp) else v))
                 for c, v in zip(cols, r)} for r in episodes[cols].itertuples(index=False)]
        parts.append(_table(rows))
    else:
        parts += ["<h2>Alerts</h2>", "<p>No alert fired.</p>"]
    if len(run_state):
        parts += ["<h2>Run state</h2>", _table({"time": f"{t:%H:%M:%S}", "state": s} for t, s in run_state.items())]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _logs_section(store: SQLiteStore, episodes: pd.DataFrame, run_state: pd.Series) -> list[str]:
    """Errors per node and minute with the log alerts marked, and per-node totals; nothing
    when the store holds no log records."""
    import matplotlib.pyplot as plt

    everything = fa.log_counts(store, level=None, freq="1min")
    if everything.empty:
        return []
    errors = fa.log_counts(store, freq="1min").reindex(columns=everything.columns, fill_value=0)
    log_alerts = episodes[episodes["rule"].str.startswith("HltLog")] if len(episodes) else None
    fig, ax = plt.subplots(figsize=(12, 3.4))
    fa.plot(errors, run_state=run_state, alerts=log_alerts, ax=ax,
            title="ERROR/FATAL log records per minute, per node (red: log alert firing; grey: not RUNNING)")
    ax.set_yscale("symlog", linthresh=10)  # a burst is 100× the background; both must stay readable
    ax.set_ylim(bottom=0)
    totals = [{"host": host, "log records": int(everything[host].sum()), "ERROR/FATAL": int(errors[host].sum()),
               "most errors in a minute": int(errors[host].max())} for host in everything.columns]
    return ["<h2>Application logs</h2>", _png(fig), _table(totals)]


__all__ = ["write_report"]
