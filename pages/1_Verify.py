"""Verify: one pair (a member from the database, or two uploaded photos, or the camera), or a batch."""

import hashlib

import streamlit as st

from core.dashboard import formatting, members, page_batches, uploads
from core.dashboard import profiles as profile_svc
from core.dashboard import verify as svc
from core.dashboard.codes import GALLERY, VERIFICATION
from core.dashboard.formatting import local_time
from ui.page import engine_or_message, model_available, page_context
from ui.resources import get_jobs
from ui.widgets import file_input, job_progress, pair_result, results_view, scroll_here, show_photo

ctx = page_context("verify")
st.title(ctx.t("page.verify"))
has_model = model_available(ctx)  # the model itself is loaded on the first click (or already warm)

# Only the open tab runs (on_change): answering one pair does not redraw the batch tables. The
# open tab is also kept by position, so it survives a language switch.
TAB_LABELS = [ctx.t("verify.tab_pair"), ctx.t("verify.tab_batch")]


def remember_tab():
    st.session_state["verify_tab_index"] = TAB_LABELS.index(st.session_state["verify_tab"])


tab_pair, tab_batch = st.tabs(
    TAB_LABELS,
    key="verify_tab",
    on_change=remember_tab,
    default=TAB_LABELS[st.session_state.get("verify_tab_index", 0)],
)


# ----------------------------------------------------------------------------------------------
# One pair


def photo_check(data: bytes):
    """What the capture check finds on the photo just taken, before it is submitted."""
    key = (hashlib.sha256(data).hexdigest(), ctx.lang)
    if st.session_state.get("verify_capture_key") != key:  # once per photo, not on every rerun
        st.session_state["verify_capture_view"] = svc.check_captured_photo(data, ctx.lang)
        st.session_state["verify_capture_key"] = key
    view = st.session_state["verify_capture_view"]
    st.markdown(f"**{ctx.t('capture.title')}**")
    if view.error:
        st.error(view.error)
        return
    cols = st.columns([1, 2])
    show_photo(cols[0], view.image)
    if view.ok:
        cols[1].success(ctx.t("capture.ok"))
        return
    cols[1].warning(ctx.t("capture.fix_first"))
    for line in view.lines:
        (cols[1].error if line["hides_face"] else cols[1].warning)(
            f"**{line['title']}** — {line['instruction']}"
        )


def challenge_block(member_id: str | None) -> str | None:
    """The pose challenge for a photo taken now: asked for here, shown in big plain words in both
    languages (the page's first), used by the next verification. Returns its token."""
    held = st.session_state.get("verify_challenge")
    if held is not None and held.member_id != (member_id or "").strip():
        held = st.session_state["verify_challenge"] = None  # another member now: that pose is not theirs
    with st.container(border=True):
        st.markdown(f"**{ctx.t('verify.challenge_title')}**")
        st.caption(ctx.t("verify.challenge_help"))
        asked = st.button(
            ctx.t("verify.challenge_again" if held else "verify.challenge_new"),
            key="verify_challenge_new",
            icon=":material/record_voice_over:",
            disabled=not (member_id or "").strip(),
        )
        if asked:
            try:
                held = st.session_state["verify_challenge"] = svc.new_challenge(
                    ctx.session_factory, member_id or "", ctx.username
                )
            except svc.PairInputError as exc:
                st.error(exc.text(ctx.lang))
        if held is None:
            return None
        st.markdown(ctx.t("verify.challenge_say"))
        # Large type for members in their sixties: the page's language first, the other below.
        first, *others = sorted(held.instructions, key=lambda lang: lang != ctx.lang)
        st.header(held.instructions[first], anchor=False)
        for lang in others:
            st.subheader(held.instructions[lang], anchor=False)
        st.caption(ctx.t("verify.challenge_expires", time=local_time(held.expires_at)))
        return held.token


# ----------------------------------------------------------------------------------------------
# Several gallery photos: a selfie against the member's whole profile (core.dashboard.profiles)


