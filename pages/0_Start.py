"""Home: today's KPIs against their targets, the review backlog, the pages of your role, the demo data."""

import streamlit as st

from ui.page import engine_or_message, page_context
from ui.resources import PROJECT_ROOT, get_jobs, warm_engine_in_background

ctx = page_context("home")

# Loaded once signed in, so the sign-in form (the first page anyone sees) does not wait for them.
from core.dashboard import home  # noqa: E402
from core.dashboard.access import PAGES  # noqa: E402
from core.dashboard.formatting import MIN_COUNT, basis_text, target_text, today_local, zone_name  # noqa: E402
from ui.widgets import job_progress  # noqa: E402

st.title(ctx.t("app.title"))
st.caption(ctx.t("home.welcome", name=ctx.display_name or ctx.username, role=ctx.t(f"role.{ctx.role}")))

with ctx.session() as session:
    summary = home.today_summary(session)
kpi = summary.kpi

st.subheader(ctx.t("home.today", day=today_local().isoformat(), zone=zone_name()))
if kpi.n_results == 0:
    st.info(ctx.t("home.no_results_today"))


# Three cards a row: five in one row cut their numbers on a 1024 px laptop beside the sidebar.
CARDS_PER_ROW = 3
cards = home.cards(summary)
columns = [c for start in range(0, len(cards), CARDS_PER_ROW) for c in st.columns(CARDS_PER_ROW)]
for column, card in zip(columns, cards, strict=False):
    with column.container(border=True):
        st.metric(ctx.t(card.label), card.shown)
        st.caption(
            f"{ctx.t('home.target')} {target_text(card.target)} · {ctx.t(f'home.state.{card.state}', min=MIN_COUNT)}"
        )
        if card.rate is not None:
            st.caption(basis_text(card.rate, card.what, ctx.lang, say_too_few=False))
        elif card.count:
            st.caption(ctx.t("home.latency_basis", n=card.count))
st.caption(
    ctx.t(
        "home.counts",
        results=kpi.n_results,
        auto=kpi.n_auto,
        reviewed=kpi.n_approved + kpi.n_rejected,
        batches=summary.batches_today,
    )
)

if summary.backlog_total and ctx.can("review"):
    st.page_link(
        "pages/2_Review_Queue.py",
        label=ctx.t("home.go_review", n=summary.backlog_total),
        icon=":material/rule:",
    )

st.subheader(ctx.t("home.your_pages"))
for page in PAGES:
    if page.key == "home" or not ctx.can(page.key) or not (PROJECT_ROOT / page.path).exists():
        continue
    st.page_link(
        page.path, label=f"{ctx.t(f'page.{page.key}')} — {ctx.t(f'home.about.{page.key}')}", icon=page.icon
    )

if home.demo_data_allowed_here(ctx.role):
    st.subheader(ctx.t("home.demo"))
    st.caption(ctx.t("home.demo_help"))
    left, right = st.columns(2)
    if left.button(ctx.t("home.load_sample"), key="load_sample", icon=":material/download:"):
        with st.spinner(ctx.t("members.importing")), ctx.session() as session:
            counts = home.load_sample(session, ctx.username, ctx.store)
        st.success(ctx.t("members.import_done", **counts))
    if right.button(ctx.t("home.run_sample"), key="run_sample", icon=":material/play_arrow:"):
        engine = engine_or_message(ctx)
        if engine is not None:
            job, started = get_jobs().start_members(
                ctx.session_factory,
                engine,
                ctx.store,
                ctx.username,
                None,
                only_pending=True,
                name="sample",
                source="sample",
                before=home.sample_loader(ctx.username, ctx.store),
            )
            st.session_state["home_job"] = job.key
            if not started:
                st.info(ctx.t("batch.attached"))
    if st.session_state.get("home_job"):
        job_progress(ctx, st.session_state["home_job"], "home_job")

if ctx.can("verify"):
    warm_engine_in_background()  # now that the page is drawn: the first pair then need not wait
