"""The KPI page's self-measurement section: the false-match rate at the approve point counted on
the members' own pairs, its trend, and the pairs that reached the approve point for a person to
open and judge (core.dashboard.self_measurement holds everything it shows)."""

from __future__ import annotations

import streamlit as st

from core.dashboard import self_measurement as svc
from ui.page import PageContext
from ui.resources import get_store
from ui.widgets import show_photo

RUNNERS = ("data_scientist", "admin")  # who may start a measurement by hand


def section(ctx: PageContext) -> None:
    st.subheader(ctx.t("selfm.title"))
    with ctx.session() as session:
        view = svc.kpi_view(session, ctx.lang)
        trend = svc.trend_frame(session)
    (st.warning if view.alert else st.info)(view.headline)
    st.caption(ctx.t("selfm.caption"))
    if view.measured_on:
        st.caption(ctx.t("selfm.measured_on", day=view.measured_on, version=view.model_version))
    for line in view.per_gender:
        st.markdown(f"- {line}")
    if view.fnmr_line:
        st.markdown(f"- {view.fnmr_line}")
    if ctx.role in RUNNERS and st.button(ctx.t("selfm.run_now"), key="selfm_run"):
        with ctx.session() as session:
            job = svc.start_measurement(session, ctx.username)
        st.success(ctx.t("selfm.run_started", job=job))
    if not trend.empty:
        st.markdown(f"**{ctx.t('selfm.trend')}**")
        st.line_chart(trend, x="measured_on", y="fmr_upper", color="gender")
    if view.summary is None:
        return
    st.markdown(f"**{ctx.t('selfm.pairs')}**")
    if not view.pairs:
        st.caption(ctx.t("selfm.pairs_none"))
        return
    if view.pairs_note:
        st.caption(view.pairs_note)
    labels = [f"{p.member_a} · {p.member_b} · {p.similarity:.4f}" for p in view.pairs]
    chosen = st.selectbox(ctx.t("selfm.pairs"), labels, key="selfm_pair")
    pair = view.pairs[labels.index(chosen)]
    with ctx.session() as session:
        photo_a, photo_b = svc.pair_photos(session, get_store(), pair, ctx.username)
    columns = st.columns(2)
    for column, member, data in ((columns[0], pair.member_a, photo_a), (columns[1], pair.member_b, photo_b)):
        column.caption(member)
        if data:
            show_photo(column, data, width=220)  # inline: no /media address for a member's photo
    same, different = st.columns(2)
    for column, is_same, label in (
        (same, True, "selfm.pair_same"),
        (different, False, "selfm.pair_different"),
    ):
        if column.button(ctx.t(label), key=f"selfm_verdict_{is_same}"):
            with ctx.session() as session:
                svc.record_verdict(session, pair, is_same, ctx.username)
            st.success(ctx.t("selfm.pair_saved"))
