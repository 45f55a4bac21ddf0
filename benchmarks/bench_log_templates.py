"""Log templates: grouping and parsing accuracy on labelled real logs, against drain3's default, and
the speed of the log pipeline with templates against the same pipeline without them.

Accuracy (``--data``, default ``tests/data/loghub-dev``: Loghub-2k, eight systems, every line
labelled with its true template): for each system, farmwatch's miner (``TemplateMiner().templates``:
every message learnt, then each given its settled template, what ``farmwatch.analysis.log_templates``
returns) and drain3 in its default configuration (no masking: ``drain3.TemplateMiner()``, the
cluster ``add_log_message`` gives each line, the cluster's final template) on the same messages, in
the same run. Grouping accuracy (GA) and parsing accuracy (PA) as in
``farmwatch.logtemplates.evaluate``; the mean over the systems. One configuration for every system.
Any other folder of the same layout (``<System>/<System>_2k.log_structured.csv``) can be given with
``--data`` and ``--systems`` (the other systems of the collection).

Speed: ``benchmarks/bench_logs.py``'s workload (``--size``) through ``LogFilesSource.poll`` +
``bulk_body`` with templates and without (``templates = false``), ``--runs`` passes each,
interleaved, CPU seconds of this process (``time.process_time``: per core, whatever else the shared
machine runs); medians and ranges.

Writes ``benchmarks/results/log_templates.json``; needs ``pip install 'farmwatch[bench]'`` (drain3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_logs import farmwatch as ship, generate, machine, size_arg  # noqa: E402
from farmwatch.logtemplates import TemplateMiner  # noqa: E402
from farmwatch.logtemplates.evaluate import grouping_accuracy, load_labelled, parsing_accuracy  # noqa: E402

SYSTEMS = ("Android", "Apache", "HDFS", "Hadoop", "HealthApp", "Mac", "OpenStack", "Zookeeper")


def farmwatch_templates(messages: list[str]) -> tuple[list[str], list[str]]:
    found = TemplateMiner().templates(messages)
    return [t.id for t in found], [t.text for t in found]


def drain3_default(messages: list[str]) -> tuple[list[int], list[str]]:
    import logging

    from drain3 import TemplateMiner as Drain3
    from drain3.template_miner_config import TemplateMinerConfig

    logging.getLogger("drain3").setLevel(logging.ERROR)
    miner = Drain3(config=TemplateMinerConfig())  # the defaults, no masking, no drain3.ini
    ids = [miner.add_log_message(m)["cluster_id"] for m in messages]
    templates = {c.cluster_id: c.get_template() for c in miner.drain.clusters}
    return ids, [templates[i] for i in ids]


def accuracy(data: Path, systems: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {"farmwatch": {}, "drain3 default": {}}
    print(f"{'system':<12} {'lines':>6} {'farmwatch GA':>13} {'PA':>6} {'us/line':>8}   {'drain3 GA':>9} {'PA':>6} {'us/line':>8}")
    for system in systems:
        messages, groups, true = load_labelled(data, system)
        row = []
        for name, fn in (("farmwatch", farmwatch_templates), ("drain3 default", drain3_default)):
            t0 = time.process_time()
            ids, texts = fn(messages)
            cpu = time.process_time() - t0
            out[name][system] = {"ga": grouping_accuracy(ids, groups), "pa": parsing_accuracy(texts, true),
                                 "us_per_line": cpu / len(messages) * 1e6}
            row.append(out[name][system])
        f, d = row
        print(f"{system:<12} {len(messages):>6} {f['ga']:>13.3f} {f['pa']:>6.3f} {f['us_per_line']:>8.1f}   "
              f"{d['ga']:>9.3f} {d['pa']:>6.3f} {d['us_per_line']:>8.1f}", flush=True)
    for name in out:
        per = out[name]
        out[name]["mean"] = {k: statistics.mean(v[k] for v in per.values()) for k in ("ga", "pa", "us_per_line")}
    f, d = out["farmwatch"]["mean"], out["drain3 default"]["mean"]
    print(f"{'mean':<12} {'':>6} {f['ga']:>13.3f} {f['pa']:>6.3f} {f['us_per_line']:>8.1f}   "
          f"{d['ga']:>9.3f} {d['pa']:>6.3f} {d['us_per_line']:>8.1f}")
    return out


def speed(size: int, runs: int, folder: Path) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench-log-templates-{os.getpid()}.log.tmp"
    try:
        lines, records = generate(path, size)
        cpu: dict[str, list[float]] = {"with templates": [], "without templates": []}
        for _ in range(runs):  # interleaved, so a change of the machine's load hits both alike
            for name, templates in (("with templates", True), ("without templates", False)):
                t0 = time.process_time()
                got, _ = ship(path, serialise=True, templates=templates)
                cpu[name].append(time.process_time() - t0)
                assert got == records, (got, records)
        out: dict[str, object] = {"bytes": path.stat().st_size, "lines": lines, "records": records, "runs": runs}
        for name, values in cpu.items():
            rates = sorted(lines / c for c in values)
            out[name] = {"cpu_s": values, "lines_per_cpu_s_median": statistics.median(rates),
                         "lines_per_cpu_s_range": [rates[0], rates[-1]]}
            print(f"log pipeline {name:<18} {statistics.median(rates):>10,.0f} lines/s per core "
                  f"(range {rates[0]:,.0f}–{rates[-1]:,.0f}, {runs} passes)", flush=True)
        w = out["with templates"]["lines_per_cpu_s_median"]  # type: ignore[index]
        wo = out["without templates"]["lines_per_cpu_s_median"]  # type: ignore[index]
        out["cost_of_templates_us_per_line"] = (1 / w - 1 / wo) * 1e6
        out["meets_80k"] = w >= 80_000
        return out
    finally:
        path.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "tests" / "data" / "loghub-dev")
    ap.add_argument("--systems", nargs="*", default=list(SYSTEMS))
    ap.add_argument("--size", type=size_arg, default=size_arg("64MB"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "log_templates.json")
    args = ap.parse_args()
    info = machine()
    doc: dict[str, object] = {"benchmark": "log_templates", "machine": info, "data": str(args.data),
                              "accuracy": accuracy(args.data, args.systems)}
    if not args.skip_speed:
        doc["speed"] = speed(args.size, args.runs, args.dir)
    doc["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
