"""``farmwatch status``: is the running service healthy? Reads its self-metrics endpoint.

The same numbers Prometheus scrapes, summarised for a person at a terminal (or a check script:
the exit status says healthy 0, problems 1, not answering 3).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from typing import Any

from farmwatch.cli.common import EXIT_FAIL, EXIT_OK, EXIT_UNREACHABLE, add_config, load_settings
from farmwatch.cli.output import dump_json


def scrape(url: str, timeout: float = 5.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name (``_total`` suffixes kept as exposed) from a Prometheus text endpoint."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    reply = requests.get(url, timeout=timeout)
    reply.raise_for_status()
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            out[s.name].append((dict(s.labels), float(s.value)))
    return out


def summarize(m: dict[str, list[tuple[dict[str, str], float]]], now: float, stale_after: float) -> dict[str, Any]:
    """What an operator asks first: which sources run, what is lost, what is stuck."""
    def one(name: str, default: float = 0.0) -> float:
        return m[name][0][1] if m.get(name) else default

    sources: dict[str, dict[str, float]] = defaultdict(dict)
    for name, key in (("farmwatch_source_cycle_seconds", "cycle_s"), ("farmwatch_source_last_cycle_timestamp_seconds", "last"),
                      ("farmwatch_source_overruns_total", "overruns"), ("farmwatch_source_samples_total", "samples")):
        for lbls, v in m.get(name, []):
            sources[lbls["source"]][key] = v
    for lbls, v in m.get("farmwatch_targets", []):
        sources[lbls["source"]][f"targets_{lbls['state']}"] = v
    problems = []
    for name, s in sorted(sources.items()):
        s["age_s"] = now - s.get("last", -math.inf)
        if s["age_s"] > stale_after:
            problems.append(f"source {name}: no cycle for {s['age_s']:.0f} s")
        if s.get("targets_down"):
            problems.append(f"source {name}: {s['targets_down']:.0f} of {s['targets_down'] + s.get('targets_up', 0):.0f} targets down")
    dropped = one("farmwatch_samples_dropped_total")
    if dropped:
        problems.append(f"{dropped:.0f} samples dropped (store writer behind)")
    failed = one("farmwatch_delivery_failures_total")
    if failed:
        problems.append(f"{failed:.0f} notifications could not be delivered (see `farmwatch alerts --history`)")
    if one("farmwatch_rule_errors_total"):
        problems.append(f"{one('farmwatch_rule_errors_total'):.0f} rule evaluation errors")
    outbox = {lbls["notifier"]: v for lbls, v in m.get("farmwatch_outbox_depth", [])}
    alerts = {lbls["state"]: v for lbls, v in m.get("farmwatch_alerts", [])}
    service = m["farmwatch_service_start_time_seconds"][0][0].get("service", "?") if m.get("farmwatch_service_start_time_seconds") else "?"
    return {
        "service": service, "uptime_s": now - one("farmwatch_service_start_time_seconds", now),
        "sources": dict(sources), "samples_written": one("farmwatch_samples_written_total"), "samples_dropped": dropped,
        "store_queue_depth": one("farmwatch_store_queue_depth"), "alerts": alerts,
        "rule_evaluation_s": one("farmwatch_rule_evaluation_seconds", math.nan), "outbox_depth": outbox,
        "delivered": one("farmwatch_notifications_delivered_total"), "delivery_failures": failed,
        "rss_bytes": one("farmwatch_process_resident_memory_bytes", math.nan),
        "problems": problems,
    }


def cmd_status(args: argparse.Namespace) -> int:
    url = args.url
    if url is None:
        from farmwatch.config.base import ConfigError

        settings = load_settings(args.config)
        cfg = settings.self_metrics
        if cfg.port is None:
            raise ConfigError([f"{settings.file}: self_metrics: no port set, so no service exposes its status; "
                               "add [self_metrics] port = 9108 (or pass --url)"])
        url = f"http://{cfg.address}:{cfg.port}/metrics"
    import requests

    try:
        metrics = scrape(url)
    except requests.RequestException as exc:
        print(f"no farmwatch service answers at {url}: {type(exc).__name__}")
        return EXIT_UNREACHABLE
    s = summarize(metrics, time.time(), args.stale_after)
    if args.format == "json":
        print(dump_json(s, indent=2))
    else:
        print(f"farmwatch {s['service']} at {url}: up {s['uptime_s']:.0f} s, RSS {s['rss_bytes'] / 2**20:.0f} MiB")
        for name, src in s["sources"].items():
            print(f"  source {name}: last cycle {src['age_s']:.1f} s ago, took {src.get('cycle_s', math.nan) * 1000:.0f} ms, "
                  f"targets {src.get('targets_up', 0):.0f} up / {src.get('targets_down', 0):.0f} down, overruns {src.get('overruns', 0):.0f}")
        if s["sources"]:
            print(f"  store: {s['samples_written']:.0f} samples written, {s['samples_dropped']:.0f} dropped, queue {s['store_queue_depth']:.0f}")
        if not math.isnan(s["rule_evaluation_s"]):
            print(f"  rules: last pass {s['rule_evaluation_s'] * 1000:.0f} ms; alerts firing {s['alerts'].get('firing', 0):.0f}, "
                  f"pending {s['alerts'].get('pending', 0):.0f}")
            depth = ", ".join(f"{k} {v:.0f}" for k, v in s["outbox_depth"].items()) or "empty"
            print(f"  delivery: {s['delivered']:.0f} delivered, {s['delivery_failures']:.0f} failed, outbox {depth}")
        print("  problems: " + ("; ".join(s["problems"]) if s["problems"] else "none"))
    return EXIT_FAIL if s["problems"] else EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="health of the running service (its [self_metrics] endpoint)")
    where = p.add_mutually_exclusive_group()
    add_config(where)
    where.add_argument("--url", help="the metrics URL, e.g. http://127.0.0.1:9108/metrics (instead of the config's)")
    p.add_argument("--stale-after", type=float, default=60.0, help="a source without a cycle for this many seconds is a problem (default 60)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_status)


__all__ = ["add_parsers", "cmd_status", "scrape", "summarize"]
