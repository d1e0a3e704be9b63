"""The Retrain page's re-fit of the approve point on the members' own impostor pairs: the comparison
(approve point, measured false-match rate, automation; now and re-fitted), writing the re-fitted
version, and its promotion (core.dashboard.self_measurement and core.dashboard.retrain hold it all;
rollback is the Versions panel's)."""

from __future__ import annotations

import streamlit as st

from core.dashboard import self_measurement as svc
from core.errors import FaceVerifyError
from ui.page import PageContext
from ui.promotion import promote_or_discard


def section(ctx: PageContext, versions, active: str | None, set_notice) -> None:
    with st.container(border=True):
        st.markdown(f"**{ctx.t('selfm.refit.title')}**")
        st.caption(ctx.t("selfm.refit.intro"))
        with ctx.session() as session:
            view = svc.refit_view(session, ctx.lang)
        (st.info if view.available else st.warning)(view.message)
        if view.rows:
            st.dataframe(view.rows, hide_index=True, width="stretch")
        pending = svc.pending_refit(versions, active)
        if (
            view.available
            and not pending
            and st.button(ctx.t("selfm.refit.write"), key="selfm_refit_write", icon=":material/tune:")
        ):
            try:
                with ctx.session() as session:
                    name = svc.refit_approve_at(session, view.run_id, ctx.username)
            except (FaceVerifyError, OSError) as exc:
                st.error(ctx.t("selfm.refit.failed", detail=str(exc)))
                return
            set_notice("success", ctx.t("selfm.refit.written", version=name))
            st.rerun()
        if pending:
            _promote(ctx, pending, active, set_notice)


def _promote(ctx: PageContext, version: str, active: str | None, set_notice) -> None:
    approve_at = svc.version_approve_at(version)
    st.info(ctx.t("selfm.refit.pending", version=version, approve_at=f"{approve_at:.6f}"))
    promote_or_discard(
        ctx,
        version,
        active,
        set_notice,
        key="selfm_refit",
        confirm_text=ctx.t("selfm.refit.confirm", version=version, active=active or "—"),
        promote_label=ctx.t("selfm.refit.promote"),
    )
