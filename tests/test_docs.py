"""The examples in the documentation are valid: every TOML block of the README and the rule
reference parses as what it shows (rules, or a config), so the docs cannot rot silently."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from farmwatch.alerting.rules import parse_rules
from farmwatch.config.loader import parse

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "rules.md"]


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


def test_the_configuration_reference_is_current():
    """docs/config.md is generated from the config models (`make docs`); a new or changed key
    without a regenerated reference fails here."""
    from farmwatch.config.reference import reference

    path = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    assert path.read_text() == reference(), "docs/config.md is out of date: run `make docs`"
