"""``stream_scores`` on the Numenta Anomaly Benchmark (NAB), scored the way NAB scores, against a
rolling z-score (bench_detect_public's) and a detector that never fires in the same run.

Data: ``--data`` is a NAB checkout (or any folder laid out like one): ``data/<category>/<file>.csv``
with ``timestamp,value`` columns and ``labels/combined_windows.json``. Nothing of it is in this
repository; files without windows in the labels are skipped, and the files scored are listed in the
result, so a run on part of NAB says which part.

Scoring, as NAB's standard profile describes it (Lavin & Ahmad, "Evaluating Real-time Anomaly
Detection Algorithms — the Numenta Anomaly Benchmark", 2015): each file's first 15 % (at most 750
points) is probationary and not scored; a point alarms when its score reaches the threshold; inside
a labelled window only the first alarm counts, worth ``sigma(position)`` (1 at the window's start,
falling towards 0 at its end: earlier is better); a window without an alarm costs ``A_FN`` = 1;
every alarm outside a window costs up to ``A_FP`` = 0.11 (less right after a window: a late
detection of the same event). ONE threshold is shared by all files, the best for each detector; the
total is normalised as ``100 * (S - S_null) / (S_perfect - S_null)``, where the null detector never
fires and the perfect one finds every window at its start and nothing else.

Also, for farmwatch: the share of points outside windows (after probation) scoring >= 0.99 and
>= 0.999 (the calibration promise), and for every detector CPU seconds per point.

Writes ``benchmarks/results/nab.json`` and prints a table overall and per category.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detect_public import A_FN, A_FP, A_TP, PROBATION, rolling_z  # noqa: E402

from farmwatch.detect import stream_scores  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PROBATION_MAX = 750                  # NAB: the probationary part is at most 15 % of 5,000 points


@dataclass
class File:
    name: str                          # "<category>/<file>.csv"
    ts: pd.DatetimeIndex
    values: np.ndarray
    windows: list[tuple[int, int]]     # first and last index of each labelled window
    weight: np.ndarray = field(init=False)   # what an alarm at each point is worth
    window: np.ndarray = field(init=False)   # each point's window (-1 outside, -2 probationary)

    def __post_init__(self) -> None:
        self.weight, self.window = point_weights(len(self.values), self.windows)


def load(data: Path) -> list[File]:
    labels = json.loads((data / "labels" / "combined_windows.json").read_text())
    files = []
    for path in sorted((data / "data").glob("*/*.csv")):
        name = f"{path.parent.name}/{path.name}"
        if not labels.get(name):
            continue
        frame = pd.read_csv(path)
        ts = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"]))
        windows = []
        for a, b in labels[name]:
            at_a, at_b = np.flatnonzero(ts == pd.Timestamp(a)), np.flatnonzero(ts == pd.Timestamp(b))
            if not (at_a.size and at_b.size):
                raise SystemExit(f"{path}: window {a} .. {b} is not at a timestamp of the file")
            windows.append((int(at_a[0]), int(at_b[0])))  # first occurrence: NAB's files repeat a few stamps
        files.append(File(name, ts, frame["value"].to_numpy(dtype=np.float64), windows))
    if not files:
        raise SystemExit(f"{data}: no data/<category>/<file>.csv with windows in labels/combined_windows.json")
    return files


def scaled_sigmoid(x: np.ndarray) -> np.ndarray:
    """NAB's weighting: 1 far before a window's end, 0 at it, -1 from three window widths on."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 3.0, -1.0, 2.0 / (1.0 + np.exp(np.minimum(5.0 * x, 700.0))) - 1.0)


