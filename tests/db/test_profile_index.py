"""Every profile photo that shows the member is a row of the 1:N index, not only the main one: a
photo lifted from another member's profile is found by the 1:N search and by the checks of a
profile photo; it leaves the index when removed, rejected, or the member is erased. Real sample
photos, the shipped model, SQLite and MariaDB."""

from __future__ import annotations

import pytest
from profile_photos import enrol, photo
from sqlalchemy import select

from core.config import SAMPLE_DIR
from core.storage.schema import Photo
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import POSSIBLE_DUPLICATE
from core.workflows import profiles, search
from core.workflows.privacy import erasure
from core.workflows.verification import PhotoInput

IMAGES = SAMPLE_DIR / "images"


@pytest.fixture(scope="module")
def engine():
    from core.verification.engine import Engine

    return Engine.load()


pytestmark = pytest.mark.usefixtures("profile_search")


def rows_of(factory, engine, member_id, fresh=False) -> dict[int, bool]:
    """The member's rows in this process's index ({photo id: main}); fresh: a new index read from
    the database alone, as another process would load it."""
    if fresh:
        search.reset_indexes()
    with factory() as s:
        return search.index_for(s.get_bind(), engine.model_version).photos_of(member_id)


def profile_photo_ids(factory, member_id) -> list[int]:
    with factory() as s:
        return [p["photo_id"] for p in profiles.profile_view(s, member_id)]


def found(factory, engine, data: bytes, exclude=None):
    with factory() as s:
        hits = search.search_photo(s, engine, data, k=3, exclude_member=exclude).candidates
    return [(c.member_id, c.photo_id) for c in hits]


def test_a_photo_lifted_from_another_members_profile_is_found(session_factory, photo_store, engine):
    lifted = photo("David_Beckham_0010")
    done = enrol(
        session_factory,
        photo_store,
        engine,
        "m-beck",
        photo("David_Beckham_0031"),
        [photo("David_Beckham_0005"), lifted, photo("David_Beckham_0029")],
    )
    assert done.profile.status == "auto_approved", done.profile.reasons
    main, second, third = profile_photo_ids(session_factory, "m-beck")
    # Every photo that shows the member is a row; only the main one is the main row. The same
    # rows are loaded from the database alone (another process, or after a restart).
    expected = {main: True, second: False, third: False}
    assert rows_of(session_factory, engine, "m-beck") == expected
    assert rows_of(session_factory, engine, "m-beck", fresh=True) == expected

    # The 1:N search finds the member by the very photo (not only by its main photo).
    assert found(session_factory, engine, lifted)[0] == ("m-beck", second)

    # Another member shows the lifted photo: the profile photo's check names the member, and the
    # same file stored for the member is a possible duplicate account.
    enrol(
        session_factory,
        photo_store,
        engine,
        "m-brody",
        photo("Adrien_Brody_0007"),
        [photo("Adrien_Brody_0001")],
    )
    added = profiles.add_profile_photo(
        session_factory, photo_store, "staff", "m-brody", PhotoInput("gallery", lifted), engine
    )
    assert not added.shown
    codes = {f["code"]: f for f in added.flags}
    assert codes[profiles.PROFILE_PHOTO_OF_ANOTHER]["params"]["candidates"][0][0] == "m-beck"
    assert "m-beck" in codes[POSSIBLE_DUPLICATE]["reason"]
    # The lifted photo does not show m-brody: it never becomes a row of m-brody.
    assert set(rows_of(session_factory, engine, "m-brody")) == set(
        profile_photo_ids(session_factory, "m-brody")[:1]
    )

    # A new member enrolling with it is flagged too, the member named.
    joined = enrol(
        session_factory,
        photo_store,
        engine,
        "m-third",
        photo("Kofi_Annan_0014"),
        [photo("Kofi_Annan_0016"), lifted],
    )
    with session_factory() as s:
        row = s.get(ResultRow, joined.result_id)
        flags = [f for f in row.flags if f["code"] == profiles.PROFILE_PHOTO_OF_ANOTHER]
        assert [(f["params"]["position"], f["params"]["candidates"][0][0]) for f in flags] == [(2, "m-beck")]


