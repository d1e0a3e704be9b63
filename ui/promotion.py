"""Promote or discard a candidate model version: the Retrain page's trained candidate and its
re-fitted approve point alike (core.dashboard.retrain decides and audits)."""

from __future__ import annotations

import streamlit as st

from core.dashboard import retrain
from core.errors import FaceVerifyError, ModelError
from ui.page import PageContext


def promote_or_discard(
    ctx: PageContext,
    version: str,
    active: str | None,
    set_notice,
    *,
    key: str,
    confirm_text: str,
    promote_label: str,
) -> None:
    """A tick that confirms, Promote (only once ticked) and Discard; each reruns the page with a notice."""
    left, right = st.columns(2)
    confirm = left.checkbox(confirm_text, key=f"{key}_confirm_{version}")
    if left.button(
        promote_label,
        type="primary",
        disabled=not confirm,
        key=f"{key}_promote_{version}",
        icon=":material/rocket_launch:",
    ):
        if _switch(ctx, lambda s: retrain.promote(s, version, ctx.username, expected_active=active)):
            set_notice("success", ctx.t("retrain.promoted", version=version))
            st.rerun()
    if right.button(ctx.t("retrain.discard"), key=f"{key}_discard_{version}", icon=":material/delete:"):
        if _switch(ctx, lambda s: retrain.discard(s, version, ctx.username)):
            set_notice("info", ctx.t("retrain.discarded", version=version))
            st.rerun()


def _switch(ctx: PageContext, change) -> bool:
    try:
        with ctx.session() as session:
            change(session)
    except (FaceVerifyError, ModelError) as exc:
        st.error(ctx.t("retrain.switch_failed", detail=str(exc)))
        return False
    return True
