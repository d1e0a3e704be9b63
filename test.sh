#!/usr/bin/env bash
# Run the tests: sets up .venv on first use, the browser and fonts for the UI test, then pytest.
# MySQL tests use mysql+pymysql://root@127.0.0.1:3306 (set TEST_MYSQL_URL to change it).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Chromium and a CJK font for the browser test" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
    else
        echo "Chromium or fonts-noto-cjk missing: install them (Debian: apt-get install chromium fonts-noto-cjk)" >&2
    fi
fi
export TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m pytest "$@"
