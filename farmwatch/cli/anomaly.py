"""The anomaly-detection commands: ``train`` (family models from stored history) and ``models list|show``.

Families are declared under ``[detect]`` in the config (see ``farmwatch.detect.settings``); the
store named by ``[store]`` is read, never written; models go to ``[detect] models`` (a folder,
relative to the config file) as ``<family>.joblib`` + ``<family>.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from farmwatch.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, UsageError, add_config, load_settings, time_arg
from farmwatch.cli.output import dump_json, print_table

if TYPE_CHECKING:
    from farmwatch.config.loader import Settings
    from farmwatch.detect.settings import DetectSettings

log = logging.getLogger("farmwatch")


def load_with_detect(path: str | None) -> tuple[Settings, DetectSettings]:
    """The config's settings and its ``[detect]`` section (an empty one when the config has none)."""
    from farmwatch.detect.settings import DetectSettings

    settings = load_settings(path)
    detect = settings.detect
    if detect is None:
        assert settings.file is not None
        detect = DetectSettings(models=settings.file.resolve().parent / "models")
    return settings, detect


def cmd_train(args: argparse.Namespace) -> int:
    """Train (and save) the model of every family in the config, or of the ones given with --family."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from farmwatch.alerting.state import AlertDB
    from farmwatch.detect.persist import save
    from farmwatch.detect.training import train_from_store
    from farmwatch.store import open_store

    settings, detect = load_with_detect(args.config)  # a ConfigError is printed by main(), one line each
    since, until = args.since, args.until
    names = args.family or list(detect.families)
    unknown = [n for n in names if n not in detect.families]
    if unknown or not names:
        have = ", ".join(detect.families) or "none"
        print(f"{args.config}: detect.families: no family {', '.join(unknown) or '(none configured)'} (have: {have})",
              file=sys.stderr)
        return EXIT_USAGE
    compute = None
    if args.dask_scheduler:
        from farmwatch.detect.dask import dask_compute

        try:
            compute = dask_compute(args.dask_scheduler)
        except RuntimeError as exc:
            print(f"farmwatch train: {exc}", file=sys.stderr)
            return EXIT_USAGE
        log.info("extracting features on the Dask cluster at %s (tsfresh's ClusterDaskDistributor)", args.dask_scheduler)
    store = open_store(settings.store, readonly=True)
    failed = 0
    try:
        alert_periods = AlertDB(store).firing_periods(until=until)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      disable=not sys.stderr.isatty(), transient=True) as bar:
            for name in names:
                fam = detect.families[name]
                task = bar.add_task(f"training {name}", total=None)
                try:
                    model = train_from_store(store, name, fam, since, until, compute=compute,
                                             progress=lambda _entity, t=task: bar.advance(t),
                                             alert_periods=alert_periods)
                except ValueError as exc:
                    log.error("%s", exc)
                    failed += 1
                    continue
                model_path, _ = save(model, detect.models / name)
                t = model.trained
                print(f"{name}: {model.kind} on {t['n_samples']} windows of {t['n_entities']} entities "
                      f"({t['from']} … {t['to']}, {t['excluded_windows']} windows left out: alerts firing or not "
                      f"RUNNING) → {model_path}")
    finally:
        store.close()
    return EXIT_FAIL if failed else EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """List the saved models, or show one model's metadata."""
    from farmwatch.detect.persist import IncompatibleModel, check, read_metadata

    _, detect = load_with_detect(args.config)
    folder = detect.models
    if args.action == "show":
        saved = sorted(p.stem for p in folder.glob("*.json"))
        if args.family not in saved:
            raise UsageError(f"no model {args.family!r} in {folder} (saved: {', '.join(saved) or 'none; see farmwatch train'})")
        try:
            meta = read_metadata(folder / args.family)
        except IncompatibleModel as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FAIL
        meta = {k: v for k, v in meta.items() if k != "calibration"}
        print(dump_json(meta, indent=2))
        return EXIT_OK
    rows = []
    for sidecar in sorted(folder.glob("*.json")):
        try:
            meta = read_metadata(sidecar)
            usable = "yes"
            try:
                check(meta, str(sidecar))
            except IncompatibleModel as exc:
                usable = str(exc).split(": ", 1)[-1]
        except IncompatibleModel as exc:
            log.error("%s", exc)
            continue
        t = meta.get("trained", {})
        rows.append((meta.get("family", sidecar.stem), meta.get("kind", "?"), str(len(meta.get("metrics", []))),
                     f"{meta.get('window')}/{meta.get('step')}", f"{t.get('from', '?')} … {t.get('to', '?')}",
                     str(t.get("n_samples", "?")), usable))
    print_table(f"models in {folder}", ("family", "kind", "metrics", "window/step", "trained on", "windows",
                                        "usable here"), rows)
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train the anomaly models of the configured families on stored history")
    add_config(t)
    t.add_argument("--from", dest="since", type=time_arg, required=True, metavar="TIME",
                   help="start: a duration ago (7d) or an ISO time")
    t.add_argument("--to", dest="until", type=time_arg, default="now", metavar="TIME",
                   help="end: a duration ago, an ISO time or now (default)")
    t.add_argument("--family", action="append", help="only this family (repeatable)")
    t.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="extract the features on this Dask cluster (tcp://host:8786) through tsfresh's distributor; "
                        "same values as locally (needs farmwatch[dask])")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("models", help="list the saved anomaly models, or show one")
    msub = m.add_subparsers(dest="action", required=True)
    add_config(msub.add_parser("list", help="one line per saved model"))
    ms = msub.add_parser("show", help="a model's metadata (features, window, training range, versions)")
    ms.add_argument("family")
    add_config(ms)
    m.set_defaults(func=cmd_models)


__all__ = ["add_parsers", "cmd_models", "cmd_train", "load_with_detect"]