def profile_block(member_id: str | None, gender: str | None):
    uploads_ = file_input(ctx, st, "profile.photos_upload", "photo", "profile_photos_files", several=True)
    selfie = file_input(ctx, st, "profile.selfie_upload", "photo", "profile_selfie_file")
    if not st.button(ctx.t("profile.run"), disabled=not has_model, key="profile_run"):
        answer = st.session_state.get("profile_answer")
    elif selfie is None or (not uploads_ and mode_is_new(member_id)):
        st.error(ctx.t("profile.need_photos"))
        answer = None
    elif (engine := engine_or_message(ctx)) is None:
        answer = None
    else:
        try:
            with st.spinner(ctx.t("verify.running")):
                answer = profile_svc.verify_profile(
                    ctx.session_factory,
                    engine,
                    ctx.store,
                    ctx.username,
                    member_id or "",
                    registered_gender=gender,
                    selfie_bytes=selfie.getvalue(),
                    profile_bytes=[u.getvalue() for u in uploads_ or []],
                )
            st.session_state["profile_answer"] = answer
        except svc.PairInputError as exc:
            st.error(exc.text(ctx.lang))
            answer = None
    if not answer or answer.get("member_id") != member_id:
        return
    st.markdown(
        ctx.t(
            "profile.outcome",
            status=ctx.t(f"status.{answer['status']}"),
            flagged=answer["flagged_photos"] or "—",
        )
    )
    with ctx.session() as session:
        strip = profile_svc.profile_strip(session, ctx.store, member_id, ctx.username, svc.PAGE, public=True)
    cols = st.columns(max(1, min(len(strip), 6)))
    for i, photo in enumerate(strip):
        caption = ctx.t(
            "profile.photo_caption", position=photo.position, state=ctx.t(f"profile.state.{photo.state}")
        )
        if photo.image is not None:
            show_photo(cols[i % len(cols)], photo.image, caption=caption)
        if photo.reason and photo.state != "matches":
            cols[i % len(cols)].caption(photo.reason)


def mode_is_new(member_id: str | None) -> bool:
    with ctx.session() as session:
        return not member_id or not profile_svc.member_exists(session, member_id)


