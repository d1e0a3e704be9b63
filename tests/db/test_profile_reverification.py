"""A second verification of a stored profile reuses the stored check of each photo (embedding,
face box, hashes) instead of analysing it again, and decides exactly as analysing every photo
afresh would. Real sample photos, the shipped model, SQLite and MariaDB."""

from __future__ import annotations

import pytest
from profile_photos import enrol, group_photo, photo
from sqlalchemy import select

from core.storage.schema import Photo
from core.verification import profile as rule
from core.workflows import profile_rule, profiles
from core.workflows.verification import PhotoInput


@pytest.fixture(scope="module")
def engine():
    from core.verification.engine import Engine

    return Engine.load()


pytestmark = pytest.mark.usefixtures("profile_search")


def test_a_stored_profile_is_verified_again_without_analysing_its_photos_again(
    session_factory, photo_store, engine
):
    group, _ = group_photo(["Howard_Dean_0004", "Richard_Gephardt_0008"])
    shown = [photo("Richard_Gephardt_0003"), group, photo("Richard_Gephardt_0005"), photo("Howard_Dean_0001")]
    first = enrol(session_factory, photo_store, engine, "m-geph", photo("Richard_Gephardt_0001"), shown)
    # A new member: every photo is new.
    assert first.verified.result.checks["profile_photos_analysed"] == {"analysed": 4, "reused": 0}
    assert first.profile.flagged_photos == [4], first.profile.reasons
    with session_factory() as s:
        hashes = s.scalars(
            select(Photo.photo_hashes).where(Photo.member_id == "m-geph", Photo.kind == "gallery")
        )
        assert all(hashes)  # every profile photo's hashes kept, for the reuse check and the next time

    selfie = photo("Richard_Gephardt_0007")
    again = profiles.verify_profile_member(
        session_factory,
        photo_store,
        "staff",
        "m-geph",
        PhotoInput("verification", selfie),
        [],
        engine,
        gender="M",
    )
    # Only the selfie is analysed: the group photo's check found the member in it, so the new
    # selfie is compared with the member's face there, as stored.
    assert again.verified.result.checks["profile_photos_analysed"] == {"analysed": 0, "reused": 4}

    # The same decision as every photo analysed afresh (the library's verify_profile).
    fresh = rule.verify_profile(engine, selfie, shown, "M", profile_rule.rule_for(engine))
    assert again.profile.status == fresh.status
    assert again.profile.reasons == fresh.reasons
    assert [f.code for f in again.profile.selfie_flags] == [f.code for f in fresh.selfie_flags]
    for mine, theirs in zip(again.profile.photos, fresh.photos, strict=True):
        assert (mine.position, mine.sha256, mine.state, mine.face, mine.box) == (
            theirs.position,
            theirs.sha256,
            theirs.state,
            theirs.face,
            theirs.box,
        )
        assert mine.similarity == pytest.approx(theirs.similarity, abs=1e-6)
        assert [f.code for f in mine.flags] == [f.code for f in theirs.flags]
    # The stored result: the main photo's pair, the same as afresh.
    pair = engine.compare(fresh.photos[0].analysis, fresh.selfie, "M")
    assert again.verified.result.similarity == pytest.approx(pair.similarity, abs=1e-6)
    assert again.verified.result.status == "flagged"
