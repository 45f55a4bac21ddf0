"""Alerting state kept in the store file, so that a restart neither re-sends nor forgets anything.

Everything the alerting service must remember lives here, in the tables of store migration 2:
the current and recently resolved alerts, every transition (history), silences and
acknowledgements (written by the CLI, read by the running service), the notification groups with
their timers, the outbox of notifications not yet delivered, and which chat message belongs to
which incident. Sharing the store's SQLite file lets ``farmwatch silence add`` in a shell reach a
``farmwatch run`` service without any other channel.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import orjson

from farmwatch.model import Alert, AlertState, Labels, Notification
from farmwatch.matchers import Matcher, parse_matchers

if TYPE_CHECKING:
    from farmwatch.store.storefile import StoreFile

ACTIVE = (AlertState.PENDING.value, AlertState.FIRING.value)


def label_map(alert: Alert) -> dict[str, str]:
    """An alert's labels plus ``alertname`` and ``severity``, which matchers may also use."""
    out = dict(alert.labels)
    out.setdefault("alertname", alert.rule)
    out.setdefault("severity", alert.severity)
    return out


def alert_doc(alert: Alert) -> dict[str, Any]:
    doc = asdict(alert)
    doc["state"] = alert.state.value
    doc["labels"] = [list(p) for p in alert.labels]
    return doc


def alert_from_doc(doc: Mapping[str, Any]) -> Alert:
    doc = dict(doc)
    doc["state"] = AlertState(doc["state"])
    doc["labels"] = tuple(tuple(p) for p in doc["labels"])
    doc["values"] = dict(doc.get("values") or {})
    for key in ("starts_at", "value", "active_since"):
        if doc.get(key) is None:
            doc[key] = math.nan
    return Alert(**doc)


def notification_doc(n: Notification, incident: str) -> dict[str, Any]:
    return {
        "incident": incident,
        "group_key": n.group_key,
        "group_labels": [list(p) for p in n.group_labels],
        "firing": [alert_doc(a) for a in n.firing],
        "resolved": [alert_doc(a) for a in n.resolved],
        "ts": n.ts,
        "seq": n.seq,
        "repeat": n.repeat,
    }


def notification_from_doc(doc: Mapping[str, Any]) -> Notification:
    return Notification(
        group_key=doc["group_key"],
        group_labels=tuple(tuple(p) for p in doc["group_labels"]),
        firing=[alert_from_doc(a) for a in doc["firing"]],
        resolved=[alert_from_doc(a) for a in doc["resolved"]],
        ts=doc["ts"],
        seq=doc["seq"],
        repeat=doc["repeat"],
    )


@dataclass(frozen=True)
class Silence:
    """Mutes every alert whose labels (plus ``alertname``, ``severity``) match all ``matchers``."""

    id: str
    matchers: tuple[str, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, alert: Alert) -> bool:
        found = label_map(alert)
        return all(m.matches(found) for m in self._parsed())

    def _parsed(self) -> list[Matcher]:
        return parse_matchers(list(self.matchers))


@dataclass(frozen=True)
class Ack:
    fingerprint: str
    by: str
    at: float
    comment: str


@dataclass
class OutboxItem:
    id: int
    notifier: str
    incident: str
    created: float
    payload: dict[str, Any]
    attempts: int
    next_attempt: float


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _labels_json(lbls: Labels) -> str:
    return _json(dict(lbls))


