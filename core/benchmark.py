"""Alias kept for existing scripts: `python -m core.benchmark` runs the verification benchmark, which lives in core.benchmarks.verification."""

import sys

from core.benchmarks.verification import main

if __name__ == "__main__":
    sys.exit(main())
