#!/usr/bin/env bash
# Run the dashboard: sets up .venv on first use, prepares the database, starts Streamlit.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/python -m core db upgrade
exec .venv/bin/python -m ui.serve "$@"  # the dashboard (ui/app.py: Home.py and its pages), its sign-in modules loaded first
