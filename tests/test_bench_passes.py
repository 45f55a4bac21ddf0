"""benchmarks/passes.py: the summary docs/performance.md quotes is the median and range of every
number over the passes, and each pass's date and load are kept."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def passes_module():
    spec = importlib.util.spec_from_file_location("bench_passes", ROOT / "benchmarks" / "passes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_summary_is_median_and_range_of_every_number(tmp_path):
    passes = passes_module()
    meta = {"started": "2026-12-07T17:22:33+00:00", "load_average_before": [4.1, 5.0, 6.0]}
    files = [
        write(tmp_path / "passes" / "x.1.json", {
            "benchmark": "x", "cpu_s": 0.2, "ok": True, "unit": "s", "rows": [{"c": 1, "wall": 9.0}],
            "only_here": 5, "flag": False, "pass": meta}),
        write(tmp_path / "passes" / "x.2.json", {
            "benchmark": "x", "cpu_s": 0.9, "ok": True, "unit": "s", "rows": [{"c": 1, "wall": 3.0}],
            "flag": True}),
        write(tmp_path / "passes" / "x.3.json", {
            "benchmark": "x", "cpu_s": 0.3, "ok": True, "unit": "s", "rows": [{"c": 1, "wall": 5.0}],
            "only_here": None, "flag": False}),
    ]
    assert passes.pass_files("x", tmp_path) == files
    summary = passes.summarise_files("x", files, tmp_path / "x.json")

    assert json.loads((tmp_path / "x.json").read_text()) == summary
    assert summary["cpu_s"] == {"median": 0.3, "range": [0.2, 0.9]}
    assert summary["rows"] == [{"c": {"median": 1, "range": [1, 1]}, "wall": {"median": 5.0, "range": [3.0, 9.0]}}]
    assert summary["only_here"] == {"median": 5, "range": [5, 5], "n": 1}
    assert summary["ok"] is True and summary["unit"] == "s"
    assert summary["flag"] == {"per_pass": [False, True, False]}
    runs = summary["passes"]["runs"]
    assert [r["file"] for r in runs] == ["passes/x.1.json", "passes/x.2.json", "passes/x.3.json"]
    assert runs[0]["load_average_before"] == [4.1, 5.0, 6.0] and runs[1]["load_average_before"] is None
    assert summary["passes"]["dates"] == ["2026-12-07"]


def test_runner_runs_the_script_per_pass_and_refuses_a_failing_one(tmp_path):
    passes = passes_module()
    script = tmp_path / "bench_tiny.py"
    script.write_text(
        "import argparse, json, os\n"
        "ap = argparse.ArgumentParser(); ap.add_argument('--fail', action='store_true'); ap.add_argument('--out')\n"
        "a = ap.parse_args()\n"
        "if a.fail:\n    raise SystemExit(3)\n"
        "open(a.out, 'w').write(json.dumps({'pid': os.getpid()}))\n")
    write(tmp_path / "passes" / "tiny.9.json", {"pid": -1})  # a stale pass of an earlier run is not counted

    summary = passes.run_passes("tiny", [str(script)], passes=2, results=tmp_path)

    assert sorted(p.name for p in (tmp_path / "passes").iterdir()) == ["tiny.1.json", "tiny.2.json"]
    assert summary["passes"]["count"] == 2 and summary["pid"]["range"][0] > 0
    assert all(r["load_average_after"] and r["ended"] for r in summary["passes"]["runs"])
    with pytest.raises(SystemExit, match="tiny pass 1: .* exited with status 3"):
        passes.main(["tiny", "--results", str(tmp_path), "--", str(script), "--fail"])
