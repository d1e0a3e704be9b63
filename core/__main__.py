"""python -m core <command>: the product's command line (core.cli; also the `faceverify` script)."""

import sys

from core.cli import main

if __name__ == "__main__":
    sys.exit(main())
