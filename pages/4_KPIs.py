"""KPIs: per-batch (or per-day) accuracy, gender accuracy, latency, automation and backlog, against targets."""

from datetime import timedelta

import streamlit as st

from core.dashboard import formatting, kpi_targets
from core.dashboard import kpis as svc
from core.dashboard import profiles as profile_svc
from ui.page import page_context
from ui.self_measurement import section as self_measurement_section

ctx = page_context("kpis")
st.title(ctx.t("page.kpis"))

today = formatting.today_local()
with ctx.session() as session:
    versions = svc.model_versions(session)

cols = st.columns([2, 1.2, 1.2, 1.4])
period = cols[0].date_input(
    ctx.t("kpi.period", zone=formatting.zone_name()),
    value=(today - timedelta(days=30), today),
    key="kpi_period",
    max_value=today,
)
version = cols[1].selectbox(
    ctx.t("kpi.model_version"),
    ["", *versions],
    format_func=lambda v: v or ctx.t("kpi.all_versions"),
    key="kpi_version",
)
per = cols[2].radio(
    ctx.t("kpi.per"),
    ["batch", "day", "week", "month"],
    format_func=lambda p: ctx.t(f"kpi.per.{p}"),
    key="kpi_per",
    horizontal=True,
)
include_single = cols[3].checkbox(
    ctx.t("kpi.include_single"),
    value=False,
    key="kpi_single",
    disabled=per != "batch",
    help=ctx.t("kpi.include_single_help"),
)

# A range being picked arrives as one date until the second click.
date_from, date_to = (period[0], period[-1]) if isinstance(period, tuple) and period else (None, None)
if svc.shown_per(per, date_from, date_to) != per:
    per = svc.shown_per(per, date_from, date_to)
    st.caption(ctx.t("kpi.per_week_shown", days=svc.DAYS_SHOWN_PER_DAY))
with ctx.session() as session:
    frame = svc.kpi_frame(
        session, date_from, date_to, version or None, per=per, include_single=include_single, lang=ctx.lang
    )

    if frame.empty and per == "batch" and not include_single:
        # Only one-pair verifications in this period: show them rather than nothing.
        frame = svc.kpi_frame(
            session, date_from, date_to, version or None, per=per, include_single=True, lang=ctx.lang
        )
        if not frame.empty:
            st.info(ctx.t("kpi.only_single"))
    period_lines = svc.period_basis(session, date_from, date_to, version or None, ctx.lang)

st.caption(ctx.t("kpi.definitions"))

# Members whose whole profile is verified (verified, and every photo they show is them).
with ctx.session() as session:
    verified_profiles, profile_members = profile_svc.verified_profile_share(session)
if profile_members:
    st.metric(ctx.t("kpi.verified_profiles"), f"{verified_profiles / profile_members:.1%}")
    st.caption(ctx.t("kpi.verified_profiles_help", verified=verified_profiles, members=profile_members))

with st.expander(ctx.t("kpi.compare_title")):
    if len(versions) < 2:
        st.caption(ctx.t("kpi.compare_none"))
    else:
        pick = st.columns(2)
        older = pick[0].selectbox(
            ctx.t("kpi.compare_old"), versions, index=len(versions) - 2, key="kpi_cmp_old"
        )
        newer = pick[1].selectbox(
            ctx.t("kpi.compare_new"), versions, index=len(versions) - 1, key="kpi_cmp_new"
        )
        if older == newer:
            st.caption(ctx.t("kpi.compare_same"))
        else:
            with ctx.session() as session:
                figures, changed, summary = svc.version_comparison(session, older, newer, ctx.lang)
            if not summary["members"]:
                st.caption(ctx.t("kpi.compare_none"))
            else:
                st.markdown(ctx.t("kpi.compare_summary", **summary))
                st.dataframe(figures, hide_index=True, width="stretch")
                if changed:
                    st.markdown(f"**{ctx.t('kpi.compare_changed', n=len(changed))}**")
                    st.dataframe(changed, hide_index=True, width="stretch")

# Measured on the members' own pairs: shown with or without reviewed results in the period.
self_measurement_section(ctx)

if frame.empty:
    st.info(ctx.t("kpi.no_data"))
    st.stop()

with st.expander(ctx.t("kpi.targets_title")):
    st.dataframe(
        [
            {
                ctx.t("kpi.target_kpi"): ctx.t(f"kpi.target_name.{target.name}"),
                ctx.t("kpi.target_value"): formatting.target_text(target),
                ctx.t("kpi.target_owner"): ctx.t(f"kpi.owner.{target.owner}"),
            }
            for target in kpi_targets.ALL
        ],
        hide_index=True,
    )

# One chart per row: side by side they were 60-170 px wide on a 1024 px screen, and Streamlit
# cannot know the window's width to choose.
for chart in svc.KPI_CHARTS:
    with st.container(border=True):
        st.markdown(f"**{ctx.t(f'kpi.chart.{chart}')}**")
        st.plotly_chart(
            svc.kpi_figure(frame, chart, ctx.lang, per="batch" if per == "batch" else "day"),
            width="stretch",
            key=f"kpi_chart_{chart}",
            config={"displaylogo": False},
        )
        if chart in period_lines:
            st.caption(period_lines[chart])
        st.download_button(
            ctx.t("kpi.download"),
            formatting.to_csv_bytes(svc.chart_frame(frame, chart)),
            file_name=f"kpi_{chart}_{per}.csv",
            mime="text/csv",
            key=f"kpi_download_{chart}",
            icon=":material/download:",
            on_click="ignore",  # a download never reruns the page
        )

with st.expander(ctx.t("kpi.all_figures")):
    st.dataframe(svc.kpi_table(frame, ctx.lang), hide_index=True, width="stretch")
    st.download_button(
        ctx.t("kpi.download_all"),
        formatting.to_csv_bytes(frame),
        file_name=f"kpi_all_{per}.csv",
        mime="text/csv",
        key="kpi_download_all",
        on_click="ignore",
    )
