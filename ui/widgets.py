"""Streamlit pieces shared by several pages: a pair's photos and result, a batch's progress and results."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.dashboard import formatting, page_batches, photos, uploads, verify
from core.dashboard.codes import AUTO_APPROVED, AUTO_REJECTED, FLAGGED, GALLERY, STATUSES, VERIFICATION
from ui.page import PageContext
from ui.resources import get_jobs


def show_photo(container, image, caption: str | None = None, width="stretch") -> None:
    """A member photo, sent inline in this session's own messages (never a /media address)."""
    uri = photos.inline_image(image)
    if uri is None:
        container.caption(caption or "")
        return
    container.image(uri, caption=caption, width=width)


def file_input(ctx: PageContext, container, label_key: str, kind: str, key: str, several: bool = False):
    """st.file_uploader with what Streamlit lets a page set in its own language: the label, the
    help (types and limit, and how to add a file) and the per-file limit it shows and enforces."""
    types, limit_mb = uploads.UPLOAD_KINDS[kind]
    return container.file_uploader(
        ctx.t(label_key),
        type=types,
        key=key,
        help=uploads.uploader_help(kind, ctx.lang),
        max_upload_size=limit_mb,
        accept_multiple_files=several,
    )


def status_label(ctx: PageContext, status: str) -> str:
    return formatting.result_status(status, ctx.lang)


def photo_column(ctx: PageContext, container, kind: str, data: bytes | None, analysis, crop) -> None:
    """One side of a pair: the photo with its face boxes, beside it the aligned crop and figures."""
    container.markdown(f"**{ctx.t(f'photo.{kind}')}**")
    if data is None:
        container.warning(ctx.t("photo.missing"))
        return
    annotated = photos.annotate_photo(data, analysis)
    if annotated is None:
        container.error(ctx.t("photo.unusable"))
        return
    photo, side = container.columns([3, 2])
    show_photo(photo, annotated)
    if crop is not None:
        show_photo(side, crop, caption=ctx.t("photo.crop"))  # a fixed width overlaps at 1024 px
    else:
        side.caption(ctx.t("photo.no_crop"))
    faces, _ = photos.faces_of(analysis)
    quality = analysis.quality if hasattr(analysis, "quality") else (analysis or {}).get("quality")
    lines = [ctx.t("photo.faces_found", n=len(faces))]
    if quality is not None:
        lines.append(ctx.t("photo.quality", q=quality))
    side.caption("  \n".join([*lines, ctx.t("photo.box_legend")]))


def flags_list(ctx: PageContext, described: list[dict]) -> None:
    if not described:
        st.caption(ctx.t("verify.no_flags"))
        return
    for flag in described:
        where = " (" + ctx.t("photo." + flag["photo"]) + ")" if flag["photo"] else ""
        st.markdown(f"- **{flag['title']}**{where}: {flag['text']}")


def decision_banner(ctx: PageContext, status: str) -> None:
    text = ctx.t(f"verify.decision.{status}")
    if status == AUTO_APPROVED:
        st.success(text, icon=":material/check_circle:")
    elif status == AUTO_REJECTED:
        st.error(text, icon=":material/cancel:")
    else:
        st.warning(text, icon=":material/warning:")


def gender_text(ctx: PageContext, predicted, confidence, registered) -> str:
    if predicted is None:
        return ctx.t("verify.gender_unknown")
    text = ctx.t(
        "verify.gender_line", predicted=ctx.t(f"gender.{predicted}"), confidence=(confidence or 0) * 100
    )
    if registered:
        text += " · " + ctx.t("verify.gender_registered", registered=ctx.t(f"gender.{registered}"))
    return text


def pair_result(ctx: PageContext, outcome: verify.PairOutcome) -> None:
    """Everything about one verified pair, as the Verify page shows it."""
    result = outcome.result
    decision_banner(ctx, result.status)
    top = st.columns([1, 2, 1.2])
    similarity = result.similarity
    top[0].metric(ctx.t("verify.similarity"), "—" if similarity is None else f"{similarity:.3f}")
    words = formatting.similarity_in_words(similarity, ctx.lang)
    if words:
        top[0].markdown(f"**{words}**")
    if result.cohort_score is not None:
        top[0].caption(
            f"{ctx.t('similarity.cohort_score')}: {result.cohort_score:.2f}",
            help=ctx.t("similarity.cohort_score_help"),
        )
    top[0].caption(
        ctx.t(
            "verify.threshold_line",
            threshold=result.threshold,
            low=result.uncertain_band[0],
            high=result.uncertain_band[1],
        )
    )
    top[1].plotly_chart(
        photos.similarity_figure(similarity, result.threshold, result.uncertain_band, ctx.lang),
        width="stretch",
        config={"displayModeBar": False},
        key="similarity_bar",
    )
    top[2].metric(
        ctx.t("verify.gender"),
        "—" if result.predicted_gender is None else ctx.t(f"gender.{result.predicted_gender}"),
    )
    top[2].caption(
        gender_text(ctx, result.predicted_gender, result.gender_confidence, result.registered_gender)
    )

    left, right = st.columns(2)
    photo_column(
        ctx, left, GALLERY, outcome.gallery_bytes, result.gallery, photos.chip_image(result.gallery.crop)
    )
    photo_column(
        ctx,
        right,
        VERIFICATION,
        outcome.verification_bytes,
        result.verification,
        photos.chip_image(result.verification.crop),
    )

    challenge = verify.challenge_summary(result, ctx.lang)
    if challenge is not None:
        shown, sentence = challenge
        (st.success if shown else st.error)(sentence, icon=":material/accessibility_new:")
    st.markdown(f"**{ctx.t('verify.flags')}**")
    flags_list(ctx, formatting.describe_flags(result, ctx.lang))

    with st.expander(ctx.t("verify.timings"), expanded=False):
        stages = [s for s in ("decode", "detect", "align", "embed", "decide") if s in result.timings_ms]
        rows = [
            {ctx.t("verify.stage"): ctx.t(f"stage.{s}"), "ms": round(result.timings_ms[s], 1)} for s in stages
        ]
        rows.append(
            {ctx.t("verify.stage"): ctx.t("stage.total"), "ms": round(result.timings_ms.get("total", 0.0), 1)}
        )
        rows.append({ctx.t("verify.stage"): ctx.t("stage.page"), "ms": round(outcome.seconds * 1000, 1)})
        st.dataframe(rows, hide_index=True, width="content")
    st.caption(
        ctx.t(
            "verify.saved",
            result_id=outcome.result_id,
            batch_id=outcome.batch_id,
            member=outcome.member_id,
            model=result.model_version,
            ms=outcome.seconds * 1000,
        )
    )
    if outcome.photo_warnings:
        detail = "; ".join(w.text(ctx.lang) for w in outcome.photo_warnings)
        st.warning(ctx.t("verify.import_note", detail=detail))
    if result.status == FLAGGED and ctx.can("review"):
        st.page_link("pages/2_Review_Queue.py", label=ctx.t("verify.go_review"), icon=":material/rule:")


