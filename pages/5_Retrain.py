"""Retrain: pick data and settings, train in the background, compare with the active model, promote,
discard or roll back. Data scientists and administrators only (checked on the server).

The run is a separate process (core.training.worker): this page only starts it, polls its row every
two seconds and can cancel it, so it can be left and reopened. Every promotion, rollback, discard,
start and cancel is written to the audit log by the core functions.
"""

from pathlib import Path

import streamlit as st

from core.dashboard import formatting, training_sets, uploads
from core.dashboard import retrain as view
from core.dashboard.formatting import local_time
from core.errors import FaceVerifyError, ModelError
from ui.page import page_context
from ui.promotion import promote_or_discard
from ui.refit import section as refit_section
from ui.widgets import pin_key_column

ctx = page_context("retrain")
st.title(ctx.t("page.retrain"))
st.caption(ctx.t("retrain.intro"))

NOTICE = "retrain_notice"
KEPT_PHOTO_SET = "retrain_kept_photo_set"


def show_notice() -> None:
    notice = st.session_state.pop(NOTICE, None)
    if notice:
        kind, text = notice
        getattr(st, kind)(text)


def set_notice(kind: str, text: str) -> None:
    st.session_state[NOTICE] = (kind, text)


show_notice()

with ctx.session() as session:
    live = view.current_run(session)
    last = view.latest_run(session)
    available = view.data_available(session)
    try:
        versions = view.list_versions(session)
        active = next((v.version for v in versions if v.status == view.ACTIVE), None)
    except (ModelError, FaceVerifyError) as exc:
        versions, active = [], None
        st.warning(ctx.t("retrain.no_active", detail=str(exc)))


# ----------------------------------------------------------------------------------------------
# A run in progress


@st.fragment(run_every=2)
def live_panel(run_id: int) -> None:
    with ctx.session() as session:
        run = view.poll_run(session, run_id)
    if run is None or run.status not in view.LIVE:
        st.rerun()  # the run ended: the whole page shows its outcome
        return
    progress = run.progress or {}
    with st.container(border=True):
        st.subheader(ctx.t("retrain.running", id=run.id, who=run.started_by, at=local_time(run.started_at)))
        st.progress(view.overall_fraction(progress), text=view.stage_text(progress, ctx.lang))
        if run.status == view.CANCELLING:
            st.info(ctx.t("retrain.cancelling"))
        if progress.get("siamese_loss") or progress.get("gender_loss"):
            st.plotly_chart(
                view.loss_figure(progress, ctx.lang),
                width="stretch",
                key=f"retrain_live_loss_{run.id}",
                config={"displaylogo": False},
            )
        st.caption(ctx.t("retrain.leave_ok"))
        if run.status != view.CANCELLING and st.button(
            ctx.t("retrain.cancel"), key="retrain_cancel", icon=":material/stop_circle:"
        ):
            if view.cancel(ctx.session_factory, run.id, ctx.username):
                set_notice("info", ctx.t("retrain.cancel_sent", id=run.id))
            st.rerun()


# ----------------------------------------------------------------------------------------------
# Starting a run


def setting_widget(setting: view.Setting, container):
    label = ctx.t(f"retrain.set.{setting.name}")
    help_text = ctx.t(f"retrain.help.{setting.name}")
    default = getattr(view.DEFAULTS, setting.name)
    key = f"retrain_set_{setting.name}"
    if setting.kind == "choice":
        return container.selectbox(
            label,
            list(setting.options),
            index=list(setting.options).index(default),
            help=help_text,
            key=key,
            format_func=lambda o: ctx.t(f"retrain.opt.{o}"),
        )
    if setting.kind == "multi":
        return ",".join(
            container.multiselect(
                label,
                list(setting.options),
                default=[k for k in str(default).split(",") if k],
                placeholder=ctx.t("verify.choose"),
                help=help_text,
                key=key,
                format_func=lambda o: ctx.t(f"retrain.opt.{o}"),
            )
        )
    if setting.kind == "int":
        return container.number_input(
            label, value=int(default), step=int(setting.step), help=help_text, key=key
        )
    return container.number_input(
        label, value=float(default), step=float(setting.step), format="%g", help=help_text, key=key
    )