def pair_tab():
    mode = st.radio(
        ctx.t("verify.mode"),
        ["member", "upload"],
        format_func=lambda m: ctx.t(f"verify.mode.{m}"),
        horizontal=True,
        key="verify_mode",
    )
    member_id, gender, gallery_bytes, verification_bytes = None, None, None, None
    if mode == "member":
        search = st.text_input(ctx.t("verify.member_search"), key="verify_member_search")
        with ctx.session() as session:
            matches = members.find_members(session, search, page_size=50)
        if not matches:
            st.info(ctx.t("verify.no_members"))
        else:
            by_id = {m.id: m for m in matches}
            member_id = st.selectbox(
                ctx.t("verify.member"),
                list(by_id),
                format_func=lambda i: (
                    f"{i} · {ctx.t(f'gender.{by_id[i].gender}')} · {ctx.t(f'member_status.{by_id[i].status}')}"
                ),
                key="verify_member",
            )
            gender = by_id[member_id].gender
    else:
        cols = st.columns(2)
        member_id = cols[0].text_input(ctx.t("verify.member_id"), key="verify_new_member", max_chars=64)
        gender = cols[1].selectbox(
            ctx.t("verify.registered_gender"),
            ["M", "F"],
            index=None,
            format_func=lambda g: ctx.t(f"gender.{g}"),
            placeholder=ctx.t("verify.choose"),
            key="verify_gender",
        )
        upload = file_input(ctx, st, "verify.gallery_upload", "photo", "verify_gallery_file")
        gallery_bytes = upload.getvalue() if upload else None

    sources = ["stored", "upload", "camera"] if mode == "member" else ["upload", "camera"]
    source = st.radio(
        ctx.t("verify.verification_source"),
        sources,
        format_func=lambda s: ctx.t(f"verify.source.{s}"),
        horizontal=True,
        key=f"verify_source_{mode}",
    )
    challenge_token = None
    if source == "upload":
        upload = file_input(ctx, st, "verify.verification_upload", "photo", "verify_verification_file")
        verification_bytes = upload.getvalue() if upload else None
        # A file is rarely taken this minute: the pose check comes after both upload fields, folded.
        with st.expander(
            ctx.t("verify.challenge_for_upload"), expanded=bool(st.session_state.get("verify_challenge"))
        ):
            challenge_token = challenge_block(member_id)
    elif source == "camera":
        challenge_token = challenge_block(member_id)
        shot = st.camera_input(ctx.t("verify.camera"), key="verify_camera", help=ctx.t("verify.camera_help"))
        verification_bytes = shot.getvalue() if shot else None
        if verification_bytes:
            photo_check(verification_bytes)

    # The result shown belongs to this exact input: another mode, member or photo hides it.
    current_input = svc.input_key(mode, member_id, gender, source, gallery_bytes, verification_bytes)
    if st.session_state.get("verify_outcome_input") != current_input:
        st.session_state.pop("verify_outcome", None)
    if st.button(
        ctx.t("verify.run"),
        type="primary",
        disabled=not has_model,
        key="verify_run",
        icon=":material/search:",
    ):
        missing = []
        if mode == "upload" and gallery_bytes is None:
            missing.append(ctx.t("photo.gallery"))
        if source != "stored" and verification_bytes is None:
            missing.append(ctx.t("photo.verification"))
        if missing:
            st.error(ctx.t("verify.missing_photos", which=", ".join(missing)))
        elif (engine := engine_or_message(ctx)) is not None:
            try:
                with st.spinner(ctx.t("verify.running")):
                    outcome = svc.verify_pair(
                        ctx.session_factory,
                        engine,
                        ctx.store,
                        ctx.username,
                        member_id or "",
                        registered_gender=gender,
                        gallery_bytes=gallery_bytes,
                        verification_bytes=verification_bytes,
                        challenge_token=challenge_token,
                    )
                st.session_state["verify_outcome"] = outcome
                st.session_state["verify_outcome_input"] = current_input
                st.session_state["verify_scroll_to_result"] = True
                if challenge_token:
                    st.session_state["verify_challenge"] = None  # used up: the next photo needs a new one
            except svc.PairInputError as exc:
                st.session_state.pop("verify_outcome", None)
                if exc.key.startswith("verify.challenge_"):
                    st.session_state["verify_challenge"] = None
                st.error(exc.text(ctx.lang))

    outcome = st.session_state.get("verify_outcome")
    if outcome is not None:
        st.divider()
        # Only on the run that produced it: the answer scrolled into view (below the fold at 1024x768).
        scroll_here("verify-result", st.session_state.pop("verify_scroll_to_result", False))
        with ctx.session() as session:
            svc.record_pair_views(session, outcome.result_id, ctx.username)
        pair_result(ctx, outcome)
    elif mode == "member" and member_id:
        # Before the first run: the member's stored photos, so staff see whom they verify.
        kinds = [GALLERY] if source != "stored" else [GALLERY, VERIFICATION]
        with ctx.session() as session:
            shown = svc.stored_photos_for_view(session, ctx.store, member_id, kinds, ctx.username)
        preview = st.columns(4)
        for i, kind in enumerate(kinds):
            if kind not in shown:
                continue
            if shown[kind] is None:
                preview[i].caption(ctx.t("photo.missing"))
            else:
                show_photo(preview[i], shown[kind], caption=ctx.t(f"photo.{kind}"))

    with st.expander(ctx.t("profile.verify_title")):
        profile_block(member_id, gender)


# ----------------------------------------------------------------------------------------------
# Batch


