"""`python -m ui.serve [streamlit run options]`: the dashboard's server, as run.sh starts it.

Imports what the sign-in page needs (SQLAlchemy, the schema, the access rules) before Streamlit
starts listening, as a preloading server does, then runs `streamlit run ui/app.py`: Home.py and its
pages, with the dashboard's one-time download route beside them (ui/app.py). Otherwise the first
visitor's page waited for those imports (about 0.4 s of its 2 s on the 2-core machine).
"""

from __future__ import annotations

import sys
from pathlib import Path

import ui.page  # noqa: F401  (the import is the point: Home.py finds it loaded)


def main(argv: list[str]) -> None:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli

    # Every run starts at the entry, which lists the pages with st.navigation: without this, the
    # process's very first request would run a pages/ script directly (Streamlit's folder mode).
    PagesManager.uses_pages_directory = False
    sys.argv = ["streamlit", "run", str(Path(__file__).with_name("app.py")), *argv]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