def summary_line(summary: training_sets.SetSummary) -> str:
    return ctx.t(
        "retrain.data.summary",
        photos=summary.photos,
        people=summary.people,
        with_pairs=summary.people_with_pairs,
        men=summary.men,
        women=summary.women,
    )


def show_set(summary: training_sets.SetSummary) -> None:
    """What one source holds and whether it is enough on its own."""
    text = summary_line(summary)
    if summary.enough:
        st.caption(f"{text} · {ctx.t('retrain.data.enough')}")
    else:
        st.caption(
            f"{text} · {ctx.t('retrain.data.not_enough', detail=view.problems_text(summary.problems, ctx.lang))}"
        )


def uploaded_set() -> tuple[Path, Path] | None:
    """The uploaded ZIP, checked and unpacked once per file (kept in the session by its id)."""
    upload = st.file_uploader(
        ctx.t("retrain.data.zip"),
        type=["zip"],
        help=ctx.t(
            "retrain.data.zip_help",
            photos=training_sets.MAX_UPLOAD_PHOTOS,
            gb=training_sets.MAX_UNPACKED_BYTES // 2**30,
        ),
        key="retrain_zip",
        max_upload_size=uploads.UPLOAD_KINDS["zip"][1],  # the limit it shows is the server's
    )
    if upload is None:
        st.info(ctx.t("retrain.data.zip_wanted"))
        return None
    unpacked = st.session_state.get("retrain_zip_unpacked") or {}
    if unpacked.get("file_id") != upload.file_id:
        with st.spinner(ctx.t("retrain.data.unpacking")):
            try:
                folder, left_out = training_sets.unpack_upload(upload.getvalue())
                unpacked = {"file_id": upload.file_id, "folder": str(folder), "left_out": left_out}
            except training_sets.TrainingSetError as exc:
                unpacked = {"file_id": upload.file_id, "problems": exc.problems}
            except OSError as exc:
                unpacked = {"file_id": upload.file_id, "problems": [str(exc)]}
        st.session_state["retrain_zip_unpacked"] = unpacked
    if unpacked.get("problems"):
        st.error(ctx.t("retrain.data.unusable", detail=" ".join(unpacked["problems"])))
        return None
    if unpacked["left_out"]:
        names = ", ".join(unpacked["left_out"][:5]) + (" …" if len(unpacked["left_out"]) > 5 else "")
        st.warning(ctx.t("retrain.data.left_out", n=len(unpacked["left_out"]), names=names))
    return training_sets.find_folder(unpacked["folder"])


def chosen_photo_set(source: str) -> tuple[Path, Path] | None:
    if source == "lfw":
        return view.lfw_photo_set()
    if source == "upload":
        return uploaded_set()
    if source == "folder":
        path = st.text_input(
            ctx.t("retrain.data.folder"), help=ctx.t("retrain.data.folder_help"), key="retrain_folder"
        )
        if not path.strip():
            st.info(ctx.t("retrain.data.folder_wanted"))
            return None
        try:
            return training_sets.find_folder(path)
        except training_sets.TrainingSetError as exc:
            st.error(ctx.t("retrain.data.unusable", detail=" ".join(exc.problems)))
            return None
    return None


