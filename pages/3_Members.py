"""Members: search and filter with paging, one member's photos and history, the member import."""

import streamlit as st

from core.dashboard import formatting, home
from core.dashboard import members as svc
from core.dashboard import profiles as profile_svc
from core.dashboard.codes import ADMIN, MEMBER_STATUSES
from ui.page import page_context
from ui.resources import get_engine
from ui.widgets import file_input, pin_key_column, show_photo

ctx = page_context("members")
st.title(ctx.t("page.members"))

# Both tabs are drawn on every run; the open one is kept by position, so it survives a language switch.
TAB_LABELS = [ctx.t("members.tab_list"), ctx.t("members.tab_import")]


def remember_tab():
    st.session_state["members_tab_index"] = TAB_LABELS.index(st.session_state["members_tab"])


tab_list, tab_import = st.tabs(
    TAB_LABELS,
    key="members_tab",
    on_change=remember_tab,
    default=TAB_LABELS[st.session_state.get("members_tab_index", 0)],
)

with tab_list:
    cols = st.columns([2, 1, 1, 1, 1])
    search = cols[0].text_input(ctx.t("members.search"), key="members_search")
    gender = cols[1].selectbox(
        ctx.t("members.gender"),
        ["", "M", "F"],
        format_func=lambda g: ctx.t(f"gender.{g}") if g else ctx.t("members.any"),
        key="members_gender",
    )
    status = cols[2].selectbox(
        ctx.t("members.status"),
        ["", *MEMBER_STATUSES],
        format_func=lambda s: ctx.t(f"member_status.{s}") if s else ctx.t("members.any"),
        key="members_status",
    )
    created_from = cols[3].date_input(ctx.t("members.from"), value=None, key="members_from")
    created_to = cols[4].date_input(ctx.t("members.to"), value=None, key="members_to")

    filters = (search, gender, status, created_from, created_to)
    if st.session_state.get("members_filters") != filters:
        st.session_state["members_filters"] = filters
        st.session_state["members_page"] = 1  # new filters start at the first page
    page_size = 25
    with ctx.session() as session:
        page = svc.list_page(
            session,
            search=search,
            gender=gender,
            status=status,
            created_from=created_from,
            created_to=created_to,
            page=st.session_state.get("members_page", 1),
            page_size=page_size,
        )
    with st.container(horizontal=True, vertical_alignment="center"):
        if st.button(
            ctx.t("members.prev"), disabled=page.page <= 1, key="members_prev", icon=":material/chevron_left:"
        ):
            st.session_state["members_page"] = page.page - 1
            st.rerun()
        if st.button(
            ctx.t("members.next"),
            disabled=page.page >= page.pages,
            key="members_next",
            icon=":material/chevron_right:",
        ):
            st.session_state["members_page"] = page.page + 1
            st.rerun()
        st.caption(ctx.t("members.paging", page=page.page, pages=page.pages, total=page.total))

    frame = svc.members_frame(page)
    if frame.empty:
        st.info(ctx.t("members.none"))
    else:
        # A member opens by clicking its row. The table's key names the page and filters, so
        # another page or filter starts without a selection (a row number of the old page would
        # open someone else).
        st.caption(ctx.t("members.open_hint"))
        shown = formatting.table(frame, ctx.lang, formats={"status": "member_status"})
        picked = st.dataframe(
            shown,
            column_config=pin_key_column(shown),
            hide_index=True,
            width="stretch",
            height="content",
            on_select="rerun",
            selection_mode="single-row",
            key=svc.table_key(page.page, filters),
        )
        member_id = svc.selected_member(frame, picked.selection.rows)
        notice = st.session_state.pop("members_notice", None)
        if notice:
            st.success(notice)
        if member_id:
            with ctx.session() as session:
                history = svc.member_detail(session, member_id, ctx.username)
                shown = svc.photos_for_view(session, ctx.store, history.photos, ctx.username)
                photos = [(p.kind, p.current, data, formatting.local_time(p.created_at)) for p, data in shown]
                results = svc.history_frame(history)
                entries = svc.audit_frame(history.audit)
                member = history.member
                access = svc.access_history(session, member_id) if ctx.role == ADMIN else None
            st.subheader(ctx.t("members.detail", member=member.id))
            # The member's profile: each photo with its verdict, the member's face outlined.
            with ctx.session() as session:
                strip = profile_svc.profile_strip(session, ctx.store, member_id, ctx.username, svc.PAGE)
                has_badge = profile_svc.profiles.badge(session, member_id)
            if strip:
                st.markdown(f"**{ctx.t('profile.title')}**")
                (st.success if has_badge else st.info)(
                    ctx.t("profile.badge_on" if has_badge else "profile.badge_off")
                )
                cells = st.columns(max(1, min(len(strip), 9)))
                for i, shown in enumerate(strip):
                    state = ctx.t(f"profile.state.{shown.state}")
                    if shown.review_decision == "rejected":
                        state += f" · {ctx.t('profile.rejected')}"
                    if shown.image is not None:
                        caption = ctx.t("profile.photo_caption", position=shown.position, state=state)
                        show_photo(cells[i], shown.image, caption=caption)
            st.caption(
                ctx.t(
                    "members.detail_meta",
                    gender=ctx.t(f"gender.{member.gender}"),
                    status=ctx.t(f"member_status.{member.status}"),
                    created=formatting.local_time(member.created_at),
                    verified=formatting.local_time(member.last_verified_at) or "—",
                )
            )
            current = svc.gallery_first([p for p in photos if p[1]])
            old = [p for p in photos if not p[1]]
            pcols = st.columns(4)
            for i, (kind, _current, data, created) in enumerate(current[:4]):
                if data is None:
                    pcols[i].warning(ctx.t("photo.missing"))
                else:
                    # the column's width: a fixed 200 px overlapped the next column at 1024 px
                    show_photo(pcols[i], data, caption=f"{ctx.t(f'photo.{kind}')} · {created}")
            if old:
                with st.expander(ctx.t("members.old_photos", n=len(old))):
                    ocols = st.columns(4)
                    for i, (kind, _current, data, created) in enumerate(old):
                        if data is None:
                            ocols[i % 4].warning(ctx.t("photo.missing"))
                        else:
                            show_photo(ocols[i % 4], data, caption=f"{ctx.t(f'photo.{kind}')} · {created}")
            st.markdown(f"**{ctx.t('members.history')}**")
            if results.empty:
                st.caption(ctx.t("members.no_history"))
            else:
                st.dataframe(
                    formatting.table(results, ctx.lang),
                    hide_index=True,
                    width="stretch",
                    # Streamlit wraps a cell's text only in rows taller than 4rem: a reviewer's
                    # note then shows in full over a few lines instead of being cut off.
                    row_height=svc.WRAP_ROW_HEIGHT,
                    column_config={ctx.t("col.note"): st.column_config.TextColumn(width="large")},
                    key="members_history",
                )
            with st.expander(ctx.t("members.audit")):
                st.dataframe(
                    formatting.table(entries, ctx.lang),
                    hide_index=True,
                    width="stretch",
                    row_height=svc.WRAP_ROW_HEIGHT,
                    column_config={ctx.t("col.detail"): st.column_config.TextColumn(width="large")},
                )
            if access is not None:  # administrators: who saw this member's data, export, erasure
                st.markdown(f"**{ctx.t('members.access_history')}**")
                if access.empty:
                    st.caption(ctx.t("members.no_access"))
                else:
                    st.dataframe(formatting.table(access, ctx.lang), hide_index=True, width="stretch")
                cols = st.columns(2)
                if cols[0].button(ctx.t("members.export", member=member.id), key="members_export"):
                    # Built on disk and fetched once from the dashboard's own route by this sign-in
                    # (core.dashboard.downloads): never through a Streamlit /media address.
                    try:
                        with ctx.session() as session:
                            link = svc.export_link(session, ctx.store, member.id, ctx.username, ctx.sign_in)
                        st.session_state["members_export_link"] = (member.id, link)
                    except svc.ExportTooLarge:
                        limit = f"{svc.export_limit_mb():,}"
                        st.error(ctx.t("members.export_too_large", member=member.id, limit=limit))
                    except svc.NoSignIn:
                        st.error(ctx.t("members.export_sign_in_again"))
                ready = st.session_state.get("members_export_link")
                if ready and ready[0] == member.id:
                    cols[0].link_button(
                        ctx.t("members.export_download", member=member.id),
                        ready[1],
                        icon=":material/download:",
                    )
                    cols[0].caption(ctx.t("members.export_once", minutes=svc.export_link_minutes()))
                with cols[1].expander(ctx.t("members.erase", member=member.id)):
                    st.warning(ctx.t("members.erase_warning", member=member.id))
                    typed = st.text_input(
                        ctx.t("members.erase_confirm", member=member.id),
                        key=f"members_erase_typed_{member.id}",
                    )
                    if st.button(
                        ctx.t("members.erase_button", member=member.id),
                        type="primary",
                        disabled=typed.strip() != member.id,
                        key="members_erase",
                    ):
                        report = svc.erase(ctx.session_factory, ctx.store, member.id, ctx.username)
                        st.session_state.pop("members_export_link", None)
                        st.session_state["members_notice"] = ctx.t(
                            "members.erased",
                            member=member.id,
                            photos=report.removed.photos,
                            embeddings=report.removed.embeddings,
                        )
                        st.rerun()

