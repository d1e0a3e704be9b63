"""python -m core.api: serve the HTTP API (or manage its keys); see core.api.main."""

import sys

from core.api import main

sys.exit(main())