def job_progress(ctx: PageContext, job_key: str, state_key: str, on_done=None) -> None:
    """Progress of a background batch, refreshed every second while it runs."""
    job = get_jobs().get(job_key)
    if job is None:
        st.info(ctx.t("batch.job_gone"))
        st.session_state.pop(state_key, None)
        return
    running = job.alive

    def body():
        current = get_jobs().get(job_key)
        if current is None:
            return
        now = current.progress()  # one reading for the bar and its text
        if now.phase in (page_batches.IMPORTING, page_batches.RUNNING):
            st.progress(now.fraction, text=ctx.t(now.text_key, done=now.done, total=now.total))
            st.caption(ctx.t("batch.keeps_running"))
            if not current.alive:
                st.rerun()
            return
        if running:  # it just finished: one full rerun draws the final state without the timer
            st.rerun()
        if current.rejected:
            with st.expander(ctx.t("batch.rejected_rows", n=len(current.rejected)), expanded=True):
                rejected = pd.DataFrame(
                    [
                        {"row": r.row, "member_id": r.member_id, "message": r.message_in(ctx.lang)}
                        for r in current.rejected
                    ]
                )
                st.dataframe(formatting.table(rejected, ctx.lang), hide_index=True)
        if current.phase == page_batches.FAILED:
            key, params = current.error or ("batch.failed", {"detail": ""})
            st.error(ctx.t(key, **params))
        else:
            st.success(ctx.t("batch.done", batch_id=current.batch_id, total=current.total))
            if on_done is not None and current.batch_id is not None:
                on_done(current.batch_id)

    st.fragment(body, run_every=1.0 if running else None)()


def results_view(ctx: PageContext, batch_id: int, key: str) -> None:
    """A batch's results: filters, the table, CSV download of what is shown."""
    with ctx.session() as session:
        frame = verify.batch_results_frame(session, batch_id)
    if frame.empty:
        st.info(ctx.t("batch.no_results"))
        return
    cols = st.columns([2, 2, 1.5])
    statuses = cols[0].multiselect(
        ctx.t("batch.filter_status"),
        list(STATUSES),
        format_func=lambda s: status_label(ctx, s),
        key=f"{key}_status",
        placeholder=ctx.t("members.any"),
    )
    codes = sorted({c for text in frame["flags"] for c in (text or "").split()})
    chosen = cols[1].multiselect(
        ctx.t("batch.filter_flags"),
        codes,
        format_func=lambda c: ctx.t(f"flag.{c}"),
        key=f"{key}_flags",
        placeholder=ctx.t("members.any"),
    )
    search = cols[2].text_input(ctx.t("batch.filter_member"), key=f"{key}_member")
    shown = verify.filter_results(frame, statuses, chosen, search)
    counts = frame["status"].value_counts().to_dict()
    st.caption(
        ctx.t("batch.summary", shown=len(shown), total=len(frame))
        + " · "
        + " · ".join(f"{status_label(ctx, s)} {n}" for s, n in counts.items())
    )
    display = formatting.table(shown.drop(columns=["reasons"]), ctx.lang)
    st.dataframe(display, hide_index=True, width="stretch")
    st.download_button(
        ctx.t("batch.download"),
        formatting.to_csv_bytes(shown),
        file_name=f"batch_{batch_id}_results.csv",
        mime="text/csv",
        key=f"{key}_download",
        icon=":material/download:",
    )


def scroll_here(anchor: str, scroll: bool) -> None:
    """Mark this place `anchor`; when `scroll`, bring it into the browser's view (Streamlit has no
    scroll call: a zero-height frame of the same origin scrolls its parent page)."""
    st.html(f'<div id="{anchor}"></div>')
    if scroll:
        import streamlit.components.v1 as components

        components.html(
            "<script>const el = window.parent.document.getElementById("
            f"{anchor!r});"
            " if (el) el.scrollIntoView({behavior: 'smooth', block: 'start'});</script>",
            height=0,
        )


def pin_key_column(frame) -> dict:
    """column_config keeping a table's first (key) column in view while it scrolls sideways at
    1024 px."""
    columns = list(frame.columns) if hasattr(frame, "columns") else list((frame or [{}])[0])
    return {columns[0]: st.column_config.Column(pinned=True)} if columns else {}
