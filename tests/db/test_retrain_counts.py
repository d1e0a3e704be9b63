"""The Retrain page's counts: right, read once, and read again after the next result."""

from __future__ import annotations

from conftest import engine_result

from core.dashboard import retrain
from core.workflows import batches, reverification


def store(session, member, status: str, version: str, *, decided_by=None, truth=None):
    gallery, verification = member.photos[0], member.photos[1]
    row = batches.store_result(
        session,
        engine_result(status, 0.9, latency_ms=40.0, model_version=version),
        member_id=member.id,
        gallery_photo_id=gallery.id,
        verification_photo_id=verification.id,
    )
    if decided_by is not None:
        row.decided_by, row.ground_truth_same = decided_by, truth
    session.commit()
    return row


def test_counts_are_right_and_read_once_until_the_next_result(session, add_member, monkeypatch):
    members = [add_member(f"R{n}") for n in range(4)]
    store(session, members[0], "auto_approved", "v1")
    store(session, members[1], "auto_approved", "v2", decided_by="anna", truth=True)
    store(session, members[2], "flagged", "v1", decided_by="bo", truth=False)
    calls = []
    original = reverification.count_to_reverify
    monkeypatch.setattr(
        reverification, "count_to_reverify", lambda *a, **k: calls.append(a) or original(*a, **k)
    )
    counts = retrain.reverify_counts(session, "v2")
    assert counts == {"all": 4, "older": 3}  # R1's newest result is on v2 already
    # The counts are the lengths of the lists a re-verification would run.
    assert counts == {s: len(reverification.members_to_reverify(session, "v2", s)) for s in counts}
    assert retrain.reverify_counts(session, "v2") == counts and len(calls) == 1  # the second from cache
    available = retrain.data_available(session)
    assert (available["reviewed_pairs"], available["reviewed_same"]) == (2, 1)

    store(session, members[3], "auto_approved", "v2", decided_by="anna", truth=True)
    assert retrain.reverify_counts(session, "v2") == {"all": 4, "older": 2} and len(calls) == 2
    available = retrain.data_available(session)
    assert (available["reviewed_pairs"], available["reviewed_same"]) == (3, 2)
