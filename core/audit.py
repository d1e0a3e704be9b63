"""Alias: `python -m core.audit verify` checks the audit log's hash chain (core.storage.audit)."""

import sys

from core.storage.audit import main

if __name__ == "__main__":
    sys.exit(main())
