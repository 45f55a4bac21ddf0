"""How farmwatch series are named in a Prometheus-compatible TSDB, and which of them are sent.

- The metric name is the series name with every character Prometheus does not allow in a metric
  name (``[a-zA-Z0-9_:]``) replaced by ``_``: ``hlt.output.sent_events:rate`` →
  ``hlt_output_sent_events:rate``, ``zabbix.net.if.in`` → ``zabbix_net_if_in``; ``prefix`` is put
  in front (``farmwatch_``, where the TSDB is shared with other systems).
- Label names the same way, with ``[a-zA-Z0-9_]`` (``zabbix.item`` → ``zabbix_item``); values stay
  as they are (``item="net.if.in[eth0]"``). ``external_labels`` are added to every series (the
  site or the collector), unless the series has that label itself.
- A state value (``daq.run_state = RUNNING``) becomes a sample of value 1 with the state in label
  ``state`` (``daq_run_state{state="RUNNING"} 1`` at the state's time).
- Then the ``relabel`` rules run in order on the labels (``__name__`` included), as Prometheus'
  ``write_relabel_configs``: ``keep``/``drop`` by a regular expression over the joined
  ``source_labels``, ``replace`` into ``target_label``, ``labeldrop``/``labelkeep`` by label name.
Two farmwatch series that end up with the same name and labels are one series in the TSDB.
"""

from __future__ import annotations

import re
from typing import Literal, Sequence

from pydantic import Field

from farmwatch.config.base import Regex, Section
from farmwatch.model import Labels

__all__ = ["Relabel", "label_name", "metric_name", "prometheus_labels", "relabel"]

_METRIC_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")


class Relabel(Section):
    """One ``[[remote_write.relabel]]`` rule, as a Prometheus ``write_relabel_configs`` entry."""

    action: Literal["keep", "drop", "replace", "labeldrop", "labelkeep"] = "replace"
    """keep/drop: the series whose joined source_labels match regex; replace: set target_label; labeldrop/labelkeep: labels whose name matches regex."""
    source_labels: list[str] = Field(default_factory=lambda: ["__name__"])
    """Labels (after renaming, `__name__` for the metric name) joined with separator."""
    separator: str = ";"
    """Joins the source_labels' values."""
    regex: Regex = "(.*)"
    """Must match the whole joined value (or label name)."""
    target_label: str | None = None
    """replace: the label to set (`__name__` renames the metric)."""
    replacement: str = "$1"
    """replace: the new value, with `$1`… for the regex groups; an empty result removes the label."""


def metric_name(name: str, prefix: str = "") -> str:
    """``hlt.output.sent_events:rate`` → ``hlt_output_sent_events:rate`` (and a leading digit gets a ``_``)."""
    out = _METRIC_BAD.sub("_", prefix + name)
    return "_" + out if out[:1].isdigit() else out


def label_name(name: str) -> str:
    out = _LABEL_BAD.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def relabel(labels: dict[str, str], rules: Sequence[Relabel]) -> dict[str, str] | None:
    """The labels after the rules, or None when a rule drops the series."""
    for rule in rules:
        pattern = re.compile(rule.regex)
        if rule.action in ("labeldrop", "labelkeep"):
            keep = rule.action == "labelkeep"
            labels = {k: v for k, v in labels.items()
                      if k == "__name__" or (pattern.fullmatch(k) is not None) == keep}
            continue
        joined = rule.separator.join(labels.get(k, "") for k in rule.source_labels)
        found = pattern.fullmatch(joined)
        if rule.action == "keep" and found is None or rule.action == "drop" and found is not None:
            return None
        if rule.action == "replace" and found is not None and rule.target_label:
            value = found.expand(re.sub(r"\$(\d+)", r"\\\1", rule.replacement))
            if value:
                labels[rule.target_label] = value
            else:
                labels.pop(rule.target_label, None)
    return labels if labels.get("__name__") else None


def prometheus_labels(name: str, lbls: Labels, *, prefix: str, external: dict[str, str],
                      rules: Sequence[Relabel], state: str | None = None) -> tuple[tuple[str, str], ...] | None:
    """The sorted label pairs a farmwatch series (or one of its states) has in the TSDB, or None: not sent."""
    labels = {label_name(k): v for k, v in external.items()}
    labels.update((label_name(k), v) for k, v in lbls)
    if state is not None:
        labels["state"] = state
    labels["__name__"] = metric_name(name, prefix)
    result = relabel(labels, rules)
    return None if result is None else tuple(sorted(result.items()))
