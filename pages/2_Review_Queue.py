"""Review queue: flagged pairs in priority order, decided one after the other, from the keyboard.

The machine's verdict comes first, in a sentence. When it said "different people", could not tell,
or raised a gender mismatch or a fraud flag, no button is the default and Approve needs the
reviewer's explicit confirmation (checked on the server, whatever key was pressed).

The decision on the member and what the two photos show are asked apart: the label is asked
whenever the decision and the flag do not imply it. Reject asks for confirmation; the reviewer can
undo their own decision for ten minutes. The pair shown is kept in the address (?item=), so a
reload returns the reviewer to it after signing in again.

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


PENDING_REJECT = "review_pending_reject"  # a Reject pressed, waiting for "Yes, reject"
LAST_DECISION = "review_last"  # the reviewer's last decision, for Undo
ITEM_PARAM = "item"  # the pair shown, in the address


def _save(
    result_id: int, decision: str, label: str | None, note_key: str, note: str | None, true_gender: str | None
) -> None:
    member = st.session_state.get("review_current_member") or "—"
    try:
        with ctx.session() as session:
            saved = svc.decide(
                session, result_id, ctx.username, decision, note=note, true_gender=true_gender, label=label
            )
        drop_draft(note_key)
        st.session_state[LAST_DECISION] = {"result_id": result_id, "member": member, "decision": decision}
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
    except svc.LabelRequired:
        st.session_state["review_notice"] = ("error", ctx.t("review.label_needed"))
    except svc.LabelConflict:
        st.session_state["review_notice"] = ("error", ctx.t("review.label_conflict"))
    except (svc.NotReviewable, svc.ResultNotFound) as exc:
        st.session_state["review_notice"] = ("warning", ctx.t("review.gone", detail=str(exc)))


def decide_submitted() -> None:
    """Apply a decision submitted for the pair shown last time, before the queue is read again.

    Handled from the widgets' state (not from the form drawn below), so a decision on a pair
    that someone else decided meanwhile is answered with "already decided" instead of vanishing.
    """
    pending = st.session_state.get(PENDING_REJECT)
    if pending and st.session_state.get("review_reject_yes"):
        st.session_state.pop(PENDING_REJECT, None)
        _save(
            pending["result_id"],
            svc.REJECT,
            pending["label"],
            pending["note_key"],
            pending["note"],
            pending["true_gender"],
        )
        return
    if pending and st.session_state.get("review_reject_no"):
        st.session_state.pop(PENDING_REJECT, None)
        # The fields were not drawn while confirming: put the reviewer's choices back.
        rid = pending["result_id"]
        st.session_state[f"review_label_{rid}"] = pending["label"]
        st.session_state[f"review_gender_{rid}"] = pending["true_gender"] or ""
        if pending["note"]:
            st.session_state[pending["note_key"]] = pending["note"]
        st.session_state["review_notice"] = ("warning", ctx.t("review.reject_cancelled"))
        return
    last = st.session_state.get(LAST_DECISION)
    if last and st.session_state.get("review_undo"):
        try:
            with ctx.session() as session:
                svc.undo(session, last["result_id"], ctx.username)
            st.session_state["review_notice"] = ("success", ctx.t("review.undone", member=last["member"]))
            st.session_state["review_resume"] = last["result_id"]  # the pair comes back first
            if last["result_id"] in skipped:
                skipped.remove(last["result_id"])
        except svc.NotUndoable as exc:
            st.session_state["review_notice"] = (
                "warning",
                ctx.t("review.not_undoable", detail=ctx.t(f"review.undo_refused.{exc.reason}")),
            )
        st.session_state.pop(LAST_DECISION, None)
        return
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
    label = st.session_state.get(f"review_label_{result_id}")
    true_gender = st.session_state.get(f"review_gender_{result_id}") or None
    note_key = f"keep_note_{result_id}"
    note = (st.session_state.get(note_key) or "").strip() or None
    with ctx.session() as session:
        needs, implied = svc.decision_context(session, result_id, decision)
        waiting = svc.queue_item(session, result_id) is not None
    if decision == svc.APPROVE:
        if needs and not st.session_state.get(f"review_confirm_{result_id}"):
            st.session_state["review_notice"] = ("error", ctx.t("review.confirm_needed"))
            return
        if label not in (None, "same"):
            st.session_state["review_notice"] = ("error", ctx.t("review.label_conflict"))
            return
        _save(result_id, decision, label, note_key, note, true_gender)
        return
    label = label or implied
    if not waiting:  # decided meanwhile: no confirmation, say who decided
        _save(result_id, decision, label, note_key, note, true_gender)
        return
    if label is None:
        st.session_state["review_notice"] = ("error", ctx.t("review.label_needed"))
        return
    # Reject confirms: a stray Alt+X saves nothing until "Yes, reject".
    st.session_state[PENDING_REJECT] = {
        "result_id": result_id,
        "label": label,
        "note_key": note_key,
        "note": note,  # the form is not drawn while confirming, so its fields are kept here
        "true_gender": true_gender,
    }


decide_submitted()
notice = st.session_state.pop("review_notice", None)
if notice:
    kind, text = notice
    {"success": st.success, "warning": st.warning, "error": st.error}[kind](text)
last = st.session_state.get(LAST_DECISION)
if last:
    with ctx.session() as session:
        seconds_left = svc.undo_seconds_left(session, last["result_id"], ctx.username)
    if seconds_left <= 0:
        st.session_state.pop(LAST_DECISION, None)
    else:
        undo_row = st.columns([5, 1], vertical_alignment="center")
        undo_row[0].caption(
            ctx.t(
                "review.last_decision",
                decision=ctx.t(f"review.decision.{last['decision']}"),
                member=last["member"],
                minutes=max(1, round(seconds_left / 60)),
            )
        )
        undo_row[1].button(ctx.t("review.undo"), key="review_undo", icon=":material/undo:", width="stretch")

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

# The pair to show first: the one just undone, or (a fresh browser session: a reload, then
# sign-in) the one the address names; otherwise the queue's order decides.
resume = st.session_state.pop("review_resume", None)
if resume is None and "review_current" not in st.session_state:
    named = st.query_params.get(ITEM_PARAM)
    resume = int(named) if named and named.isdigit() else None
with ctx.session() as session:
    item, backlog = svc.next_queue_item(session, skipped, flags=chosen_flags, order=order, resume=resume)
    detail = svc.load_review_item(session, ctx.store, item, ctx.username) if item is not None else None

info = st.columns([3, 1])
info[0].caption(ctx.t("review.backlog", n=backlog, skipped=len(skipped)))
if skipped and info[1].button(ctx.t("review.unskip"), key="review_unskip"):
    skipped.clear()
    st.rerun()

if item is None:
    st.session_state.pop("review_current", None)
    st.query_params.pop(ITEM_PARAM, None)
    if chosen_flags and backlog:
        st.info(ctx.t("review.empty_filtered"))
    else:
        st.success(ctx.t("review.empty"), icon=":material/celebration:")
    st.stop()
st.session_state["review_current"] = item.result_id
st.query_params[ITEM_PARAM] = str(item.result_id)  # a reload, then sign-in, comes back here
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
if words := formatting.similarity_in_words(row.similarity, ctx.lang):
    top[0].markdown(f"**{words}**")
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
rid = item.result_id
pending = st.session_state.get(PENDING_REJECT)
if pending and pending["result_id"] == rid:
    with st.container(border=True):
        st.warning(
            ctx.t(
                "review.reject_confirm",
                member=item.member_id or "—",
                label=ctx.t(f"review.label.{pending['label']}"),
            ),
            icon=":material/help:",
        )
        confirm = st.columns(2)
        confirm[0].button(
            ctx.t("review.reject_yes"),
            key="review_reject_yes",
            type="primary",
            width="stretch",
            shortcut="Enter",
        )
        confirm[1].button(
            ctx.t("review.reject_no"), key="review_reject_no", width="stretch", shortcut="Escape"
        )
    st.stop()
implied_on_reject = svc.implied_label(row, svc.REJECT)
# What the two photos show sits outside the decision form: a form sends its values only when a
# decision is submitted, so a choice made in it was lost when a language switch redrew the page.
# Out here each choice is in the session state at once and the switch puts it back; the decision
# itself is still only the buttons of the form below.
with st.container(border=True):
    st.radio(
        ctx.t("review.label"),
        list(svc.LABELS),
        index=None if implied_on_reject is None else list(svc.LABELS).index(implied_on_reject),
        format_func=lambda c: ctx.t(f"review.label.{c}"),
        key=f"review_label_{rid}",
        horizontal=True,
        help=ctx.t("review.label_help"),
    )
    if implied_on_reject is not None:
        st.caption(ctx.t("review.label_implied"))
    with st.expander(ctx.t("review.truth")):
        st.selectbox(
            ctx.t("review.true_gender"),
            ["", "M", "F"],
            format_func=lambda g: ctx.t(f"gender.{g}") if g else ctx.t("review.gender_follow"),
            key=f"review_gender_{rid}",
        )
with st.form(f"decide_{rid}", enter_to_submit=False, border=True):
    # The tick before the note: Tab out of the note lands on Approve, where Alt+A works (on a
    # focused checkbox the browser keeps the keys and the shortcut does nothing).
    if needs_confirmation:
        st.checkbox(ctx.t("review.confirm_approve"), key=f"review_confirm_{rid}")
    st.text_area(ctx.t("review.note"), key=note_key, placeholder=ctx.t("review.note_hint"), height=80)
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
