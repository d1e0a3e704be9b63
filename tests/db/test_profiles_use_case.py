"""Profile photos through the use case, with the shipped model and real sample photos: a stranger's
photo flagged on that photo only, a group photo naming the member's face, photos added later and
the badge, another member's photo caught by the 1:N index, reorder/remove, and privacy."""

from __future__ import annotations

import io
import zipfile

import pytest
from profile_photos import enrol, group_photo, photo
from sqlalchemy import select

from core.dashboard import profiles as page
from core.storage.schema import Member, Photo, ProfilePhoto
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import profiles, reviews
from core.workflows.privacy import erasure, export
from core.workflows.verification import PhotoInput


@pytest.fixture(scope="module")
def engine():
    from core.verification.engine import Engine

    return Engine.load()


pytestmark = pytest.mark.usefixtures("profile_search")


def add_photo(factory, store, engine, member_id, name):
    """A photo added later to a member's profile, checked on arrival."""
    return profiles.add_profile_photo(
        factory, store, "staff", member_id, PhotoInput("gallery", photo(name)), engine
    )


def states(factory, member_id, public=False):
    with factory() as s:
        return [(r["position"], r["state"]) for r in profiles.profile_view(s, member_id, public=public)]


def test_a_strangers_photo_is_flagged_on_that_photo_only(session_factory, photo_store, engine):
    profile = [photo(f"Richard_Gephardt_000{n}") for n in (3, 5)] + [photo("Howard_Dean_0001")]
    profile.append(photo("Richard_Gephardt_0007"))
    done = enrol(session_factory, photo_store, engine, "m-geph", photo("Richard_Gephardt_0001"), profile)
    answer = profiles.profile_answer(done)
    assert answer["status"] == "flagged" and answer["flagged_photos"] == [3]
    shown = [p["state"] for p in answer["photos"]]
    # The stranger is never a match: a confident non-match, or sent to a person (the model's reject
    # point decides which); the member's own photos match.
    assert shown[:2] + shown[3:] == ["matches", "matches", "matches"]
    assert shown[2] in ("does_not_match", "review")
    assert answer["photos"][2]["reason"].startswith("Photo 3")  # "does not show this member" or "cannot tell"
    assert states(session_factory, "m-geph") == [
        (1, "matches"),
        (2, "matches"),
        (3, shown[2]),
        (4, "matches"),
    ]
    with session_factory() as s:
        assert s.get(Member, "m-geph").status == "in_review" and not profiles.badge(s, "m-geph")
        rows = s.scalars(select(Photo).where(Photo.member_id == "m-geph", Photo.kind == "gallery")).all()
        assert len(rows) == 4 and sum(p.current for p in rows) == 1  # the main photo is current


def test_a_group_photo_with_the_member_passes_and_names_the_members_face(
    session_factory, photo_store, engine
):
    group, tiles = group_photo(
        ["Howard_Dean_0004", "John_Negroponte_0004", "Richard_Gephardt_0008"], scale={2: 0.75}
    )
    done = enrol(
        session_factory,
        photo_store,
        engine,
        "m-group",
        photo("Richard_Gephardt_0001"),
        [photo("Richard_Gephardt_0003"), group],
    )
    assert done.profile.status == "auto_approved", done.profile.reasons
    with session_factory() as s:
        second = profiles.profile_view(s, "m-group")[1]
        assert second["state"] == "matches"
        x, y, w, h = second["box"]
        tx, ty, tw, th = tiles[2]
        assert tx <= x + w / 2 < tx + tw  # the member's face, not the largest one
        assert profiles.badge(s, "m-group")


