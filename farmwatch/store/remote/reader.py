"""Reading back from a Prometheus-compatible query API as if it were the embedded store.

``PrometheusReader(url)`` answers ``query``, ``latest``, ``series`` and ``rollup`` with the same
DataFrames as ``SQLiteStore`` (long or wide form, label columns, UTC timestamps), so
``farmwatch.analysis``, the notebooks and ``farmwatch query --store remote`` work on months of
history in VictoriaMetrics or Prometheus without copying files. Raw samples come from an instant
query of a range selector (``sel[range]`` evaluated at ``until``: the stored samples, not a
resampled grid); rollups from ``*_over_time`` range queries with the rollup's step (a sample
exactly on a bin boundary may fall into the other bin: PromQL ranges are open at one end). Names and
label names are translated as the writer does (``farmwatch.store.remote.naming``); a name given
exactly is shown as given, one matched by a glob as the TSDB's metric name. Numbers only: states
are the ``name{state="…"}`` series of value 1 there.
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd
import requests

from farmwatch.matchers import MatcherSpec, parse_matchers
from farmwatch.store.remote.naming import _METRIC_BAD, label_name, metric_name
from farmwatch.store.rollup import RESOLUTIONS
from farmwatch.store.storefile import StoreError

if TYPE_CHECKING:
    from farmwatch.store.remote.settings import RemoteWriteSettings

__all__ = ["PrometheusReader", "QueryError", "open_reader", "selector"]

_GLOB = re.compile(r"[*?\[]")
_LONG = ("ts", "name", "value", "state", "labels")
_ROLLUP = ("ts", "name", "value", "min", "max", "last", "count", "labels")


class QueryError(StoreError):
    """The query API failed or refused a query; the message names the URL and the reason (one line,
    as the embedded store's errors: the command line prints it and exits 1)."""


def _glob_regex(glob: str, name: bool = False) -> str:
    """A shell glob (``*``, ``?``, ``[…]`` and ``[!…]`` as in the store's ``*=``) as a regular
    expression; for metric names, the other characters as the writer renames them (``.`` → ``_``)."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        end = glob.find("]", i + 2 if glob[i + 1:i + 2] in ("!", "]") else i + 1) if c == "[" else -1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif end > 0:
            body = glob[i + 1:end]
            negate = body.startswith("!")
            body = "".join(ch if ch == "-" else re.escape(_METRIC_BAD.sub("_", ch) if name else ch)
                           for ch in body[negate:])
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end
        else:
            out.append(re.escape(_METRIC_BAD.sub("_", c) if name else c))
        i += 1
    return "".join(out)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def selector(name: str | None, matchers: MatcherSpec = None, prefix: str = "") -> str:
    """The PromQL series selector for a farmwatch name (glob) and label matchers."""
    parts = []
    if name is None:
        parts.append('__name__=~".+"')
    elif _GLOB.search(name):
        lead = "_" if (prefix + name)[:1].isdigit() else ""
        parts.append(f"__name__=~{_quote(lead + re.escape(_METRIC_BAD.sub('_', prefix)) + _glob_regex(name, name=True))}")
    else:
        parts.append(f"__name__={_quote(metric_name(name, prefix))}")
    for m in parse_matchers(matchers):
        label = label_name(m.label)
        if m.op in ("*=", "!*="):
            op, value = ("=~" if m.op == "*=" else "!~"), _glob_regex(m.value)
        else:
            op, value = m.op, m.value
        parts.append(f"{label}{op}{_quote(value)}")
    return "{" + ",".join(parts) + "}"


class PrometheusReader:
    """The query API at ``url`` (``http://vm01:8428``, ``http://prom:9090``), read like ``SQLiteStore``."""

    def __init__(self, url: str, *, prefix: str = "", timeout: float = 60.0, headers: Mapping[str, str] | None = None,
                 auth: tuple[str, str] | None = None, verify: bool | str = True, lookback: float = 86400.0) -> None:
        self.url = url.rstrip("/")
        self.prefix = prefix
        self.timeout = timeout
        self.lookback = lookback
        """How far back ``latest`` looks for each series' newest sample."""
        self.session = requests.Session()
        self.session.headers.update(headers or {})
        self.session.auth = auth
        self.session.verify = verify

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> PrometheusReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the store's read API -------------------------------------------------------------------
    def query(self, name: str | None = None, matchers: MatcherSpec = None, *, since: float | None = None,
              until: float | None = None, form: str = "long", limit: int | None = None) -> pd.DataFrame:
        """Raw samples with ``since <= ts <= until`` (default: the last ``lookback``), as ``SQLiteStore.query``."""
        if form not in ("long", "wide"):
            raise ValueError(f"form must be 'long' or 'wide', not {form!r}")
        until = time.time() if until is None else until
        since = until - self.lookback if since is None else since
        window = max(0.001, until - since + 0.001)
        result = self._get("query", {"query": f"{selector(name, matchers, self.prefix)}[{_duration(window)}]",
                                     "time": f"{until:.3f}"})
        rows = [(labels, [(float(t), float(v)) for t, v in series["values"]])
                for series in result for labels in [series["metric"]]]
        frame = self._long(name, rows, since, until)
        if limit is not None:
            frame = frame.head(limit)
        return self._wide(frame) if form == "wide" else frame

    def latest(self, name: str | None = None, matchers: MatcherSpec = None) -> pd.DataFrame:
        """The newest sample of each matching series within ``lookback``."""
        frame = self.query(name, matchers)
        if frame.empty:
            return frame
        key = frame["labels"].map(lambda d: tuple(sorted(d.items()))) + frame["name"].map(lambda n: (("", n),))
        return frame[~key.duplicated(keep="last").to_numpy()].reset_index(drop=True)

    def series(self, name: str | None = None, matchers: MatcherSpec = None, *, since: float | None = None,
               until: float | None = None) -> pd.DataFrame:
        """The matching series (``/api/v1/series``, default over ``lookback``): columns name, labels, label columns."""
        until = time.time() if until is None else until
        since = until - self.lookback if since is None else since
        found = self._get("series", {"match[]": selector(name, matchers, self.prefix), "start": f"{since:.3f}",
                                     "end": f"{until:.3f}"})
        names = [self._name(name, m) for m in found]
        labels = [{k: v for k, v in m.items() if k != "__name__"} for m in found]
        columns: dict[str, Any] = {"name": names, "labels": labels}
        for key in sorted({k for lb in labels for k in lb} - {"name", "labels"}):
            columns[key] = [lb.get(key) for lb in labels]
        return pd.DataFrame(columns)

    def rollup(self, name: str | None = None, matchers: MatcherSpec = None, *, since: float | None = None,
               until: float | None = None, resolution: str = "1m") -> pd.DataFrame:
        """``SQLiteStore.rollup`` from ``min/max/avg/last/count_over_time`` with the rollup's step."""
        step = RESOLUTIONS.get(resolution)
        if step is None:
            raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}, not {resolution!r}")
        seconds = step // 1000
        until = time.time() if until is None else until
        since = until - self.lookback if since is None else since
        start = math.floor(since / seconds) * seconds
        names = [name] if name is not None and not _GLOB.search(name) else sorted(
            set(self.series(name, matchers, since=since, until=until)["name"]))
        # Each bin [t, t + step) is evaluated at its end (the range looks back from there). The
        # *_over_time functions drop the metric name, so each name is asked on its own.
        params = {"start": f"{start + seconds:.3f}", "end": f"{math.floor(until / seconds) * seconds + seconds:.3f}",
                  "step": f"{seconds}s"}
        rows = []
        for each in names:
            sel = selector(each, matchers, self.prefix)
            parts: dict[str, dict[tuple, dict[float, float]]] = {}
            for stat, fn in (("min", "min_over_time"), ("max", "max_over_time"), ("value", "avg_over_time"),
                             ("last", "last_over_time"), ("count", "count_over_time")):
                result = self._get("query_range", {**params, "query": f"{fn}({sel}[{seconds}s])"})
                parts[stat] = {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")):
                               {float(t) - seconds: float(v) for t, v in s["values"]} for s in result}
            for key, counts in parts["count"].items():
                for t in sorted(counts):
                    if since - seconds < t <= until:
                        rows.append((t, each, parts["value"].get(key, {}).get(t, math.nan),
                                     *(parts[s].get(key, {}).get(t, math.nan) for s in ("min", "max", "last")),
                                     int(counts[t]), dict(key)))
        frame = pd.DataFrame(rows, columns=list(_ROLLUP))
        frame["ts"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
        frame = frame.sort_values(["ts", "name"], kind="stable").reset_index(drop=True)
        return self._with_label_columns(frame, _ROLLUP)

    # -- helpers ----------------------------------------------------------------------------------
    def _get(self, endpoint: str, params: dict[str, str]) -> Any:
        where = f"{self.url}/api/v1/{endpoint}"
        try:
            response = self.session.post(where, data=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise QueryError(f"{where}: no answer ({type(exc).__name__})") from None
        try:
            doc = response.json()
        except ValueError:
            raise QueryError(f"{where}: HTTP {response.status_code}, not a Prometheus API answer") from None
        if doc.get("status") != "success":
            raise QueryError(f"{where}: {doc.get('errorType', response.status_code)}: {doc.get('error', '')}")
        data = doc["data"]
        return data["result"] if isinstance(data, dict) else data

    def _name(self, asked: str | None, metric: Mapping[str, str]) -> str:
        got = metric.get("__name__", "")
        return asked if asked is not None and not _GLOB.search(asked) and got == metric_name(asked, self.prefix) else got

    def _long(self, asked: str | None, rows: list[tuple[dict[str, str], list[tuple[float, float]]]],
              since: float, until: float) -> pd.DataFrame:
        out = []
        for metric, samples in rows:
            name = self._name(asked, metric)
            labels = {k: v for k, v in metric.items() if k != "__name__"}
            out += [(t, name, v, None, labels) for t, v in samples if since <= t <= until]
        frame = pd.DataFrame(out, columns=list(_LONG))
        frame["ts"] = pd.to_datetime(frame["ts"].astype(float) * 1e9, utc=True).dt.round("ms")
        frame["value"] = frame["value"].astype(float)
        frame["state"] = frame["state"].astype(object)
        display = [name + str(sorted(lb.items())) for name, lb in zip(frame["name"], frame["labels"])]
        frame = frame.assign(_key=display).sort_values(["ts", "_key"], kind="stable").drop(columns="_key")
        return self._with_label_columns(frame.reset_index(drop=True), _LONG)

    @staticmethod
    def _with_label_columns(frame: pd.DataFrame, reserved: tuple[str, ...]) -> pd.DataFrame:
        keys = sorted({k for lb in frame["labels"] for k in lb} - set(reserved))
        for key in keys:
            frame[key] = [lb.get(key) for lb in frame["labels"]]
        return frame

    @staticmethod
    def _wide(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty:
            return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="ts"))
        from farmwatch.model import format_series

        columns = [format_series(n, tuple(sorted(lb.items()))) for n, lb in zip(frame["name"], frame["labels"])]
        wide = frame.assign(column=columns).pivot_table(index="ts", columns="column", values="value", aggfunc="last")
        wide.columns.name = None
        return wide.sort_index()


def _duration(seconds: float) -> str:
    """A PromQL duration in whole milliseconds."""
    return f"{int(np.ceil(seconds * 1000))}ms"


def open_reader(settings: RemoteWriteSettings) -> PrometheusReader:
    """The query API of ``[remote_write] query_url``, with the writer's credentials and TLS settings
    (``ValueError`` when the section names no ``query_url``; ``SecretError`` for a secret)."""
    if settings.query_url is None:
        raise ValueError("query_url is not set (the TSDB's Prometheus query API, e.g. http://vm01:8428)")
    headers, auth = settings.credentials()
    verify = str(settings.ca_file) if settings.ca_file else settings.verify
    return PrometheusReader(settings.query_url, prefix=settings.prefix, timeout=settings.timeout, headers=headers,
                            auth=auth, verify=verify)
