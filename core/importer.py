"""Alias kept for existing scripts: `python -m core.importer` runs the member importer, which lives in core.workflows.importer."""

import sys

from core.workflows.importer import main

if __name__ == "__main__":
    sys.exit(main())
