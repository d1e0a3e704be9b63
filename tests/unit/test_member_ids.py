"""Member ids: one canonical form (NFKC), and no new member whose id only looks like another's.

The attack: with M0001 enrolled, Cyrillic М0001, m0001, "M0001." and M0OO1 were each enrolled as
new members. They are refused (not folded) with a message naming the existing id."""

from __future__ import annotations

import pytest
from test_api import BECKHAM, BRODY, api, engine, photo  # noqa: F401 (fixtures)

from core.api.errors import ApiError
from core.api.inputs import checked_member_id
from core.storage.schema import Member
from core.workflows import member_ids

LOOKALIKES = ["m0001", "M0001.", "M0OO1", "M-0001", "MOOO1", "M000l"]


@pytest.mark.parametrize(
    "raw, canonical",
    [("M0001", "M0001"), (" Ｍ０００１ ", "M0001"), ("김민수01", "김민수01"), ("ｍ-1_a.b", "m-1_a.b")],
)
def test_ids_are_nfkc_normalised(raw, canonical):
    assert member_ids.canonical_member_id(raw) == canonical


@pytest.mark.parametrize(
    "raw, words",
    [
        ("М0001", "Cyrillic or Greek letters"),  # Cyrillic capital em
        ("MΟ001", "Cyrillic or Greek letters"),  # Greek capital omicron
        ("M\u200b0001", "invisible"),  # zero-width space
        ("M0001\u2060", "invisible"),  # word joiner
        ("M\u00ad0001", "invisible"),  # soft hyphen
        ("Mя001", "mixes scripts"),
        ("M김01", "mixes scripts"),
        ("M 0001", "may hold only"),
    ],
)
def test_invisible_characters_mixed_scripts_and_look_alike_letters_are_refused(raw, words):
    with pytest.raises(ValueError, match=words):
        member_ids.canonical_member_id(raw)


def test_look_alikes_of_an_existing_member_are_refused_on_both_databases(session):
    session.add(Member(id="M0001", gender="F", status="enrolled"))
    session.commit()
    assert member_ids.check_new_member_id(session, "M0001") == "M0001"  # itself is fine
    assert member_ids.check_new_member_id(session, "M0002") == "M0002"
    for raw in LOOKALIKES:
        with pytest.raises(ValueError, match="looks like the existing member 'M0001'"):
            member_ids.check_new_member_id(session, raw)


def test_api_inputs_use_the_same_rule(session_factory):
    with session_factory() as session:
        session.add(Member(id="M0001", gender="F", status="enrolled"))
        session.commit()
    with pytest.raises(ApiError) as info:
        checked_member_id("m0001", session_factory)
    assert info.value.status == 422 and "M0001" in info.value.message
    with pytest.raises(ApiError):
        checked_member_id("М0001")  # Cyrillic, even where no member is looked up
    assert checked_member_id("Ｍ0001", session_factory) == "M0001"


def test_look_alike_ids_are_not_enrolled_over_the_api(api):  # noqa: F811
    api.enrol("M0001", photo(BECKHAM[0]), photo(BECKHAM[1]))
    for raw in ["М0001", *LOOKALIKES[:3]]:
        r = api.upload(raw, photo(BRODY[0]), photo(BRODY[1]), registered_gender="M", enrol=True)
        assert r.status_code == 422 and r.json()["error"] == "bad_member_id", (raw, r.text)
    with api.factory() as session:
        assert [m.id for m in session.query(Member)] == ["M0001"]
    again = api.upload("M0001", verification=photo(BECKHAM[1]))
    assert again.status_code == 201, again.text