def test_photos_added_later_and_the_badge(session_factory, photo_store, engine):
    kofi = [photo(f"Kofi_Annan_00{n}") for n in (16, 27)]  # each above approve_at for 0014
    done = enrol(session_factory, photo_store, engine, "m-kofi", photo("Kofi_Annan_0014"), kofi)
    assert done.profile.status == "auto_approved", done.profile.reasons
    with session_factory() as s:
        assert profiles.badge(s, "m-kofi")

    added = add_photo(session_factory, photo_store, engine, "m-kofi", "Kofi_Annan_0031")
    assert added.shown and added.position == 3 and added.state == "matches"
    with session_factory() as s:
        assert profiles.badge(s, "m-kofi")

    stranger = add_photo(session_factory, photo_store, engine, "m-kofi", "Howard_Dean_0001")
    assert not stranger.shown and stranger.state == "does_not_match" and stranger.position == 4
    assert stranger.photo.reason.startswith("Photo 4 does not show this member")
    with session_factory() as s:
        assert s.get(Member, "m-kofi").status == "in_review" and not profiles.badge(s, "m-kofi")
        # The review queue's view: the whole profile as a strip, the photo in question named.
        strip, in_question = page.review_profile(
            s, photo_store, s.get(ResultRow, stranger.result_id), "reviewer", "page:review_queue"
        )
        assert in_question == 4 and [p.position for p in strip] == [1, 2, 3, 4]
        assert strip[3].state == "does_not_match" and all(p.image is not None for p in strip)
        reviews.decide(s, stranger.result_id, "reviewer", "reject", label="different")
    with session_factory() as s:
        # Rejected: out of the public list, and the badge is back.
        assert [p for p, _ in states(session_factory, "m-kofi", public=True)] == [1, 2, 3]
        assert s.get(Member, "m-kofi").status == "verified" and profiles.badge(s, "m-kofi")

    with pytest.raises(profiles.AlreadyInProfile):
        add_photo(session_factory, photo_store, engine, "m-kofi", "Kofi_Annan_0031")

    # Order: photo 3 first; it becomes the member's current gallery photo.
    profiles.reorder_profile(session_factory, "staff", "m-kofi", [3, 1, 2, 4])
    with session_factory() as s:
        first = profiles.profile_view(s, "m-kofi")[0]
        assert s.get(Photo, first["photo_id"]).current
        with pytest.raises(profiles.BadOrder):
            profiles.reorder_profile(session_factory, "staff", "m-kofi", [1, 1, 2, 3])
    profiles.remove_profile_photo(session_factory, "staff", "m-kofi", 1)
    assert [p for p, _ in states(session_factory, "m-kofi")] == [1, 2, 3]


def test_a_photo_of_another_member_is_caught_by_the_index(session_factory, photo_store, engine):
    enrol(
        session_factory,
        photo_store,
        engine,
        "m-beck",
        photo("David_Beckham_0017"),
        [photo("David_Beckham_0005")],
    )
    enrol(
        session_factory,
        photo_store,
        engine,
        "m-brody",
        photo("Adrien_Brody_0007"),
        [photo("Adrien_Brody_0001")],
    )
    # Another photo of the first member (not the same file) in the second member's profile.
    added = add_photo(session_factory, photo_store, engine, "m-brody", "David_Beckham_0010")
    assert not added.shown
    codes = {f["code"]: f for f in added.flags}
    found = codes[profiles.PROFILE_PHOTO_OF_ANOTHER]
    assert found["params"]["candidates"][0][0] == "m-beck"  # named for staff
    assert "member m-beck" in found["reason"] and found["reason"].startswith("Photo 2")
    with session_factory() as s:
        assert s.get(Member, "m-brody").status == "in_review"

    # At enrolment too: a new member whose second photo is the first member's face.
    done = enrol(
        session_factory,
        photo_store,
        engine,
        "m-third",
        photo("Kofi_Annan_0014"),
        [photo("Kofi_Annan_0016"), photo("David_Beckham_0010")],
    )
    with session_factory() as s:
        from core.storage.schema import VerificationResult as ResultRow

        row = s.get(ResultRow, done.result_id)
        flags = [f for f in row.flags if f["code"] == profiles.PROFILE_PHOTO_OF_ANOTHER]
        assert [(f["params"]["position"], f["params"]["candidates"][0][0]) for f in flags] == [(2, "m-beck")]
        assert row.status == "flagged"


def test_erasure_and_export_cover_every_profile_photo(session_factory, photo_store, engine):
    kofi = [photo(f"Kofi_Annan_00{n}") for n in (16, 25, 26)]
    enrol(session_factory, photo_store, engine, "m-priv", photo("Kofi_Annan_0014"), kofi)
    with session_factory() as s:
        archive = zipfile.ZipFile(io.BytesIO(export.export_member(s, photo_store, "m-priv", "staff")))
        names = archive.namelist()
        assert sum(1 for n in names if n.startswith("photos/") and "_gallery" in n) == 3
    erasure.erase_member(session_factory, photo_store, "m-priv", actor="staff", via="test")
    with session_factory() as s:
        assert s.scalars(select(ProfilePhoto).where(ProfilePhoto.member_id == "m-priv")).all() == []
        assert s.scalars(select(Photo).where(Photo.member_id == "m-priv")).all() == []
    for data in kofi:
        import hashlib

        assert not photo_store.exists(hashlib.sha256(data).hexdigest())


