"""The command line (core.cli): every command's --help says what it does in one line, and the
commands no other test runs do their work on a real database and photo store."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from core import cli
from core.storage.encryption import KEY_SETTING
from core.storage.photostore import PhotoStore


def _commands(parser, path=()):
    """(words, parser) of every command and subcommand."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, sub in action.choices.items():
            yield (*path, name), sub
            yield from _commands(sub, (*path, name))


def test_every_command_says_what_it_does_in_one_line():
    parser = cli.build_parser()
    commands = dict(_commands(parser))
    groups = {words[0] for words in commands}
    assert groups == {
        "verify", "import", "db", "train", "bench", "api", "worker", "run-job", "erase", "export",
        "retention", "search", "users", "audit", "store", "settings", "self-measure",
    }  # fmt: skip
    for words in [
        ("db", "upgrade"),
        ("api", "create-key"),
        ("search", "enrol-missing"),
        ("store", "rotate-key"),
    ]:
        assert words in commands
    for words, sub in commands.items():
        assert sub.description and "\n" not in sub.description.strip(), words


def test_help_lists_the_commands_through_python_dash_m():
    done = subprocess.run(
        [sys.executable, "-m", "core", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    for name in ("verify", "import", "bench", "api", "worker", "erase", "store"):
        assert f"    {name}" in done.stdout


def test_unknown_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["audit", "verify", "--no-such-option"])
    assert stopped.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_db_current_and_upgrade(db_url, capsys):
    assert cli.main(["db", "upgrade", "--url", db_url]) == 0
    assert cli.main(["db", "current", "--url", db_url]) == 0
    out = capsys.readouterr().out
    assert "at revision" in out and "(head is" in out


def test_api_keys_listed_and_revoked(db_url, capsys):
    assert cli.main(["api", "create-key", "--name", "crm", "--role", "reader", "--url", db_url]) == 0
    key = capsys.readouterr().out.strip()
    assert cli.main(["api", "list-keys", "--url", db_url]) == 0
    listed = capsys.readouterr().out
    assert "crm" in listed and key not in listed and "active" in listed
    assert cli.main(["api", "revoke-key", "--name", "crm", "--url", db_url]) == 0
    assert cli.main(["api", "revoke-key", "--name", "crm", "--url", db_url]) == 1  # none left


def test_store_new_key_and_rotation(tmp_path, monkeypatch, capsys):
    assert cli.main(["store", "new-key"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{KEY_SETTING}=")
    store = PhotoStore(tmp_path / "photos")
    store.put(b"plain photo bytes, written before encryption was on")
    monkeypatch.setenv("PHOTO_STORE_URL", str(tmp_path / "photos"))
    monkeypatch.setenv(KEY_SETTING, line.split("=", 1)[1])
    assert cli.main(["store", "rotate-key", "--dry-run"]) == 0
    assert "would rewrite 1, 0 already" in capsys.readouterr().out
    assert cli.main(["store", "rotate-key"]) == 0
    assert "rewrote 1, 0 already" in capsys.readouterr().out
    assert cli.main(["store", "rotate-key"]) == 0
    assert "rewrote 0, 1 already" in capsys.readouterr().out


def test_train_parses_its_own_arguments(capsys, tmp_path):
    """`train` lists the training arguments itself, and refuses a people file it cannot read before
    any photo goes through a network (exit 2, the reason on stderr)."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", "--help-pipeline"])
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--images", "--people", "--json", "--set", "--cohort", "--gender-only", "--promote"):
        assert option in shown
    people = tmp_path / "people.csv"
    people.write_text("person,sex\nAnn_Lee,F\n")
    images = ROOT / "data" / "sample" / "images"
    with pytest.raises(SystemExit) as stopped:
        cli.main(
            ["train", "--images", str(images), "--people", str(people), "--json", str(tmp_path / "o.json")]
        )
    assert stopped.value.code == 2 and "missing column(s) gender" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
