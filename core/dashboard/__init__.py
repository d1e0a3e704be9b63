"""What the Streamlit pages do, without Streamlit: each page in pages/ calls its own module here.

May import: core.verification, core.storage, core.workflows, core.training, core.i18n. Never streamlit."""
