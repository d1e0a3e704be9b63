"""What one run of each page calls, for the scale benchmark (core.benchmarks.scale) to time.

page_runs(session_factory) -> (pages, interactions, clear_caches)
    pages: name -> callable, a page's first load; interactions: name -> callable, the same
    page again with nothing new written (what a click on it costs); clear_caches() empties
    the caches the pages keep, so the next first load is a first load again
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from core.dashboard import home, kpis, members, retrain, users
from core.dashboard.formatting import today_local
from core.storage import queries
from core.storage.schema import Member


def page_runs(factory):
    today = today_local()
    with factory() as session:
        versions = kpis.model_versions(session)
        member = session.scalar(select(Member.id).order_by(Member.id).limit(1))
    active = versions[-1] if versions else ""

    def kpi_run(days: int, per: str):
        def run():
            date_from = today - timedelta(days=days)
            shown = kpis.shown_per(per, date_from, today)
            with factory() as session:
                kpis.model_versions(session)
                frame = kpis.kpi_frame(session, date_from, today, None, per=shown)
                kpis.period_basis(session, date_from, today, None, "en")
            for chart in kpis.KPI_CHARTS:
                kpis.kpi_figure(frame, chart, "en", per="batch" if shown == "batch" else "day")
            kpis.kpi_table(frame, "en")

        return run

    def with_session(*calls):
        def run():
            with factory() as session:
                for call in calls:
                    call(session)

        return run

    pages = {
        "home": with_session(home.today_summary, queries.backlog_count),
        "members.first_load": with_session(
            lambda s: members.list_page(
                s,
                search=None,
                gender=None,
                status=None,
                created_from=None,
                created_to=None,
                page=1,
                page_size=50,
            )
        ),
        "members.open_member": with_session(lambda s: members.member_detail(s, member, "bench")),
        "review.first_load": with_session(
            lambda s: queries.review_queue(s, limit=50), queries.queue_flag_counts
        ),
        "kpis.first_load_30_days": kpi_run(30, "batch"),
        "kpis.year_per_day": kpi_run(366, "day"),
        "kpis.year_per_batch": kpi_run(366, "batch"),
        "retrain.first_load": with_session(
            retrain.data_available, lambda s: retrain.reverify_counts(s, active)
        ),
        "users.first_load": with_session(users.audit_chain, users.users_frame, users.sign_in_locks),
    }
    interactions = {
        "kpis.interaction": pages["kpis.year_per_day"],
        "retrain.interaction": pages["retrain.first_load"],
        "users.interaction": pages["users.first_load"],
    }

    def clear_caches():
        kpis._CACHE.clear()
        retrain._CACHE.clear()

    return pages, interactions, clear_caches