def data_choice() -> tuple[object | None, str]:
    """The sources to train on, each with what it holds; (None, why) when they cannot make a run."""
    st.markdown(f"**{ctx.t('retrain.data')}**")
    with ctx.session() as session:
        reviewed = training_sets.reviewed_summary(session)
    use_reviewed = st.checkbox(
        ctx.t(
            "retrain.data.reviewed",
            n=available["reviewed_pairs"],
            same=available["reviewed_same"],
            different=available["reviewed_pairs"] - available["reviewed_same"],
        ),
        value=available["reviewed_pairs"] > 0,
        help=ctx.t("retrain.data.reviewed_help"),
        key="retrain_use_reviewed",
    )
    if reviewed.pairs:
        show_set(reviewed)
    sources = ["none", *(["lfw"] if available["lfw_dir"] else []), "upload", "folder"]
    # The radio is not drawn while a run goes on, and Streamlit then forgets it: keep the choice.
    kept = st.session_state.get(KEPT_PHOTO_SET)
    if "retrain_photo_set" not in st.session_state and kept in sources:
        st.session_state["retrain_photo_set"] = kept
    source = st.radio(
        ctx.t("retrain.data.source"),
        sources,
        index=1 if available["lfw_dir"] else 0,
        format_func=lambda s: (
            ctx.t("retrain.data.lfw", n=available["lfw_photos"])
            if s == "lfw"
            else ctx.t(f"retrain.data.source.{s}")
        ),
        help=ctx.t("retrain.data.source_help"),
        horizontal=True,
        key="retrain_photo_set",
    )
    st.session_state[KEPT_PHOTO_SET] = source
    photo_set = chosen_photo_set(source)
    chosen = [reviewed] if use_reviewed else []
    if photo_set is not None:
        try:
            summary = training_sets.folder_summary(*photo_set)
        except training_sets.TrainingSetError as exc:
            st.error(ctx.t("retrain.data.unusable", detail=" ".join(exc.problems)))
            photo_set = None
        else:
            if source != "lfw" or not summary.enough:
                show_set(summary)
            chosen.append(summary)
    if not chosen or (photo_set is None and not reviewed.pairs):
        why = ctx.t("retrain.data.choose")
        st.warning(ctx.t("retrain.data.missing", detail=why))
        return None, why
    total = training_sets.combine(*chosen)
    if total.problems:
        why = view.problems_text(total.problems, ctx.lang)
        st.warning(ctx.t("retrain.data.missing", detail=why))
        return None, why
    st.success(f"{ctx.t('retrain.data.total', summary=summary_line(total))} · {ctx.t('retrain.data.ready')}")
    images, people = photo_set if photo_set is not None else (None, None)
    return view.data_choice(images, people, reviewed=use_reviewed), ""


def start_form() -> None:
    st.subheader(ctx.t("retrain.new_run"))
    choice, why_not = data_choice()
    with st.form("retrain_form"):
        st.markdown(f"**{ctx.t('retrain.settings')}**")
        st.caption(ctx.t("retrain.settings_help"))
        values = {}
        basic = [s for s in view.SETTINGS if not s.advanced]
        columns = st.columns(3)
        for k, setting in enumerate(basic):
            values[setting.name] = setting_widget(setting, columns[k % 3])
        with st.expander(ctx.t("retrain.advanced")):
            columns = st.columns(3)
            for k, setting in enumerate(s for s in view.SETTINGS if s.advanced):
                values[setting.name] = setting_widget(setting, columns[k % 3])
        if choice is None:
            st.caption(ctx.t("retrain.start_disabled", detail=why_not))
        submitted = st.form_submit_button(
            ctx.t("retrain.start"),
            type="primary",
            icon=":material/play_arrow:",
            key="retrain_start",
            disabled=choice is None,
            help=ctx.t("retrain.start_disabled", detail=why_not) if choice is None else None,
        )
    if not submitted:
        return
    try:
        params = view.train_params(values)
    except ValueError as exc:
        st.error(ctx.t("retrain.bad_input", detail=str(exc)))
        return
    if choice is None:
        st.error(ctx.t("retrain.bad_input", detail=why_not))
        return
    try:
        run_id = view.start_run(ctx.session_factory, ctx.username, choice, params, ctx.store.url)
    except view.RunInProgress as exc:
        st.warning(ctx.t("retrain.refused", id=exc.run_id, who=exc.started_by))
        return
    except ValueError as exc:
        st.error(ctx.t("retrain.bad_input", detail=str(exc)))
        return
    except (OSError, FaceVerifyError) as exc:
        st.error(ctx.t("retrain.start_failed", detail=str(exc)))
        return
    set_notice("success", ctx.t("retrain.started", id=run_id))
    st.rerun()


