"""The examples in the documentation are valid: every TOML block of the README and of the guides
in docs/ parses as what it shows (rules, a config, a rule unit test), and the generated references
are current, so the docs cannot rot silently."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from farmwatch.alerting.rules import parse_rules
from farmwatch.config.loader import parse

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + [ROOT / "docs" / f for f in ("rules.md", "alerting.md", "logs.md", "sources.md",
                                                          "detection.md", "operations.md")]


def toml_blocks():
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for i, found in enumerate(re.finditer(r"```toml\n(.*?)```", text, re.S)):
            line = text[: found.start()].count("\n") + 1
            yield pytest.param(found.group(1), f"{doc.name}:{line}", id=f"{doc.name}:{line}")


@pytest.mark.parametrize(("block", "where"), list(toml_blocks()))
def test_toml_examples_are_valid(block: str, where: str, monkeypatch) -> None:
    doc = tomllib.loads(block)
    if "rule" in doc:
        assert parse_rules(block, where)
    elif "rule_files" in doc:  # a rule unit test file
        from farmwatch.alerting.ruletest import RuleTestFile

        RuleTestFile.model_validate(doc)
    elif set(doc) <= {"store", "log", "sources", "alerting"}:
        parse(doc, where)
    # other fragments (a single kind's keys) are checked by the tests of that kind


@pytest.mark.parametrize("path", ["docs/config.md", "docs/series.md", "collectors/epics.toml",
                                  "collectors/hlt-zmq.toml", "collectors/logfiles.toml", "collectors/nsm.toml",
                                  "collectors/zabbix.toml"])
def test_generated_files_are_current(path):
    """docs/config.md (from the config models), docs/series.md and collectors/*.toml (from each
    source's folder) are written by `make docs`; a changed key, series or sample fails here."""
    from farmwatch.config.reference import generated

    files = generated()
    assert path in files, f"{path} is no longer generated"
    assert (ROOT / path).read_text() == files[path], f"{path} is out of date: run `make docs`"


def test_every_generated_file_is_in_the_repository():
    from farmwatch.config.reference import generated

    assert all((ROOT / path).exists() for path in generated()), "run `make docs` and commit what it writes"


def test_a_source_is_one_folder_with_its_sample_config_and_series():
    """What a new source brings: its folder (code, sample.toml, series.md) and its test. The
    sample is a whole collector config using that kind; the series page names the kind."""
    from farmwatch.sources import known_kinds, source_file

    for kind in known_kinds():
        doc = tomllib.loads(source_file(kind, "sample.toml"))
        assert {s["kind"] for s in doc["sources"].values()} == {kind}, kind
        parse(doc, f"{kind}/sample.toml")
        assert f'`kind = "{kind}"`' in source_file(kind, "series.md").splitlines()[0], kind
        assert (ROOT / "tests" / f"test_{kind}.py").exists(), f"no tests/test_{kind}.py"
