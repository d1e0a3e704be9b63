"""The rule for the MySQL tests: skipped locally without a server, a failure when CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "mysql+pymysql://root@127.0.0.1:9"  # the discard port: no server answers there


def run_mysql_test(ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "FACEVERIFY_TEST_MYSQL_URL")}
    env["TEST_MYSQL_URL"] = NOWHERE
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rs",
            "-m",
            "mysql",
            "tests/services/test_photostore.py",
            "tests/db/test_db_schema.py::test_init_db_is_idempotent",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unreachable_server_skips_locally():
    result = run_mysql_test(ci=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "not reachable" in result.stdout


def test_unreachable_server_fails_in_ci():
    result = run_mysql_test(ci="true")
    assert result.returncode != 0
    assert "CI=true: the MySQL tests must run, not skip" in result.stdout
