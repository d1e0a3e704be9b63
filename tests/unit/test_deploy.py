"""The deployment examples (deploy/: Procfile, systemd units, compose file) name commands, options
and settings that exist: every `python -m` command's options are in its own --help, every setting
is one the code reads, the SeaweedFS command line is the one the tests run. (Docker itself is not
run here.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _commands() -> list[str]:
    lines = []
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        if line and not line.startswith("#"):
            lines.append(line.split(":", 1)[1])
    for unit in (DEPLOY / "systemd").glob("*.service"):
        lines += [m[1] for m in re.finditer(r"^ExecStart=(.*)$", unit.read_text(), re.M)]
    lines += [
        m[1] for m in re.finditer(r"^\s+command: (\.venv.*)$", (DEPLOY / "compose.yaml").read_text(), re.M)
    ]
    return lines


@pytest.mark.parametrize("command", _commands())
def test_every_command_and_option_exists(command):
    words = shlex.split(command)
    if "streamlit" in words[0]:
        assert (ROOT / words[2]).exists()
        return
    start = words.index("-m") + 1
    # `python -m core api serve --port ...`: the module and its subcommands come before the options
    first_option = next((i for i, w in enumerate(words) if w.startswith("--")), len(words))
    command_words = words[start:first_option]
    done = subprocess.run(
        [sys.executable, "-m", *command_words, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{' '.join(command_words)} is not a command: {done.stderr[-500:]}"
    for option in (w for w in words if w.startswith("--")):
        assert option in done.stdout, f"{' '.join(command_words)} has no option {option}"


def test_every_setting_is_read_by_the_code():
    code = "\n".join(p.read_text() for p in (ROOT / "core").rglob("*.py"))
    names = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (DEPLOY / "systemd" / "faceverify.env").read_text(), re.M))
    names |= set(re.findall(r"^    ([A-Z][A-Z0-9_]+): ", (DEPLOY / "compose.yaml").read_text(), re.M))
    names -= {"MARIADB_DATABASE", "MARIADB_USER", "MARIADB_PASSWORD", "MARIADB_RANDOM_ROOT_PASSWORD"}
    assert {"DATABASE_URL", "PHOTO_STORE_URL", "JOB_BROKER_URL", "AWS_ENDPOINT_URL_S3"} <= names
    for name in names - {"TF_CPP_MIN_LOG_LEVEL"}:
        assert f'"{name}"' in code, f"{name} is not a setting the code reads"


def test_seaweedfs_identity_matches_the_app_credentials():
    import json

    compose = (DEPLOY / "compose.yaml").read_text()
    identity = json.loads((DEPLOY / "seaweedfs-s3.json").read_text())["identities"][0]["credentials"][0]
    assert f"AWS_ACCESS_KEY_ID: {identity['accessKey']}" in compose
    assert f"AWS_SECRET_ACCESS_KEY: {identity['secretKey']}" in compose