def test_a_matching_photo_that_waits_for_review_takes_the_badge_until_accepted(
    session_factory, photo_store, engine
):
    """A photo added later that shows the member but looks even more like another member's photo
    waits in the review queue: the badge drops while it waits and comes back when a reviewer
    accepts it; a rejected one leaves the public list and the badge comes back."""
    done = enrol(
        session_factory, photo_store, engine, "m-kofi", photo("Kofi_Annan_0014"), [photo("Kofi_Annan_0016")]
    )
    assert done.profile.status == "auto_approved", done.profile.reasons
    # The same face under another account: its profile photo is closer to the photos added below
    # than the first member's selfie is.
    enrol(
        session_factory, photo_store, engine, "m-other", photo("Kofi_Annan_0026"), [photo("Kofi_Annan_0025")]
    )

    def add(name: str):
        added = add_photo(session_factory, photo_store, engine, "m-kofi", name)
        # It shows the member, and is sent to a person all the same: it is more like the other one.
        assert added.state == "matches" and not added.shown, added.flags
        codes = {f["code"]: f for f in added.flags}
        assert codes[profiles.PROFILE_PHOTO_OF_ANOTHER]["params"]["candidates"][0][0] == "m-other"
        with session_factory() as s:
            assert s.get(Member, "m-kofi").status == "in_review" and not profiles.badge(s, "m-kofi")
            view = profiles.profile_view(s, "m-kofi")[added.position - 1]
            assert view["waiting"] and view["result_id"] == added.result_id
            assert page.verified_profile_share(s)[0] == 0  # the KPI agrees
        return added

    waiting = add("Kofi_Annan_0027")
    with session_factory() as s:
        reviews.decide(s, waiting.result_id, "reviewer", "approve", label="same")
    with session_factory() as s:
        assert s.get(Member, "m-kofi").status == "verified" and profiles.badge(s, "m-kofi")
        assert not profiles.profile_view(s, "m-kofi")[1]["waiting"]
        assert page.verified_profile_share(s)[0] == 1

    lifted = add("Kofi_Annan_0031")
    assert lifted.position == 3
    with session_factory() as s:
        reviews.decide(s, lifted.result_id, "reviewer", "reject", label="unsure")
    with session_factory() as s:
        assert [p for p, _ in states(session_factory, "m-kofi", public=True)] == [1, 2]
        assert s.get(Member, "m-kofi").status == "verified" and profiles.badge(s, "m-kofi")
        assert page.verified_profile_share(s)[0] == 1


def test_a_new_selfie_does_not_verify_a_member_while_a_photo_waits_for_review(
    session_factory, photo_store, engine
):
    """The whole profile verified again with a new selfie while a photo added later waits for a
    reviewer (it looks more like another member): the verification goes to a person too, and the
    member is verified only once both the photo and the verification are approved."""
    enrol(
        session_factory, photo_store, engine, "m-kofi", photo("Kofi_Annan_0014"), [photo("Kofi_Annan_0016")]
    )
    enrol(
        session_factory, photo_store, engine, "m-other", photo("Kofi_Annan_0026"), [photo("Kofi_Annan_0025")]
    )
    added = add_photo(session_factory, photo_store, engine, "m-kofi", "Kofi_Annan_0027")
    assert added.state == "matches" and not added.shown, added.flags

    again = profiles.verify_profile_member(
        session_factory,
        photo_store,
        "staff",
        "m-kofi",
        PhotoInput("verification", photo("Kofi_Annan_0031")),
        [],
        engine,
        gender="M",
    )
    assert again.verified.result.status == "flagged"
    with session_factory() as s:
        assert s.get(Member, "m-kofi").status == "in_review" and not profiles.badge(s, "m-kofi")
        assert profiles.profile_view(s, "m-kofi")[added.position - 1]["waiting"]
    with session_factory() as s:
        reviews.decide(s, again.result_id, "reviewer", "approve", label="same")
    with session_factory() as s:
        assert s.get(Member, "m-kofi").status == "in_review"  # the photo still waits
        assert not profiles.badge(s, "m-kofi")
    with session_factory() as s:
        reviews.decide(s, added.result_id, "reviewer", "approve", label="same")
    with session_factory() as s:
        assert s.get(Member, "m-kofi").status == "verified" and profiles.badge(s, "m-kofi")