def test_photos_leave_the_index_when_removed_rejected_or_erased(session_factory, photo_store, engine):
    kofi = [photo(f"Kofi_Annan_00{n}") for n in (16, 27, 31)]  # all well above approve_at
    done = enrol(session_factory, photo_store, engine, "m-kofi", photo("Kofi_Annan_0014"), kofi)
    assert done.profile.status == "auto_approved", done.profile.reasons
    main, second, third = profile_photo_ids(session_factory, "m-kofi")
    assert rows_of(session_factory, engine, "m-kofi") == {main: True, second: False, third: False}

    # Removed from the profile: out of the index at once, and for a process loading afresh.
    profiles.remove_profile_photo(session_factory, "staff", "m-kofi", 3)
    assert rows_of(session_factory, engine, "m-kofi") == {main: True, second: False}
    assert rows_of(session_factory, engine, "m-kofi", fresh=True) == {main: True, second: False}
    assert ("m-kofi", third) not in found(session_factory, engine, kofi[2])

    # Rejected by a reviewer: out; accepted again: back.
    profiles.decide_profile_photo(session_factory, "reviewer", "m-kofi", 2, approve=False)
    assert rows_of(session_factory, engine, "m-kofi") == {main: True}
    assert rows_of(session_factory, engine, "m-kofi", fresh=True) == {main: True}
    profiles.decide_profile_photo(session_factory, "reviewer", "m-kofi", 2, approve=True)
    assert rows_of(session_factory, engine, "m-kofi") == {main: True, second: False}

    # A new order: the main row follows the photo now first.
    profiles.reorder_profile(session_factory, "staff", "m-kofi", [2, 1])
    assert rows_of(session_factory, engine, "m-kofi") == {second: True, main: False}
    assert rows_of(session_factory, engine, "m-kofi", fresh=True) == {second: True, main: False}

    # Erased: no row of the member is found any more.
    erasure.erase_member(session_factory, photo_store, "m-kofi", actor="staff", via="test")
    assert rows_of(session_factory, engine, "m-kofi") == {}
    assert rows_of(session_factory, engine, "m-kofi", fresh=True) == {}
    assert all(m != "m-kofi" for m, _ in found(session_factory, engine, kofi[1]))
    with session_factory() as s:
        assert s.scalars(select(Photo).where(Photo.member_id == "m-kofi")).all() == []


def test_enrol_missing_adds_the_members_face_of_profile_photos_without_an_embedding(
    session_factory, photo_store, engine
):
    import io

    from PIL import Image
    from sqlalchemy import delete

    from core.storage.schema import Embedding

    tiles = [Image.open(IMAGES / f"{n}.jpg").convert("RGB") for n in ("Howard_Dean_0004", "Kofi_Annan_0025")]
    canvas = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), (90, 90, 90))
    canvas.paste(tiles[0], (0, 0))
    canvas.paste(tiles[1], (tiles[0].width, 0))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=92)
    done = enrol(
        session_factory,
        photo_store,
        engine,
        "m-kofi",
        photo("Kofi_Annan_0014"),
        [photo("Kofi_Annan_0016"), out.getvalue()],
    )
    assert [p.state for p in done.profile.photos] == ["matches", "matches"], done.profile.reasons
    main, group = profile_photo_ids(session_factory, "m-kofi")
    # A profile checked before its photos' embeddings were kept: the group photo has none.
    with session_factory() as s:
        sha = s.get(Photo, group).sha256
        s.execute(delete(Embedding).where(Embedding.photo_sha256 == sha))
        s.commit()
    assert rows_of(session_factory, engine, "m-kofi", fresh=True) == {main: True}

    assert search.enrol_missing(session_factory, engine, photo_store) == 1
    assert rows_of(session_factory, engine, "m-kofi", fresh=True) == {main: True, group: False}
    # The row is the member's face in the group photo, not the other person's.
    assert found(session_factory, engine, photo("Kofi_Annan_0025"))[0] == ("m-kofi", group)
    assert ("m-kofi", group) not in found(session_factory, engine, photo("Howard_Dean_0004"))[:1]
