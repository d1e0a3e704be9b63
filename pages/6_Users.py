"""Users (administrators): create an account with a role, deactivate and reactivate it, reset its
password (the user chooses a new one at the next sign-in), change its role. Every change is
audited; the last active administrator cannot be removed."""

import streamlit as st

from core.dashboard import formatting
from core.dashboard import users as svc
from core.dashboard.codes import ROLES
from ui.page import page_context
from ui.widgets import pin_key_column

ctx = page_context("users")
st.title(ctx.t("page.users"))

notice = st.session_state.pop("users_notice", None)
if notice:
    kind, text = notice
    {"success": st.success, "error": st.error}[kind](text)


def done(text: str) -> None:
    st.session_state["users_notice"] = ("success", text)
    st.rerun()


with ctx.session() as session:
    frame = svc.users_frame(session)
users_shown = formatting.table(frame, ctx.lang, heading="users.col")
st.dataframe(users_shown, column_config=pin_key_column(users_shown), hide_index=True, width="stretch")

left, right = st.columns(2)
with left.container(border=True):
    st.markdown(f"**{ctx.t('users.create')}**")
    with st.form("users_create", clear_on_submit=True):
        username = st.text_input(ctx.t("auth.username"), key="users_new_name", max_chars=64)
        display_name = st.text_input(ctx.t("users.display_name"), key="users_new_display", max_chars=128)
        role = st.selectbox(
            ctx.t("users.role"), list(ROLES), format_func=lambda r: ctx.t(f"role.{r}"), key="users_new_role"
        )
        create = st.form_submit_button(ctx.t("users.create_button"), type="primary")
    if create:
        try:
            with ctx.session() as session:
                password = svc.create(session, ctx.username, username, role, display_name)
            done(
                ctx.t(
                    "users.created",
                    username=username.strip().lower(),
                    role=ctx.t(f"role.{role}"),
                    password=password,
                )
            )
        except svc.AuthError as exc:
            st.error(svc.error_text(exc, ctx.lang))

with right.container(border=True):
    st.markdown(f"**{ctx.t('users.change')}**")
    names = frame["username"].tolist()
    chosen = st.selectbox(
        ctx.t("users.pick"),
        names,
        index=None,
        key="users_pick",
        placeholder=ctx.t("users.pick_hint"),
    )
    if chosen:
        current = frame.set_index("username").loc[chosen]
        new_role = st.selectbox(
            ctx.t("users.role"),
            list(ROLES),
            index=list(ROLES).index(current["role"]),
            format_func=lambda r: ctx.t(f"role.{r}"),
            key=f"users_role_{chosen}",
        )
        with st.container(horizontal=True):
            save_role = st.button(
                ctx.t("users.save_role"), key="users_save_role", disabled=new_role == current["role"]
            )
            toggle = st.button(
                ctx.t("users.deactivate" if current["active"] else "users.reactivate"), key="users_toggle"
            )
            reset = st.button(ctx.t("users.reset"), key="users_reset")
        try:
            if save_role:
                with ctx.session() as session:
                    svc.change_role(session, ctx.username, chosen, new_role)
                done(ctx.t("users.role_changed", username=chosen, role=ctx.t(f"role.{new_role}")))
            if toggle:
                with ctx.session() as session:
                    svc.set_active(session, ctx.username, chosen, not current["active"])
                done(
                    ctx.t("users.deactivated" if current["active"] else "users.reactivated", username=chosen)
                )
            if reset:
                with ctx.session() as session:
                    password = svc.reset_password(session, ctx.username, chosen)
                done(ctx.t("users.password_reset", username=chosen, password=password))
        except svc.AuthError as exc:
            st.error(svc.error_text(exc, ctx.lang))
st.caption(ctx.t("users.audited"))

# Security: the audit log's hash chain and the sign-in / API key locks.
st.subheader(ctx.t("security.title"))
# Each visit walks only the entries written since the last check; the button walks them all.
check_all = st.button(ctx.t("security.check_all"), key="audit_check_all")
with ctx.session() as session:
    chain = svc.audit_chain(session, full=check_all)
    locks = svc.sign_in_locks(session)
if chain.ok and chain.from_seq:
    st.success(ctx.t("security.chain_ok_since", n=chain.checked, since=chain.from_seq))
elif chain.ok:
    st.success(ctx.t("security.chain_ok", n=chain.checked))
else:
    st.error(ctx.t("security.chain_broken", summary=chain.summary()))
if not locks:
    st.caption(ctx.t("security.no_locks"))
for kind, subject, failures, until in locks:
    cols = st.columns([3, 1])
    cols[0].write(
        ctx.t("security.lock", kind=kind, subject=subject, failures=failures, until=f"{until:%H:%M} UTC")
    )
    if cols[1].button(ctx.t("security.unlock"), key=f"unlock_{kind}_{subject}"):
        with ctx.session() as session:
            svc.unlock(session, kind, subject, ctx.username)
        st.rerun()
