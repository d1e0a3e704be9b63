"""The dashboard's entry (`streamlit run Home.py`; run.sh starts it through ui.serve): language,
sign-in, and the navigation of the signed-in role. The start page itself is pages/0_Start.py."""

from ui.page import run_app

run_app()