def point_weights(n: int, windows: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per point: what an alarm there is worth, and its window (-1 outside, -2 probationary)."""
    weight = np.full(n, -A_FP)
    window = np.full(n, -1)
    top = float(scaled_sigmoid(-1.0))
    previous: tuple[int, int] | None = None
    for k, (left, right) in enumerate(windows):
        width = right - left + 1
        i = np.arange(left, right + 1)
        weight[i] = scaled_sigmoid(-(right - i + 1) / width) * A_TP / top
        window[i] = k
        previous = (right, width)
        stop = windows[k + 1][0] if k + 1 < len(windows) else n
        after = np.arange(right + 1, stop)
        weight[after] = scaled_sigmoid(np.abs(right - after) / max(previous[1] - 1, 1)) * A_FP
    window[: int(min(math.floor(PROBATION * n), PROBATION_MAX))] = -2
    return weight, window


def best_threshold(files: list[File], scores: list[np.ndarray]) -> dict:
    """Sweep every score as the shared threshold; NAB's total at the best one."""
    all_score, all_weight, all_window = [], [], []
    n_windows = 0
    for f, s in zip(files, scores):
        keep = f.window != -2
        window = f.window[keep]
        scored = np.unique(window[window >= 0])   # windows wholly in the probation are not scored
        all_window.append(np.where(window >= 0, n_windows + np.searchsorted(scored, window), -1))
        n_windows += len(scored)
        all_score.append(s[keep])
        all_weight.append(f.weight[keep])
    score, weight, window = np.concatenate(all_score), np.concatenate(all_weight), np.concatenate(all_window)
    order = np.argsort(-score, kind="stable")
    best_in = np.full(n_windows, -A_FN)
    total = -A_FN * n_windows
    best = (total, math.inf, 0, 0)
    hits = fps = 0
    for rank, i in enumerate(order):
        w = window[i]
        if w >= 0:
            if best_in[w] == -A_FN:
                hits += 1
            new = max(best_in[w], weight[i])
            total += new - best_in[w]
            best_in[w] = new
        else:
            fps += 1
            total += weight[i]
        last = rank + 1 == len(order) or score[order[rank + 1]] != score[i]
        if last and total > best[0]:
            best = (total, float(score[i]), hits, fps)
    null, perfect = -A_FN * n_windows, A_TP * n_windows
    raw, threshold, hits, fps = best
    return {"score": round(100.0 * (raw - null) / (perfect - null), 2), "threshold": threshold, "raw": raw,
            "windows": n_windows, "hits": hits, "false_alarm_points": fps}


def detect_farmwatch(f: File) -> np.ndarray:
    return stream_scores(f.ts, f.values)


def detect_rolling_z(f: File) -> np.ndarray:
    """The rolling z-score of bench_detect_public (|x - mean| / std of the previous 288 points)."""
    return rolling_z(f.values[:, None])[:, 0]


def detect_never(f: File) -> np.ndarray:
    return np.zeros(len(f.values))


DETECTORS: dict[str, Callable[[File], np.ndarray]] = {
    "farmwatch": detect_farmwatch, "rolling_z": detect_rolling_z, "never_fires": detect_never,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a NAB checkout (data/, labels/)")
    parser.add_argument("--out", type=Path, default=RESULTS / "nab.json")
    args = parser.parse_args(argv)
    files = load(args.data)
    categories = sorted({f.name.split("/")[0] for f in files})
    points = sum(len(f.values) for f in files)
    print(f"{len(files)} files, {points} points, {sum(len(f.windows) for f in files)} windows: {', '.join(categories)}")
    out: dict = {"data": str(args.data), "files": [f.name for f in files], "profile": "standard",
                 "weights": {"A_TP": A_TP, "A_FN": A_FN, "A_FP": A_FP}, "detectors": {}}
    for name, detect in DETECTORS.items():
        start = time.process_time()
        scores = [np.asarray(detect(f), dtype=np.float64) for f in files]
        cpu = time.process_time() - start
        result = best_threshold(files, scores)
        result["us_per_point"] = round(1e6 * cpu / points, 2)
        result["by_category"] = {}
        for c in categories:
            mine = [i for i, f in enumerate(files) if f.name.startswith(c + "/")]
            at = _at_threshold([files[i] for i in mine], [scores[i] for i in mine], result["threshold"])
            result["by_category"][c] = at
        if name == "farmwatch":  # the one score whose 0.99 means something (rolling z is in sigmas)
            outside = np.concatenate([s[f.window == -1] for f, s in zip(files, scores)])
            result["fa_0.99"] = round(float(np.mean(outside >= 0.99)), 5)
            result["fa_0.999"] = round(float(np.mean(outside >= 0.999)), 5)
        out["detectors"][name] = result
    print(f"{'detector':12s} {'NAB score':>9s} {'hits':>9s} {'false alarms':>12s} {'>=0.99':>8s} {'>=0.999':>8s}")
    for name, r in out["detectors"].items():
        rates = f"{100 * r['fa_0.99']:7.2f}% {100 * r['fa_0.999']:7.3f}%" if "fa_0.99" in r else ""
        print(f"{name:12s} {r['score']:9.1f} {r['hits']:>4d}/{r['windows']:<4d} {r['false_alarm_points']:12d} {rates}")
    for c in categories:
        print(f"  {c}: " + "  ".join(f"{n} {r['by_category'][c]['score']:.1f}" for n, r in out["detectors"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def _at_threshold(files: list[File], scores: list[np.ndarray], threshold: float) -> dict:
    """NAB's normalised score of a subset of files at a given (shared) threshold."""
    raw, n_windows, hits, fps = 0.0, 0, 0, 0
    for f, s in zip(files, scores):
        alarm = (s >= threshold) & (f.window != -2)
        for w in np.unique(f.window[f.window >= 0]):
            inside = alarm & (f.window == w)
            n_windows += 1
            hits += bool(inside.any())
            raw += max(float(f.weight[inside].max()), -A_FN) if inside.any() else -A_FN
        outside = alarm & (f.window == -1)
        fps += int(outside.sum())
        raw += float(f.weight[outside].sum())
    null, perfect = -A_FN * n_windows, A_TP * n_windows
    return {"score": round(100.0 * (raw - null) / (perfect - null), 2) if n_windows else None,
            "windows": n_windows, "hits": hits, "false_alarm_points": fps}


if __name__ == "__main__":
    raise SystemExit(main())
