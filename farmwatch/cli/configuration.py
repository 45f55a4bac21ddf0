"""``check-config`` (is this config usable?) and ``config-reference`` (every key, as Markdown)."""

from __future__ import annotations

import argparse
import sys

from farmwatch.cli.common import EXIT_OK, add_config


def cmd_check_config(args: argparse.Namespace) -> int:
    from farmwatch.alerting.ruleset import inhibit_rules, load_rule_set
    from farmwatch.config.base import ConfigError
    from farmwatch.config.loader import load, secret_problems
    from farmwatch.store import folder_problem

    settings = load(args.config)
    problems = secret_problems(settings) + [p for p in [folder_problem(settings.store)] if p]
    if problems:
        raise ConfigError(problems)
    n_targets = sum(len(getattr(s, "endpoints", ())) for s in settings.sources.values())
    rules = load_rule_set(settings.alerting) if settings.alerting.enabled else []
    inhibits = inhibit_rules(settings.alerting) if settings.alerting.enabled else []
    for name, source in settings.sources.items():
        for warning in source.warnings():
            print(f"{settings.file}: sources.{name}.{warning}", file=sys.stderr)
    print(f"{settings.file}: OK: {len(settings.sources)} source(s), {n_targets} endpoint(s), store {settings.store.path}, "
          f"{len(rules)} alert rule(s), {len(inhibits)} inhibit rule(s), "
          f"notify: {', '.join(settings.alerting.notify) or 'nobody'}")
    return EXIT_OK


def cmd_config_reference(args: argparse.Namespace) -> int:
    from farmwatch.config.reference import reference

    print(reference(), end="")
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("config-reference", help="print the configuration reference (Markdown; docs/config.md)")
    r.set_defaults(func=cmd_config_reference)

    k = sub.add_parser("check-config", help="validate a config file")
    add_config(k)
    k.set_defaults(func=cmd_check_config)


__all__ = ["add_parsers", "cmd_check_config", "cmd_config_reference"]
