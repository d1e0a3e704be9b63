"""Review queue: flagged pairs in priority order, decided one after the other, from the keyboard.

The machine's verdict comes first, in a sentence. When it said "different people", could not tell,
or raised a gender mismatch or a fraud flag, no button is the default and Approve needs the
reviewer's explicit confirmation (checked on the server, whatever key was pressed).

Keys (Streamlit button shortcuts): Alt+A approve, Alt+X reject, Alt+S skip. Shortcuts do not fire
inside a text field, so after typing a note press Tab, then the shortcut. The note survives an
expired session: it is shown again after signing in.
"""

import streamlit as st

from core.dashboard import formatting, photos
from core.dashboard import profiles as profile_svc
from core.dashboard import review as svc
from core.dashboard.codes import GALLERY, VERIFICATION
from ui.auth import drop_draft, restore_draft
from ui.page import page_context
from ui.widgets import flags_list, gender_text, photo_column, show_photo

ctx = page_context("review")
st.title(ctx.t("page.review"))

skipped: list[int] = st.session_state.setdefault("review_skipped", [])


def decide_submitted() -> None:
    """Apply a decision submitted for the pair shown last time, before the queue is read again.

    Handled from the widgets' state (not from the form drawn below), so a decision on a pair
    that someone else decided meanwhile is answered with "already decided" instead of vanishing.
    """
    result_id = st.session_state.get("review_current")
    if result_id is None:
        return
    pressed = [d for d in ("approve", "reject", "skip") if st.session_state.get(f"review_{d}_{result_id}")]
    if not pressed:
        return
    if pressed[0] == "skip":
        skipped.append(result_id)
        return
    decision = svc.APPROVE if pressed[0] == "approve" else svc.REJECT
    if decision == svc.APPROVE and not st.session_state.get(f"review_confirm_{result_id}"):
        with ctx.session() as session:
            needs = svc.needs_confirmation(session, result_id)
        if needs:
            st.session_state["review_notice"] = ("error", ctx.t("review.confirm_needed"))
            return
    note_key = f"keep_note_{result_id}"
    note = (st.session_state.get(note_key) or "").strip() or None
    same_person = {"follow": None, "same": True, "different": False}[
        st.session_state.get(f"review_same_{result_id}", "follow")
    ]
    true_gender = st.session_state.get(f"review_gender_{result_id}") or None
    member = st.session_state.get("review_current_member") or "—"
    try:
        with ctx.session() as session:
            saved = svc.decide(
                session,
                result_id,
                ctx.username,
                decision,
                note=note,
                true_gender=true_gender,
                same_person=same_person,
            )
        drop_draft(note_key)
        st.session_state["review_notice"] = (
            "success",
            ctx.t(
                f"review.saved_{decision}",
                member=member,
                who=saved.reviewer,
                at=formatting.local_time(saved.decided_at),
            ),
        )
    except svc.AlreadyDecided as exc:
        drop_draft(note_key)
        st.session_state["review_notice"] = (
            "warning",
            ctx.t(
                "review.already_decided",
                member=member,
                who=exc.decided_by or "?",
                at=formatting.local_time(exc.decided_at),
                status=ctx.t(f"status.{exc.status}"),
            ),
        )
    except (svc.NotReviewable, svc.ResultNotFound) as exc:
        st.session_state["review_notice"] = ("warning", ctx.t("review.gone", detail=str(exc)))


decide_submitted()
notice = st.session_state.pop("review_notice", None)
if notice:
    kind, text = notice
    {"success": st.success, "warning": st.warning, "error": st.error}[kind](text)

with ctx.session() as session:
    flag_counts = svc.flag_counts(session)
controls = st.columns([3, 2])
chosen_flags = controls[0].multiselect(
    ctx.t("review.filter_flags"),
    list(flag_counts),
    format_func=lambda code: f"{ctx.t(f'flag.{code}')} ({flag_counts.get(code, 0)})",
    key="review_filter_flags",
    placeholder=ctx.t("review.filter_any"),
)
order = controls[1].selectbox(
    ctx.t("review.order"),
    list(svc.QUEUE_ORDERS),
    format_func=lambda o: ctx.t(f"review.order.{o}"),
    key="review_order",
)

with ctx.session() as session:
    item, backlog = svc.next_queue_item(session, skipped, flags=chosen_flags, order=order)
    detail = svc.load_review_item(session, ctx.store, item, ctx.username) if item is not None else None

info = st.columns([3, 1])
info[0].caption(ctx.t("review.backlog", n=backlog, skipped=len(skipped)))
if skipped and info[1].button(ctx.t("review.unskip"), key="review_unskip"):
    skipped.clear()
    st.rerun()

if item is None:
    st.session_state.pop("review_current", None)
    if chosen_flags and backlog:
        st.info(ctx.t("review.empty_filtered"))
    else:
        st.success(ctx.t("review.empty"), icon=":material/celebration:")
    st.stop()
st.session_state["review_current"] = item.result_id
st.session_state["review_current_member"] = item.member_id

row = detail.row
st.subheader(ctx.t("review.item_title", member=item.member_id or "—", result=item.result_id))
st.caption(
    ctx.t(
        "review.item_meta",
        batch=item.batch_id or "—",
        created=formatting.local_time(item.created_at),
        model=item.model_version,
    )
)
# The machine's verdict first, in one sentence.
verdict = svc.machine_verdict(row)
needs_confirmation = svc.approve_needs_confirmation(row)
verdict_line = svc.verdict_text(row, ctx.lang)
if verdict == svc.SAME and not needs_confirmation:
    st.info(verdict_line, icon=":material/smart_toy:")
