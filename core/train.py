"""Alias kept for existing scripts: `python -m core.train` runs training, which lives in core.training.pipeline."""

import sys

from core.training.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
