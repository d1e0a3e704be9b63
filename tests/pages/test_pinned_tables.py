"""Tables cut at 1024 px keep their key column in view: Members, Users and the Retrain versions pin
their first column (st.dataframe column_config pinned=True)."""

from __future__ import annotations

import pytest
import streamlit as st
from test_pages import sample_members


@pytest.mark.parametrize(
    ("page", "role"), [("members", "staff"), ("users", "admin"), ("pages/5_Retrain.py", "data_scientist")]
)
def test_the_key_column_is_pinned(app_env, models_copy, open_page, monkeypatch, page, role):
    drawn = []
    original = st.dataframe

    def dataframe(data, *args, **kwargs):
        drawn.append(kwargs.get("column_config") or {})
        return original(data, *args, **kwargs)

    monkeypatch.setattr(st, "dataframe", dataframe)
    sample_members(app_env)
    open_page(page, role, "en", timeout=60)
    pinned = [config for config in drawn if any(c.get("pinned") for c in config.values())]
    assert pinned, drawn
