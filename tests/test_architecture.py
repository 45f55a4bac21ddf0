"""The package's shape, checked: one-way imports (import-linter's contracts in pyproject.toml),
and read commands that do not load the heavy libraries they do not use."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    """Layers cli > service > config loader > alerting > detect > store > sources > config >
    helpers; nothing in the product imports the simulators; command modules independent."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is not installed (it is in the [test] extra)"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
