"""benchmarks/bench_nab.py scores as NAB does: an early alarm in a window is worth the full point,
a late one less, a missed window costs one, an alarm outside costs 0.11 (less right after a
window), the probationary start is not scored, and ONE threshold serves every file.

The expected numbers are worked out by hand from NAB's scaled sigmoid, 2 / (1 + e^(5x)) - 1.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_nab", ROOT / "benchmarks" / "bench_nab.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


B = _bench()
N = 1000                 # points per file; probation = 150
WINDOW = (500, 599)      # width 100


def sigmoid(x: float) -> float:
    return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


@pytest.fixture()
def nab(tmp_path: Path) -> Path:
    """A NAB-shaped folder: two files of one category, one window each."""
    ts = pd.date_range("2014-04-01", periods=N, freq="5min")
    labels = {}
    for name in ("a.csv", "b.csv"):
        folder = tmp_path / "data" / "realTest"
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": np.arange(N, dtype=float)}).to_csv(
            folder / name, index=False)
        labels[f"realTest/{name}"] = [[str(ts[WINDOW[0]]), str(ts[WINDOW[1]])]]
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "combined_windows.json").write_text(json.dumps(labels))
    return tmp_path


def alarms(*at: int) -> np.ndarray:
    s = np.zeros(N)
    s[list(at)] = 1.0
    return s


def score(files, *per_file: tuple[int, ...]) -> dict:
    return B.best_threshold(files, [alarms(*at) for at in per_file])


def test_an_alarm_at_the_window_start_is_perfect_and_at_its_end_worth_little(nab: Path) -> None:
    files = B.load(nab)
    assert [f.windows for f in files] == [[WINDOW], [WINDOW]]
    assert score(files, (500,), (500,))["score"] == 100.0
    late = sigmoid(-1 / 100) / sigmoid(-1.0)          # the last point of the window
    assert score(files, (599,), (599,))["score"] == pytest.approx(100 * (2 * late + 2) / 4, abs=0.01)
    # Only the best (first) alarm of a window counts: a second one adds nothing.
    assert score(files, (500, 550), (500,))["score"] == 100.0


def test_misses_false_alarms_and_the_probation(nab: Path) -> None:
    files = B.load(nab)
    # One window found, one missed: (1 - 1 - (-2)) / (2 - (-2)).
    assert score(files, (500,), ())["score"] == 50.0
    # An alarm before any window costs A_FP = 0.11 in full; one in the probation costs nothing.
    assert score(files, (300, 500), (500,))["raw"] == pytest.approx(2 - 0.11)
    assert score(files, (100, 500), (500,))["raw"] == pytest.approx(2.0)
    # Right after a window an alarm is a late detection of the same event: it costs less.
    after = score(files, (500, 600), (500,))["raw"]
    assert after == pytest.approx(2 + 0.11 * sigmoid(1 / 99)) and 2 - 0.11 < after < 2
    # Alarms that only cost are not worth raising: the best shared threshold raises none.
    never = score(files, (300,), (300,))
    assert never["score"] == 0.0 and never["hits"] == 0 and never["threshold"] == math.inf


def test_the_command_writes_every_detector_with_its_figures(nab: Path, tmp_path: Path) -> None:
    out = tmp_path / "nab.json"
    assert B.main(["--data", str(nab), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["files"] == ["realTest/a.csv", "realTest/b.csv"]
    assert set(result["detectors"]) == {"farmwatch", "rolling_z", "never_fires"}
    assert result["detectors"]["never_fires"]["score"] == 0.0
    assert "fa_0.99" in result["detectors"]["farmwatch"] and "fa_0.99" not in result["detectors"]["rolling_z"]