class AlertDB:
    """The alerting tables of one store; every method is one transaction."""

    def __init__(self, store: StoreFile) -> None:
        self.store = store

    # -- alerts and their history -------------------------------------------------------------
    def load_alerts(self) -> dict[str, Alert]:
        """Pending, firing and recently resolved alerts, by fingerprint."""
        with self.store.transaction("read alerts") as conn:
            rows = conn.execute("SELECT doc FROM alerts").fetchall()
        alerts = (alert_from_doc(orjson.loads(doc)) for (doc,) in rows)
        return {a.fingerprint: a for a in alerts}

    def save_alerts(self, changed: Iterable[Alert], events: Iterable[tuple[float, str, Alert]],
                    forget: Iterable[str] = (), now: float = 0.0) -> None:
        """Upsert changed alerts, append transition events, delete forgotten fingerprints."""
        changed, events, forget = list(changed), list(events), list(forget)
        if not (changed or events or forget):
            return
        with self.store.transaction("save alerts", write=True) as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?)",
                [(a.fingerprint, a.rule, _labels_json(a.labels), a.state.value, _json(alert_doc(a)), now)
                 for a in changed])
            conn.executemany(
                "INSERT INTO alert_history(ts, fingerprint, rule, labels, event, severity, value, summary)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(ts, a.fingerprint, a.rule, _labels_json(a.labels), event, a.severity,
                  None if math.isnan(a.value) else a.value, a.summary) for ts, event, a in events])
            conn.executemany("DELETE FROM alerts WHERE fingerprint = ?", [(fp,) for fp in forget])
            conn.executemany("DELETE FROM acks WHERE fingerprint = ?", [(fp,) for fp in forget])

    def alerts(self, *, states: Iterable[str] | None = None) -> list[Alert]:
        wanted = set(states) if states is not None else None
        found = self.load_alerts().values()
        return sorted((a for a in found if wanted is None or a.state.value in wanted),
                      key=lambda a: (a.state != AlertState.FIRING, a.rule, a.labels))

    def history(self, since: float | None = None, until: float | None = None,
                fingerprint: str | None = None) -> list[dict[str, Any]]:
        """Every transition (pending, firing, resolved, cancelled, acked, …) in time order."""
        sql = "SELECT ts, fingerprint, rule, labels, event, severity, value, summary FROM alert_history WHERE ts >= ? AND ts <= ?"
        params: list[Any] = [-math.inf if since is None else since, math.inf if until is None else until]
        if fingerprint:
            sql += " AND fingerprint = ?"
            params.append(fingerprint)
        return self._rows("read alert history", sql + " ORDER BY ts, id", params, "labels")

    # -- silences and acknowledgements ---------------------------------------------------------
    def firing_periods(self, until: float | None = None) -> list[tuple[float, float]]:
        """(start, end) of every stretch an alert fired, up to ``until`` (end inf while it still
        fires): the abnormal times anomaly training leaves out."""
        periods: list[tuple[float, float]] = []
        open_: dict[str, float] = {}
        for row in self.history(until=until):
            if row["event"] == "firing":
                open_.setdefault(row["fingerprint"], row["ts"])
            elif row["event"] in ("resolved", "cancelled") and row["fingerprint"] in open_:
                periods.append((open_.pop(row["fingerprint"]), row["ts"]))
        return periods + [(start, math.inf) for start in open_.values()]

    def add_silence(self, matchers: Iterable[str], starts_at: float, ends_at: float, created_by: str,
                    comment: str) -> Silence:
        matchers = tuple(matchers)
        if not matchers:
            raise ValueError("a silence needs at least one matcher (e.g. unit=hlt03)")
        parse_matchers(list(matchers))  # raises a one-line ValueError on a bad matcher
        if not ends_at > starts_at:
            raise ValueError("a silence must end after it starts")
        silence = Silence(secrets.token_hex(4), matchers, starts_at, ends_at, created_by, comment)
        with self.store.transaction("add silence", write=True) as conn:
            conn.execute("INSERT INTO silences VALUES (?, ?, ?, ?, ?, ?)",
                         (silence.id, _json(list(matchers)), starts_at, ends_at, created_by, comment))
        return silence

    def silences(self, now: float | None = None) -> list[Silence]:
        """All silences, or only those active at ``now``."""
        with self.store.transaction("read silences") as conn:
            rows = conn.execute("SELECT id, matchers, starts_at, ends_at, created_by, comment FROM silences"
                                " ORDER BY starts_at, id").fetchall()
        found = [Silence(r[0], tuple(orjson.loads(r[1])), r[2], r[3], r[4], r[5]) for r in rows]
        return found if now is None else [s for s in found if s.active(now)]

    def expire_silence(self, silence_id: str, now: float) -> bool:
        """End a silence now; True if an active silence with that id (or unique id prefix) existed."""
        with self.store.transaction("expire silence", write=True) as conn:
            rows = conn.execute("SELECT id FROM silences WHERE id LIKE ? AND ends_at > ?",
                                (silence_id + "%", now)).fetchall()
            if len(rows) != 1:
                return False
            conn.execute("UPDATE silences SET ends_at = ? WHERE id = ?", (now, rows[0][0]))
        return True

    def ack(self, fingerprints: Iterable[str], by: str, at: float, comment: str) -> int:
        rows = [(fp, by, at, comment) for fp in fingerprints]
        with self.store.transaction("acknowledge alerts", write=True) as conn:
            conn.executemany("INSERT OR REPLACE INTO acks VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def acks(self) -> dict[str, Ack]:
        with self.store.transaction("read acknowledgements") as conn:
            rows = conn.execute("SELECT fingerprint, by, at, comment FROM acks").fetchall()
        return {r[0]: Ack(*r) for r in rows}

    # -- groups -------------------------------------------------------------------------------
    def load_groups(self) -> dict[str, dict[str, Any]]:
        with self.store.transaction("read alert groups") as conn:
            rows = conn.execute("SELECT group_key, doc FROM alert_groups").fetchall()
        return {key: orjson.loads(doc) for key, doc in rows}

    def save_groups(self, changed: Mapping[str, dict[str, Any]], removed: Iterable[str],
                    outbox: Iterable[tuple[str, str, dict[str, Any]]] = (), now: float = 0.0) -> None:
        """Group timers and the notifications they produced, in one transaction (never one without the other)."""
        removed, outbox = list(removed), list(outbox)
        if not (changed or removed or outbox):
            return
        with self.store.transaction("save alert groups", write=True) as conn:
            conn.executemany("INSERT OR REPLACE INTO alert_groups VALUES (?, ?)",
                             [(k, _json(v)) for k, v in changed.items()])
            conn.executemany("DELETE FROM alert_groups WHERE group_key = ?", [(k,) for k in removed])
            conn.executemany(
                "INSERT INTO outbox(notifier, incident, created, payload, next_attempt) VALUES (?, ?, ?, ?, ?)",
                [(notifier, incident, now, _json(payload), now) for notifier, incident, payload in outbox])

    # -- outbox -------------------------------------------------------------------------------
    def pending(self, notifier: str) -> list[OutboxItem]:
        """Undelivered notifications of one notifier, oldest first."""
        with self.store.transaction("read outbox") as conn:
            rows = conn.execute(
                "SELECT id, notifier, incident, created, payload, attempts, next_attempt FROM outbox"
                " WHERE notifier = ? AND done IS NULL ORDER BY id", (notifier,)).fetchall()
        return [OutboxItem(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5], r[6]) for r in rows]

    def finish(self, item_id: int, now: float, outcome: str) -> None:
        with self.store.transaction("update outbox", write=True) as conn:
            conn.execute("UPDATE outbox SET done = ?, outcome = ? WHERE id = ?", (now, outcome, item_id))

    def retry_later(self, item_id: int, attempts: int, next_attempt: float, outcome: str) -> None:
        with self.store.transaction("update outbox", write=True) as conn:
            conn.execute("UPDATE outbox SET attempts = ?, next_attempt = ?, outcome = ? WHERE id = ?",
                         (attempts, next_attempt, outcome, item_id))

    def outbox_depth(self) -> dict[str, int]:
        with self.store.transaction("read outbox") as conn:
            rows = conn.execute("SELECT notifier, count(*) FROM outbox WHERE done IS NULL GROUP BY notifier").fetchall()
        return dict(rows)

    def outbox_log(self, notifier: str | None = None) -> list[dict[str, Any]]:
        """Every notification ever queued, with its outcome (delivered, superseded, failed, …)."""
        sql = "SELECT id, notifier, incident, created, attempts, done, outcome, payload FROM outbox"
        params: tuple = ()
        if notifier:
            sql, params = sql + " WHERE notifier = ?", (notifier,)
        return self._rows("read outbox", sql + " ORDER BY id", params, "payload")

    def _rows(self, action: str, sql: str, params, json_column: str) -> list[dict[str, Any]]:
        """Rows as dicts keyed by the selected column names, with one JSON column decoded."""
        with self.store.transaction(action) as conn:
            cursor = conn.execute(sql, params)
            keys = [d[0] for d in cursor.description]
            out = [dict(zip(keys, row)) for row in cursor.fetchall()]
        for row in out:
            row[json_column] = orjson.loads(row[json_column])
        return out

    # -- chat messages of incidents ------------------------------------------------------------
    def chat_ref(self, notifier: str, incident: str) -> str | None:
        with self.store.transaction("read chat message refs") as conn:
            row = conn.execute("SELECT ref FROM chat_refs WHERE notifier = ? AND incident = ?",
                               (notifier, incident)).fetchone()
        return row[0] if row else None

    def set_chat_ref(self, notifier: str, incident: str, ref: str | None, now: float) -> None:
        with self.store.transaction("save chat message ref", write=True) as conn:
            if ref is None:
                conn.execute("DELETE FROM chat_refs WHERE notifier = ? AND incident = ?", (notifier, incident))
            else:
                conn.execute("INSERT OR REPLACE INTO chat_refs VALUES (?, ?, ?, ?)", (notifier, incident, ref, now))


__all__ = ["ACTIVE", "Ack", "AlertDB", "OutboxItem", "Silence", "alert_doc", "alert_from_doc", "label_map",
           "notification_doc", "notification_from_doc"]