# ----------------------------------------------------------------------------------------------
# The last run's outcome: comparison, promote or discard


def outcome_panel(run) -> None:
    progress = run.progress or {}
    st.subheader(ctx.t("retrain.last_run", id=run.id, who=run.started_by, at=local_time(run.started_at)))
    if run.status == view.FAILED:
        st.error(ctx.t("retrain.failed"))
        st.code(run.error or "", language=None)
        return
    if run.status == view.CANCELLED:
        st.warning(ctx.t("retrain.cancelled", detail=run.error or ""))
        return
    timings = progress.get("timings") or {}
    version = run.model_version
    status = next((v.status for v in versions if v.version == version), None)
    # "Not active until you promote it" only while that is still true.
    succeeded_key = (
        "retrain.succeeded" if status not in (view.ACTIVE, view.DISCARDED) else "retrain.succeeded_done"
    )
    st.success(
        ctx.t(
            succeeded_key,
            version=run.model_version or "—",
            total=timings.get("total_seconds", "—"),
            features=timings.get("features_seconds", "—"),
            training=timings.get("training_seconds", "—"),
        )
    )
    for note in progress.get("notes") or []:
        st.warning(note)
    comparison = progress.get("comparison") or {}
    if comparison:
        st.markdown(f"**{ctx.t('retrain.comparison')}**")
        st.caption(ctx.t("retrain.comparison_help"))
        rows = view.comparison_rows(comparison, ctx.lang)
        # Tall enough for every row: the comparison is read whole, never scrolled inside its box.
        st.dataframe(rows, hide_index=True, width="stretch", height=view.table_height(len(rows)))
        seen = (comparison.get("active") or {}).get("heldout_people_seen_in_training")
        if seen:
            st.warning(ctx.t("retrain.seen_warning", n=seen))
        for name in ("new", "active"):
            if (comparison.get(name) or {}).get("error"):
                st.warning(comparison[name]["error"])
    with st.expander(ctx.t("retrain.loss_title")):
        st.plotly_chart(
            view.loss_figure(progress, ctx.lang),
            width="stretch",
            key=f"retrain_loss_{run.id}",
            config={"displaylogo": False},
        )
    with st.expander(ctx.t("retrain.data_summary")):
        st.json(progress.get("data") or {}, expanded=False)
    if version is None or status is None:
        return
    if status == view.ACTIVE:
        st.info(ctx.t("retrain.is_active", version=version))
        return
    if status == view.DISCARDED:
        st.info(ctx.t("retrain.was_discarded", version=version))
        return
    compared_with = (comparison.get("active") or {}).get("model_version")
    if compared_with and active and compared_with != active:
        st.warning(ctx.t("retrain.active_changed", compared=compared_with, active=active))
    promote_or_discard(
        ctx,
        version,
        active,
        set_notice,
        key="retrain",
        confirm_text=ctx.t("retrain.confirm_promote", version=version, active=active or "—"),
        promote_label=ctx.t("retrain.promote"),
    )


# ----------------------------------------------------------------------------------------------
# Versions and rollback