elif verdict == svc.DIFFERENT or svc.objections(row):
    st.error(verdict_line, icon=":material/smart_toy:")
else:
    st.warning(verdict_line, icon=":material/smart_toy:")

st.markdown(f"**{ctx.t('verify.flags')}**")
flags_list(ctx, formatting.describe_flags(row, ctx.lang))

top = st.columns([1, 2, 1.2])
top[0].metric(ctx.t("verify.similarity"), "—" if row.similarity is None else f"{row.similarity:.3f}")
top[0].caption(ctx.t("verify.threshold_line", threshold=row.threshold, low=row.band_low, high=row.band_high))
top[1].plotly_chart(
    photos.similarity_figure(row.similarity, row.threshold, (row.band_low, row.band_high), ctx.lang),
    width="stretch",
    config={"displayModeBar": False},
    key="review_similarity",
)
top[2].metric(
    ctx.t("verify.gender"), "—" if row.predicted_gender is None else ctx.t(f"gender.{row.predicted_gender}")
)
top[2].caption(gender_text(ctx, row.predicted_gender, row.gender_confidence, row.registered_gender))

left, right = st.columns(2)
photo_column(
    ctx,
    left,
    GALLERY,
    detail.gallery_bytes,
    row.gallery_analysis,
    photos.crop_from_analysis(detail.gallery_bytes, row.gallery_analysis) if detail.gallery_bytes else None,
)
photo_column(
    ctx,
    right,
    VERIFICATION,
    detail.verification_bytes,
    row.verification_analysis,
    photos.crop_from_analysis(detail.verification_bytes, row.verification_analysis)
    if detail.verification_bytes
    else None,
)

# A reused_photo / possible_duplicate flag: the stored photo it matched, beside the selfie.
with ctx.session() as session:
    matched = svc.matched_photos(session, ctx.store, row, ctx.username, ctx.role)
if matched:
    st.markdown(f"**{ctx.t('review.matched_title')}**")
    st.caption(ctx.t("review.matched_help"))
    for match in matched:
        pair = st.columns(2)
        if detail.verification_bytes:
            show_photo(pair[0], detail.verification_bytes, caption=ctx.t("photo.verification"), width=260)
        caption = f"{ctx.t(f'flag.{match.flag}')} · {svc.matched_caption(match, ctx.lang)}"
        if match.data is None:
            pair[1].warning(f"{caption}  \n{ctx.t('review.matched_missing')}")
        else:
            show_photo(pair[1], match.data, caption=caption, width=260)

# A profile item: the member's profile as a strip with each photo's verdict, the one in question
# large with the member's face outlined.
with ctx.session() as session:
    strip, in_question = profile_svc.review_profile(session, ctx.store, row, ctx.username, svc.PAGE)
if strip:
    st.markdown(f"**{ctx.t('profile.title')}**")
    cells = st.columns(max(1, min(len(strip), 9)))
    for i, shown in enumerate(strip):
        state = ctx.t(f"profile.state.{shown.state}")
        if shown.review_decision == "rejected":
            state += f" · {ctx.t('profile.rejected')}"
        caption = ctx.t("profile.photo_caption", position=shown.position, state=state)
        if shown.image is not None:
            show_photo(
                cells[i], shown.image, caption=("▶ " if shown.position == in_question else "") + caption
            )
    large = next((p for p in strip if p.position == in_question), None)
    if large is not None and large.image is not None:
        st.markdown(f"**{ctx.t('profile.in_question')}**")
        show_photo(st, large.image, caption=large.reason, width=420)

note_key = f"keep_note_{item.result_id}"
restore_draft(note_key)
with st.form(f"decide_{item.result_id}", enter_to_submit=False, border=True):
    st.text_area(ctx.t("review.note"), key=note_key, placeholder=ctx.t("review.note_hint"), height=80)
    with st.expander(ctx.t("review.truth")):
        truth_cols = st.columns(2)
        truth_cols[0].radio(
            ctx.t("review.same_person"),
            ["follow", "same", "different"],
            format_func=lambda c: ctx.t(f"review.same.{c}"),
            key=f"review_same_{item.result_id}",
        )
        truth_cols[1].selectbox(
            ctx.t("review.true_gender"),
            ["", "M", "F"],
            format_func=lambda g: ctx.t(f"gender.{g}") if g else ctx.t("review.gender_follow"),
            key=f"review_gender_{item.result_id}",
        )
    rid = item.result_id
    if needs_confirmation:
        st.checkbox(ctx.t("review.confirm_approve"), key=f"review_confirm_{rid}")
    buttons = st.columns(3)
    buttons[0].form_submit_button(
        ctx.t("review.approve"),
        type="secondary" if needs_confirmation else "primary",
        shortcut="Alt+A",
        width="stretch",
        icon=":material/check:",
        key=f"review_approve_{rid}",
    )
    buttons[1].form_submit_button(
        ctx.t("review.reject"),
        shortcut="Alt+X",
        width="stretch",
        icon=":material/close:",
        key=f"review_reject_{rid}",
    )
    buttons[2].form_submit_button(
        ctx.t("review.skip"),
        shortcut="Alt+S",
        width="stretch",
        icon=":material/skip_next:",
        key=f"review_skip_{rid}",
    )
st.caption(ctx.t("review.keys"))
