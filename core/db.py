"""Alias kept for existing scripts: `python -m core.db` runs the database schema commands (upgrade, current), which lives in core.storage.db."""

import sys

from core.storage.db import main

if __name__ == "__main__":
    sys.exit(main())
