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


def test_the_builtin_model_kinds_are_the_ones_the_registry_has():
    """detect.settings checks a family's kind against BUILTIN_KINDS without importing the model
    registry (pandas); the two lists must not drift apart."""
    from farmwatch.detect.models import MODELS
    from farmwatch.detect.settings import BUILTIN_KINDS

    assert set(BUILTIN_KINDS) == set(MODELS)


HEAVY = ("pandas", "sklearn", "scipy", "joblib", "tsfresh", "zmq", "elasticsearch", "pyzabbix", "requests")
PROBE = """
import sys
from farmwatch.cli.main import main
code = main(sys.argv[1:])
print(code, " ".join(sorted(m for m in {heavy} if m in sys.modules)))
"""


def test_read_commands_do_not_import_heavy_libraries(tmp_path):
    """With a [detect] section and two sources in the config, no read command imports the heavy
    libraries, and none but query (which reads samples) imports numpy: check-config and rules
    check validate every rule without reading data, alerts, silence and logs search open the store
    file without its time series, models list reads the models' sidecars
    (benchmarks/bench_startup.py measures the time)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_startup import make_store
    finally:
        sys.path.pop(0)
    make_store(tmp_path)
    for argv in (["alerts"], ["alerts", "--history"], ["silence", "list"], ["logs", "search", "skipped"],
                 ["models", "list"], ["check-config"], ["rules", "check"],
                 ["query", "hlt.output.ready_queue_size", "--since", "10m"]):
        heavy = HEAVY if argv[0] == "query" else (*HEAVY, "numpy")
        done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=heavy), *argv, "-c", "farmwatch.toml"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        code, _, loaded = done.stdout.strip().splitlines()[-1].partition(" ")
        assert code == "0", done.stderr
        assert loaded == "", f"farmwatch {' '.join(argv)} imported {loaded}"
