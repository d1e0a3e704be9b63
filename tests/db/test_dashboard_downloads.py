"""One-time dashboard downloads (core.dashboard.downloads): bound to one sign-in, used once, short
lived, refused when the role no longer may open the page; a refused or unused file is deleted."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.dashboard import access, downloads
from core.storage import users as user_store
from core.storage.schema import AuditEntry

USER_PASSWORD = "correct horse battery staple"  # the password of the `users` fixture (conftest)


def _file(tmp_path, name="member-M0001.zip"):
    path = tmp_path / name
    path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    return path


def test_the_right_sign_in_gets_it_once_and_it_is_audited(session, users, tmp_path):
    signed, token = access.sign_in(session, "staff_user", USER_PASSWORD)
    path = _file(tmp_path)
    code = downloads.offer(path, path.name, signed.sign_in, "staff_user", "members", "M0001")
    got = downloads.take(session, code, token, 30)
    assert got.path == path and path.exists()  # the route deletes it once sent
    with pytest.raises(downloads.Refused, match="unknown"):
        downloads.take(session, code, token, 30)
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == downloads.DOWNLOAD)).one()
    assert (entry.actor, entry.target_id, entry.detail) == (
        "staff_user",
        "M0001",
        {"file": path.name, "page": "members"},
    )


def test_expired_or_a_role_that_may_not_open_the_page_is_refused_and_the_file_deleted(
    session, users, tmp_path, monkeypatch
):
    signed, token = access.sign_in(session, "staff_user", USER_PASSWORD)
    late = _file(tmp_path, "late.zip")
    monkeypatch.setattr(downloads, "LIFETIME_S", -1.0)
    code = downloads.offer(late, late.name, signed.sign_in, "staff_user", "members", "M0001")
    with pytest.raises(downloads.Refused, match="expired"):
        downloads.take(session, code, token, 30)
    assert not late.exists()

    unused = _file(tmp_path, "unused.zip")
    downloads.offer(unused, unused.name, signed.sign_in, "staff_user", "members", "M0001")
    assert downloads.sweep() >= 1 and not unused.exists()  # its code ran out unused
    monkeypatch.setattr(downloads, "LIFETIME_S", 120.0)

    demoted = _file(tmp_path, "demoted.zip")
    code = downloads.offer(demoted, demoted.name, signed.sign_in, "staff_user", "members", "M0001")
    user_store.set_role(session, "staff_user", "manager", actor="admin_user")  # managers: no Members page
    with pytest.raises(downloads.Refused, match="role"):
        downloads.take(session, code, token, 30)
    assert not demoted.exists()
    assert not session.scalars(select(AuditEntry).where(AuditEntry.action == downloads.DOWNLOAD)).all()
