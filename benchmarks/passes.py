"""Several passes of one benchmark, then medians with ranges: the figures docs/performance.md quotes.

On a machine shared with other work, CPU times move by tens of percent between runs, so a figure
is quoted as the median of three passes with its range and the load it was measured at. Usage::

    python benchmarks/passes.py hlt_poll -- benchmarks/bench_hlt_poll.py
    python benchmarks/passes.py epics_5000 --passes 3 -- benchmarks/bench_epics.py --pvs 5000 --no-store
    python benchmarks/passes.py --summarise rules      # again, from results/passes/rules.*.json

Pass i runs ``SCRIPT ARGS --out results/passes/NAME.i.json`` with this Python; its own JSON gets a
``pass`` entry (start, end, load averages before and after, command). ``results/NAME.json`` is then
the passes' tree with every numeric leaf as ``{"median": m, "range": [min, max]}`` (plus ``"n"``
when some passes lack it), other leaves as they are when every pass agrees, else
``{"per_pass": [...]}``; lists of one length in every pass are summarised item by item. Its
``passes`` entry lists each pass's file, dates and load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["run_passes", "summarise", "summarise_files"]

RESULTS = Path(__file__).resolve().parent / "results"
_MISSING = object()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarise(values: list[Any]) -> Any:
    """One summary of the same leaf or subtree over the passes (``_MISSING`` where a pass lacks it)."""
    present = [v for v in values if v is not _MISSING]
    if present and all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: summarise([v.get(k, _MISSING) if v is not _MISSING else _MISSING for v in values])
                for k in keys}
    if present and all(isinstance(v, list) for v in present) and len({len(v) for v in present}) == 1:
        return [summarise([v[i] if v is not _MISSING else _MISSING for v in values])
                for i in range(len(present[0]))]
    numbers = [v for v in present if _numeric(v)]
    if numbers and len(numbers) == len([v for v in present if v is not None]):
        out: dict[str, Any] = {"median": statistics.median(numbers), "range": [min(numbers), max(numbers)]}
        if len(numbers) < len(values):
            out["n"] = len(numbers)
        return out
    if len(values) == len(present) and all(v == present[0] for v in present):
        return present[0]
    return {"per_pass": [None if v is _MISSING else v for v in values]}


def _pass_index(path: Path) -> tuple[int, str]:
    tail = path.name.rsplit(".", 2)[-2]
    return (int(tail), "") if tail.isdigit() else (sys.maxsize, tail)


def summarise_files(name: str, files: list[Path], out: Path) -> dict[str, Any]:
    """Write the summary of the pass files ``files`` of benchmark ``name`` to ``out``."""
    docs = [json.loads(f.read_text()) for f in files]
    metas = [doc.pop("pass", {}) for doc in docs]
    passes = []
    for f, doc, meta in zip(files, docs, metas):
        machine = doc.get("machine") if isinstance(doc.get("machine"), dict) else {}
        passes.append({"file": os.path.relpath(f, out.parent), "started": meta.get("started"),
                       "ended": meta.get("ended"),
                       "load_average_before": meta.get("load_average_before", machine.get("load_average_at_start")),
                       "load_average_after": meta.get("load_average_after", machine.get("load_average_at_end")),
                       **{k: meta[k] for k in ("command", "note") if k in meta}})
    dates = sorted({p["started"][:10] for p in passes if p["started"]})
    summary = {"benchmark": name,
               "passes": {"count": len(files), "statistic": "median and range over the passes",
                          "dates": dates, "runs": passes},
               **{k: v for k, v in summarise(docs).items() if k != "benchmark"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def pass_files(name: str, results: Path = RESULTS) -> list[Path]:
    """The pass files of ``name`` in ``results/passes``, in pass order."""
    pattern = re.compile(re.escape(name) + r"\.[^.]+\.json")
    return sorted((p for p in (results / "passes").glob(f"{name}.*.json") if pattern.fullmatch(p.name)),
                  key=_pass_index)


def run_passes(name: str, command: list[str], passes: int = 3, results: Path = RESULTS) -> dict[str, Any]:
    """Run ``command`` (a script and its arguments) ``passes`` times, then summarise."""
    for old in pass_files(name, results):
        old.unlink()
    files = []
    for i in range(1, passes + 1):
        out = results / "passes" / f"{name}.{i}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, *command, "--out", str(out)]
        meta = {"index": i, "started": _now(), "load_average_before": list(os.getloadavg()),
                "command": " ".join([Path(sys.executable).name, *command])}
        print(f"passes: {name} pass {i}/{passes} (load {meta['load_average_before'][0]:.1f}): "
              f"{meta['command']}", flush=True)
        code = subprocess.call(argv)
        if code != 0 or not out.exists():
            raise SystemExit(f"passes: {name} pass {i}: {command[0]} exited with status {code}"
                             + ("" if out.exists() else f" and wrote no {out}"))
        doc = json.loads(out.read_text())
        doc["pass"] = {**meta, "ended": _now(), "load_average_after": list(os.getloadavg())}
        out.write_text(json.dumps(doc, indent=1) + "\n")
        files.append(out)
    return summarise_files(name, files, results / f"{name}.json")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 usage="%(prog)s NAME [--passes N] -- SCRIPT [ARGS…] | %(prog)s --summarise NAME")
    ap.add_argument("name", help="results/NAME.json and results/passes/NAME.I.json")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--summarise", action="store_true", help="only summarise the pass files there are")
    ap.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = ap.parse_args(own)
    if args.summarise:
        files = pass_files(args.name, args.results)
        if not files:
            ap.exit(2, f"passes: no pass files {args.results / 'passes' / args.name}.*.json\n")
        summarise_files(args.name, files, args.results / f"{args.name}.json")
    else:
        if not command or args.passes < 1:
            ap.exit(2, "passes: give a script after -- and --passes >= 1\n")
        run_passes(args.name, command, args.passes, args.results)
    print(f"passes: wrote {args.results / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