def versions_panel() -> None:
    st.subheader(ctx.t("retrain.versions"))
    if not versions:
        st.info(ctx.t("retrain.no_versions"))
        return
    version_rows = view.versions_rows(versions, ctx.lang)
    st.dataframe(version_rows, column_config=pin_key_column(version_rows), hide_index=True, width="stretch")
    active_row = next((v for v in versions if v.status == view.ACTIVE), None)
    earlier = [
        v.version
        for v in versions
        if v.status in (view.PREVIOUS, view.CANDIDATE)
        and v.on_disk
        and active_row is not None
        and v.created_at
        and active_row.created_at
        and v.created_at <= active_row.created_at
    ]
    if not earlier:
        st.caption(ctx.t("retrain.no_rollback"))
        return
    with st.container(border=True):
        st.markdown(f"**{ctx.t('retrain.rollback_title')}**")
        target = st.selectbox(ctx.t("retrain.rollback_to"), earlier, key="retrain_rollback_target")
        confirm = st.checkbox(
            ctx.t("retrain.confirm_rollback", version=target, active=active or "—"),
            key="retrain_rollback_confirm",
        )
        if st.button(
            ctx.t("retrain.rollback"), disabled=not confirm, key="retrain_rollback", icon=":material/undo:"
        ):
            try:
                with ctx.session() as session:
                    view.rollback(session, target, ctx.username, expected_active=active)
            except (FaceVerifyError, ModelError) as exc:
                st.error(ctx.t("retrain.switch_failed", detail=str(exc)))
                return
            set_notice("success", ctx.t("retrain.rolled_back", version=target))
            st.rerun()


@st.fragment(run_every=2)
def reverify_progress() -> None:
    with ctx.session() as session:
        recent = view.reverify_batches(session)
    if not recent:
        return
    st.markdown(f"**{ctx.t('retrain.reverify_recent')}**")
    for b in recent:
        st.progress(
            b["done"] / b["total"] if b["total"] else 0.0,
            text=ctx.t(
                "retrain.reverify_progress",
                id=b["batch_id"],
                version=b["model_version"],
                done=b["done"],
                total=b["total"],
                status=ctx.t(f"batch_status.{b['status']}"),
            ),
        )


def reverify_panel() -> None:
    """Re-run members on the active version as a background job; the KPI page compares the two."""
    if not active:
        return
    with st.container(border=True):
        st.markdown(f"**{ctx.t('retrain.reverify_title', version=active)}**")
        st.caption(ctx.t("retrain.reverify_intro", version=active))
        with ctx.session() as session:
            counts = view.reverify_counts(session, active)
        scope = st.radio(
            ctx.t("retrain.reverify_scope"),
            view.reverify_scopes(),
            format_func=lambda s: ctx.t(f"retrain.reverify_scope.{s}", version=active, n=counts[s]),
            key="retrain_reverify_scope",
        )
        if st.button(
            ctx.t("retrain.reverify_start"),
            disabled=counts[scope] == 0,
            key="retrain_reverify",
            icon=":material/replay:",
        ):
            try:
                batch_id = view.start_reverify(ctx.session_factory, ctx.username, active, scope)
            except (FaceVerifyError, OSError) as exc:
                st.error(ctx.t("retrain.reverify_failed", detail=str(exc)))
            else:
                if batch_id is None:
                    st.info(ctx.t("retrain.reverify_nothing", version=active))
                else:
                    st.success(ctx.t("retrain.reverify_started", id=batch_id))
        reverify_progress()


def history_panel() -> None:
    with ctx.session() as session:
        entries = view.history(session)
    with st.expander(ctx.t("retrain.history")):
        if not entries:
            st.caption(ctx.t("retrain.no_history"))
            return
        st.dataframe(
            [
                {
                    ctx.t("col.at"): local_time(e.at),
                    ctx.t("col.actor"): formatting.actor_text(e.actor, ctx.lang),
                    ctx.t("col.action"): ctx.t(f"retrain.action.{e.action}"),
                    ctx.t("retrain.ver.version"): e.target_id if e.target_type == view.VERSION_TARGET else "",
                    ctx.t("col.detail"): formatting.detail_text(e.detail, ctx.lang),
                }
                for e in entries
            ],
            hide_index=True,
            width="stretch",
        )


if live is not None:
    if st.session_state.get("retrain_start"):  # pressed Start on a form drawn before this run began
        st.warning(ctx.t("retrain.refused", id=live.id, who=live.started_by))
    live_panel(live.id)
else:
    # The last run's outcome first, where the eye lands after it ends; then a new run's form.
    if last is not None and last.status not in view.LIVE:
        outcome_panel(last)
    start_form()
versions_panel()
reverify_panel()
refit_section(ctx, versions, active, set_notice)
history_panel()