def batch_tab():
    jobs = get_jobs()
    current_key = st.session_state.get("verify_job")
    current = jobs.get(current_key) if current_key else None
    busy = current is not None and current.alive

    batch_source = st.radio(
        ctx.t("batch.source"),
        ["zip", "members"],
        format_func=lambda s: ctx.t(f"batch.source.{s}"),
        horizontal=True,
        key="batch_source",
    )
    if batch_source == "zip":
        st.caption(ctx.t("batch.manifest_help"))
        st.download_button(
            ctx.t("batch.template"),
            uploads.manifest_template(),
            file_name="manifest_template.csv",
            mime="text/csv",
            key="batch_template",
        )
        cols = st.columns(2)
        manifest = file_input(ctx, cols[0], "batch.manifest", "table", "batch_manifest")
        photo_zip = file_input(ctx, cols[1], "batch.zip", "zip", "batch_zip")
        name = st.text_input(ctx.t("batch.name"), key="batch_name_zip")
        if st.button(
            ctx.t("batch.start"), type="primary", disabled=not has_model or busy, key="batch_start_zip"
        ):
            if manifest is None or photo_zip is None:
                st.error(ctx.t("batch.need_files"))
            else:
                manifest_bytes, zip_bytes = manifest.getvalue(), photo_zip.getvalue()
                check = uploads.check_batch_upload(manifest_bytes, manifest.name, zip_bytes)
                if not check.ok:
                    st.error(ctx.t("batch.refused", n=len(check.problems)))
                    for key, params in check.problems[:50]:
                        st.markdown(f"- {ctx.t(key, **params)}")
                    if len(check.problems) > 50:
                        st.caption(ctx.t("batch.more_problems", n=len(check.problems) - 50))
                elif (engine := engine_or_message(ctx)) is not None:
                    job, started = jobs.start_upload(
                        ctx.session_factory,
                        engine,
                        ctx.store,
                        ctx.username,
                        manifest_bytes,
                        manifest.name,
                        zip_bytes,
                        name=name or None,
                    )
                    st.session_state["verify_job"] = job.key
                    st.session_state["batch_notice"] = None if started else "batch.attached"
                    st.rerun()
    else:
        only_pending = st.checkbox(ctx.t("batch.only_pending"), value=True, key="batch_only_pending")
        with ctx.session() as session:
            options = [m.id for m in members.find_members(session, page_size=500)]
        chosen = st.multiselect(
            ctx.t("batch.pick_members"), options, key="batch_members", placeholder=ctx.t("batch.all_members")
        )
        name = st.text_input(ctx.t("batch.name"), key="batch_name_members")
        clicked = st.button(
            ctx.t("batch.start"), type="primary", disabled=not has_model or busy, key="batch_start_members"
        )
        if clicked and (engine := engine_or_message(ctx)) is not None:
            job, started = jobs.start_members(
                ctx.session_factory,
                engine,
                ctx.store,
                ctx.username,
                chosen or None,
                only_pending=only_pending,
                name=name or None,
                source="members",
            )
            st.session_state["verify_job"] = job.key
            st.session_state["batch_notice"] = None if started else "batch.attached"
            st.rerun()

    if st.session_state.get("batch_notice"):
        st.info(ctx.t(st.session_state.pop("batch_notice")))
    if busy:
        st.info(ctx.t("batch.busy"))
    if st.session_state.get("verify_job"):
        st.divider()

        def show_results(batch_id):
            # A batch that has just finished opens in the picker below, once: the user may then
            # pick another without being sent back to it.
            if st.session_state.get("verify_followed_batch") != batch_id:
                st.session_state["verify_followed_batch"] = batch_id
                st.session_state["verify_open_select"] = batch_id

        job_progress(ctx, st.session_state["verify_job"], "verify_job", on_done=show_results)

    st.divider()
    st.subheader(ctx.t("batch.recent"))
    with ctx.session() as session:
        recent = svc.recent_batches(session, lang=ctx.lang)
    if recent.empty:
        st.caption(ctx.t("batch.none_yet"))
    else:
        st.dataframe(
            formatting.table(recent, ctx.lang, formats={"status": "batch_status"}),
            hide_index=True,
            width="stretch",
        )
        ids = recent["batch_id"].tolist()
        if st.session_state.get("verify_open_select") not in ids:
            st.session_state["verify_open_select"] = ids[0]
        names = dict(zip(recent["batch_id"], recent["name"], strict=True))
        opened = st.selectbox(
            ctx.t("batch.open"), ids, format_func=lambda i: f"#{i} {names[i]}", key="verify_open_select"
        )
        with ctx.session() as session:
            state = page_batches.batch_state(session, opened)
            can_resume = state is not None and svc.resumable(state[0], state[1], jobs.can_resume_now(opened))
        if can_resume and has_model:
            st.warning(ctx.t("batch.can_resume", status=ctx.t(f"batch_status.{state[0]}")))
            if st.button(ctx.t("batch.resume"), key="batch_resume", disabled=busy):
                engine = engine_or_message(ctx)
                if engine is not None:
                    job, started = jobs.resume(ctx.session_factory, engine, ctx.store, ctx.username, opened)
                    st.session_state["verify_job"] = job.key
                    st.rerun()
        results_view(ctx, opened, key="batch_results")


with tab_pair:
    if tab_pair.open:
        pair_tab()
with tab_batch:
    if tab_batch.open:
        batch_tab()
