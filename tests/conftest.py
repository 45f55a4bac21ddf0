"""Shared test setup: everything the tests need is started by the tests themselves."""

import os

os.environ.setdefault("COLUMNS", "200")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``farmwatch demo --speed 0`` once per test session (about two minutes of CPU): its output
    folder and the finished process. The demo test checks what it printed; the notebook tests
    run against the store it wrote."""
    out = tmp_path_factory.mktemp("demo")
    done = subprocess.run([sys.executable, "-m", "farmwatch", "demo", "--speed", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    return out, done