with tab_import:
    st.caption(ctx.t("members.import_help"))
    demo = home.demo_data_allowed_here(ctx.role)  # administrators, embedded database only
    if demo and st.button(ctx.t("home.load_sample"), key="members_load_sample", icon=":material/download:"):
        with st.spinner(ctx.t("members.importing")), ctx.session() as session:
            reports = svc.load_sample(session, ctx.username, ctx.store)
        st.session_state["members_import_reports"] = reports
    cols = st.columns(2)
    table = file_input(ctx, cols[0], "members.import_file", "table", "members_import_file")
    photo_zip = file_input(ctx, cols[1], "members.import_zip", "zip", "members_import_zip")
    if st.button(
        ctx.t("members.import_run"), type="primary", key="members_import_run", disabled=table is None
    ):
        bar = st.progress(0.0, text=ctx.t("members.importing"))

        def progress(done, total):
            bar.progress(done / max(total, 1), text=ctx.t("members.import_progress", done=done, total=total))

        try:
            with ctx.session() as session:
                reports = svc.import_file(
                    session,
                    table.getvalue(),
                    photo_zip.getvalue() if photo_zip else None,
                    ctx.username,
                    table.name,
                    ctx.store,
                    progress=progress,
                    engine=get_engine,  # loaded only when a photo added to a verified member is checked
                )
            st.session_state["members_import_reports"] = reports
        except svc.ImportFileError as exc:
            st.session_state.pop("members_import_reports", None)
            st.error(ctx.t("members.import_refused"))
            for problem in svc.import_problems(exc, ctx.lang):
                st.markdown(f"- {problem}")
        bar.empty()
    reports = st.session_state.get("members_import_reports")
    if reports:
        counts = svc.import_counts(reports)
        (st.warning if counts[svc.IMPORT_REJECTED] else st.success)(ctx.t("members.import_done", **counts))
        st.dataframe(svc.import_report(reports, ctx.lang), hide_index=True, width="stretch")
