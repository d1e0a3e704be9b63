"""The settings: one declaration each (core.config.SETTINGS), typed values, and the docs' table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

from core import config

READERS = {"setting", "get", "declared"}


def _names_read_in_code() -> set[str]:
    """Every string literal passed to config.setting / config.get / config.declared in the product."""
    names = set()
    files = [*ROOT.joinpath("core").rglob("*.py"), *ROOT.joinpath("ui").rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in READERS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "config"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value)
    return names


def test_every_setting_read_by_name_is_declared():
    read = _names_read_in_code()
    assert read, "the scan found no setting at all"
    undeclared = sorted(read - {s.name for s in config.SETTINGS})
    assert not undeclared, undeclared


def test_each_declaration_says_its_type_and_meaning_once():
    names = [s.name for s in config.SETTINGS]
    assert len(names) == len(set(names))
    for item in config.SETTINGS:
        assert item.type in (str, int, float, bool, Path), item
        assert len(item.meaning) > 10, item
        assert item.default is None or isinstance(item.default, item.type), item


def test_the_operations_page_holds_the_generated_table():
    page = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert config.settings_table() in page, "run `python -m core settings --markdown` into docs/operations.md"


def test_an_undeclared_name_is_refused():
    with pytest.raises(KeyError, match="not a declared setting"):
        config.setting("NO_SUCH_SETTING")


def test_values_are_typed_and_defaults_apply(monkeypatch):
    monkeypatch.delenv("API_MAX_IN_FLIGHT", raising=False)
    assert config.get("API_MAX_IN_FLIGHT") == 8
    monkeypatch.setenv("API_MAX_IN_FLIGHT", "3")
    assert config.get("API_MAX_IN_FLIGHT") == 3
    monkeypatch.setenv("API_DOCS", "off")
    assert config.get("API_DOCS") is False
    monkeypatch.setenv("MODELS_DIR", "/srv/models")
    assert config.models_dir() == Path("/srv/models")


def test_a_bad_value_names_the_setting(monkeypatch):
    monkeypatch.setenv("API_MAX_IN_FLIGHT", "many")
    with pytest.raises(config.SettingError, match="API_MAX_IN_FLIGHT must be a whole number"):
        config.get("API_MAX_IN_FLIGHT")
    monkeypatch.setenv("API_DOCS", "perhaps")
    with pytest.raises(config.SettingError, match="API_DOCS must be on or off"):
        config.get("API_DOCS")


def test_secrets_are_masked_when_listed(monkeypatch):
    monkeypatch.setenv("PHOTO_ENCRYPTION_KEY", "a-secret-key-value")
    item = config.declared("PHOTO_ENCRYPTION_KEY")
    assert config.shown_value(item) == "****"
