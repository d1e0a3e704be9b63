"""The 1:N search index (core.workflows.search): ranking on the model's similarity scale, exclusions, threads,
keeping in step with the database, and the duplicate hook on the storing path (SQLite and MariaDB).

No network here: vectors are made up, and the "model" is a stand-in with an identity tower, so
these tests run in a second. The API tests (tests/api/test_api.py) run the same hook with real photos.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sqlalchemy import func, select

from core.storage.schema import (
    GALLERY,
    MEMBER_IN_REVIEW,
    Embedding,
    Member,
    Photo,
    PossibleDuplicate,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification.heads import similarity_from_projections
from core.verification.result import AUTO_APPROVED, FLAGGED, POSSIBLE_DUPLICATE, Flag, PhotoAnalysis
from core.workflows import batches, search

DIM = search.EMBEDDING_DIM
OFFSET, SCALE = 0.6, 12.0


def unit(rng, n=1, dim=DIM):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_index(**kw) -> search.SearchIndex:
    return search.SearchIndex(DIM, OFFSET, SCALE, threshold=0.5, band=(0.4, 0.6), dup_threshold=0.8, **kw)


# ----------------------------------------------------------------------------------------------
# The index alone


def test_search_ranks_like_the_engine_similarity():
    rng = np.random.default_rng(1)
    vectors = unit(rng, 500) * 0.9  # not unit length: the tower need not normalise
    index = make_index(capacity=16)  # grows by doubling along the way
    index.add_many([f"m{i}" for i in range(500)], vectors, range(1, 501))
    query = vectors[42] + 0.05 * unit(rng)[0]
    found = index.search(query, k=10)
    stored = vectors.astype(np.float16).astype(np.float32)  # the rows as the index keeps them
    brute = sorted(
        ((f"m{i}", similarity_from_projections(stored[i], query, OFFSET, SCALE)) for i in range(500)),
        key=lambda t: -t[1],
    )[:10]
    assert [m for m, _ in found] == [m for m, _ in brute]
    assert found[0][0] == "m42"
    np.testing.assert_allclose([s for _, s in found], [s for _, s in brute], rtol=1e-5, atol=1e-6)
    assert len(index) == 500 and index.member_count == 500


def test_exclude_member_min_similarity_and_one_row_per_member():
    rng = np.random.default_rng(2)
    base = unit(rng)[0]
    index = make_index()
    index.add("me", base, 1)
    index.add_many(["twin", "twin"], np.stack([base * 0.999, base * 0.998]), [2, 3], replace_member=False)
    index.add("far", -base, 4)
    found = index.search(base, k=5, exclude_member="me")
    assert [m for m, _ in found] == ["twin", "far"]  # "twin" once, though it has two rows
    strict = index.search(base, k=5, exclude_member="me", min_similarity=0.8)
    assert [m for m, _ in strict] == ["twin"]
    assert all(s >= 0.8 for _, s in strict)
    assert index.search(base, k=0) == []
    assert make_index().search(base, k=3) == []


def test_replace_and_remove_rows():
    rng = np.random.default_rng(3)
    a, b = unit(rng, 2)
    index = make_index()
    index.add("x", a, 10)
    index.add("x", b, 11)  # a newer gallery photo replaces the member's older one
    assert len(index) == 1
    assert index.search(b, k=1)[0][0] == "x"
    assert index.search(a, k=1, min_similarity=0.99) == []
    index.add("x", a, 9)  # an older photo arriving late does not displace the newer one
    assert index.fingerprint() == (2, 20)
    index.remove_member("x")
    assert len(index) == 0 and index.search(a, k=3) == []
    assert index.fingerprint() == (0, 0)


def test_threads_adding_and_searching():
    rng = np.random.default_rng(4)
    index = make_index(capacity=16)
    vectors = unit(rng, 2000)
    errors = []

    def writer(start):
        try:
            for i in range(start, 2000, 4):
                index.add(f"m{i}", vectors[i], i + 1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader():
        try:
            for i in range(300):
                for member, sim in index.search(vectors[i], k=5):
                    assert 0.0 <= sim <= 1.0 and member.startswith("m")
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(index) == 2000
    assert all(index.search(vectors[i], k=1)[0][0] == f"m{i}" for i in range(0, 2000, 97))


def test_duplicate_threshold_is_stricter_than_verification(monkeypatch):
    monkeypatch.delenv(search.DUPLICATE_THRESHOLD_SETTING, raising=False)
    dup = search.duplicate_threshold(0.5, (0.35, 0.7))
    assert dup > 0.7 > 0.5 and dup < 1.0

    def logit(p):
        return np.log(p / (1 - p))

    # The model's approval point plus a fixed margin of evidence on the calibrated scale, whatever
    # units the tower's distances have (the offset and scale do not move it)...
    for approve_at in (0.7, 0.85, 0.96):
        for offset, scale in ((0.58, 46.9), (1.62, 30.3), (None, None)):
            found = search.duplicate_threshold(0.4, (0.01, approve_at), offset=offset, scale=scale)
            assert logit(found) - logit(approve_at) == pytest.approx(
                search.DUPLICATE_MARGIN_LOGODDS, abs=1e-6
            )
    # ...the verification threshold when it is the stricter point...
    assert search.duplicate_threshold(0.9, (0.01, 0.7)) == search.duplicate_threshold(0.1, (0.01, 0.9))
    # ...never looser than the floor, never stricter than the ceiling (a saturated approve_at).
    assert search.duplicate_threshold(0.01, (0.001, 0.02)) == search.DUPLICATE_FLOOR
    for saturated in (0.99999, 0.9999999999944786, 1.0):
        assert search.duplicate_threshold(0.5, (0.01, saturated)) == search.DUPLICATE_CEILING
    assert search.duplicate_threshold(0.5, (0.35, 0.7), {"duplicate_threshold": 0.93}) == 0.93
    assert search.duplicate_threshold(0.5, (0.35, 0.7), {"duplicate_threshold": 1 - 1e-12}) == 0.99999
    monkeypatch.setenv(search.DUPLICATE_THRESHOLD_SETTING, "0.9")
    assert search.duplicate_threshold(0.5, (0.35, 0.7), {"duplicate_threshold": 0.93}) == 0.9
    monkeypatch.setenv(search.DUPLICATE_THRESHOLD_SETTING, "2")
    with pytest.raises(ValueError):
        search.duplicate_threshold(0.5, (0.35, 0.7))


# ----------------------------------------------------------------------------------------------
# With the database: a stand-in model whose tower is the identity


class _Model:
    version = "search-test-v1"
    threshold = 0.5
    uncertain_band = (0.4, 0.6)
    metadata = {"duplicate_threshold": 0.8}

    @staticmethod
    def tower(x, training=False):
        return np.asarray(x, np.float32)

    @staticmethod
    def similarity_params():
        return OFFSET, SCALE


class _Engine:
    model = _Model()
    model_version = _Model.version


@pytest.fixture
def model(monkeypatch):
    monkeypatch.delenv(search.DUPLICATE_THRESHOLD_SETTING, raising=False)
    search.reset_indexes()
    search.register_engine(_Engine())
    yield _Model
    search.reset_indexes()


def _embed(session, member_id: str, vector: np.ndarray) -> None:
    photo = session.scalar(select(Photo).where(Photo.member_id == member_id, Photo.kind == GALLERY))
    session.add(
        Embedding(
            photo_sha256=photo.sha256,
            model_id=search.pretrained_model_id(),
            dim=DIM,
            vector=np.asarray(vector, "<f4").tobytes(),
        )
    )
    session.commit()


def _analysis(sha: str, vector: np.ndarray) -> PhotoAnalysis:
    return PhotoAnalysis(sha256=sha, width=96, height=96, embedding=vector, projection=vector)


def _result(make_result, gallery_sha, gallery_vec, verification_sha, verification_vec):
    result = make_result(AUTO_APPROVED, 0.9, model_version=_Model.version)
    result.gallery = _analysis(gallery_sha, gallery_vec)
    result.verification = _analysis(verification_sha, verification_vec)
    return result


def _photos(session, member_id):
    return {p.kind: p for p in session.scalars(select(Photo).where(Photo.member_id == member_id))}


def test_index_follows_the_database(session, add_member, model, db_engine):
    rng = np.random.default_rng(5)
    vectors = unit(rng, 3)
    for i in range(2):
        add_member(f"M{i}")
        _embed(session, f"M{i}", vectors[i])
    index = search.index_for(db_engine, model.version)
    assert len(index) == 2
    assert index.search(vectors[1], k=1)[0][0] == "M1"

    # Another process enrols a member: picked up by the next sync.
    add_member("M2")
    _embed(session, "M2", vectors[2])
    index.sync(db_engine, lambda x: x, force_verify=True)
    assert index.search(vectors[2], k=1)[0][0] == "M2"

    # Another process replaces M0's gallery photo by one without an embedding: M0 leaves the index.
    old = _photos(session, "M0")[GALLERY]
    old.current = False
    session.commit()
    index.sync(db_engine, lambda x: x, force_verify=True)
    assert "M0" not in [m for m, _ in index.search(vectors[0], k=5)]
    assert index.fingerprint()[0] == 2


def test_a_reload_in_several_blocks_keeps_every_row_exactly(
    session, add_member, model, db_engine, monkeypatch
):
    from core.workflows.search import index as index_module

    # Blocks of 3 fetched rows, projected 2 at a time: the rows go into the new index block by block.
    monkeypatch.setattr(index_module, "LOAD_CHUNK", 3)
    monkeypatch.setattr(index_module, "PROJECT_CHUNK", 2)
    rng = np.random.default_rng(11)
    vectors = unit(rng, 8)
    for i in range(8):
        add_member(f"M{i}")
        _embed(session, f"M{i}", vectors[i])
    index = search.index_for(db_engine, model.version)
    assert len(index) == 8
    for i in range(8):
        row = index._rows_of_member[f"M{i}"]
        assert len(row) == 1
        stored = index._matrix[row[0]]
        assert stored.dtype == np.float16
        assert np.array_equal(stored, vectors[i].astype(np.float16))  # the projection is the identity here
        assert index.search(vectors[i], k=1)[0][0] == f"M{i}"


def test_hook_flags_possible_duplicate_on_the_storing_path(session, add_member, model, make_result):
    rng = np.random.default_rng(6)
    face_x, face_y = unit(rng, 2)
    add_member("OLD", "F")
    _embed(session, "OLD", face_x)
    add_member("NEW", "F")
    photos = _photos(session, "NEW")
    # NEW's selfie is (nearly) the face of OLD: a second account of the same person.
    result = _result(
        make_result, photos[GALLERY].sha256, face_y, photos["verification"].sha256, face_x * 0.999
    )
    row = batches.store_result(
        session,
        result,
        member_id="NEW",
        gallery_photo_id=photos[GALLERY].id,
        verification_photo_id=photos["verification"].id,
    )
    # store_result ran the hook (the one storing path of the dashboard, the batch runner and the API).
    assert search.was_checked(row)
    assert search.flag_possible_duplicates(session, row, result) == []  # checked once only
    session.commit()

    stored = session.get(ResultRow, row.id)
    assert session.get(Member, "NEW").status == MEMBER_IN_REVIEW
    assert stored.status == FLAGGED and stored.possible_duplicate
    assert [f["code"] for f in stored.flags] == [POSSIBLE_DUPLICATE]
    assert "OLD" in stored.flags[0]["reason"]
    dups = session.execute(select(PossibleDuplicate.candidate_member_id, PossibleDuplicate.similarity)).all()
    assert [d[0] for d in dups] == ["OLD"] and dups[0][1] >= 0.8
    # The candidates travel as the flag's parameters, not only inside its English sentence.
    params = stored.flags[0]["params"]
    assert [m for m, _ in params["candidates"]] == ["OLD"] and params["candidates"][0][1] >= 0.8
    assert search.candidates_of(stored.flags[0]) == [("OLD", params["candidates"][0][1])]
    # Both photos' pretrained embeddings are stored; NEW is enrolled in this process's index at once.
    assert session.scalar(select(func.count(Embedding.id))) == 3
    index = search.index_for(session.get_bind(), model.version, sync=False)
    assert index.search(face_y, k=1)[0][0] == "NEW"
    # The review queue puts it first.
    from core.storage.queries import review_queue

    assert review_queue(session)[0].result_id == row.id
    assert review_queue(session)[0].priority == 0


def test_hook_leaves_other_people_alone_and_rollback_enrols_nobody(session, add_member, model, make_result):
    rng = np.random.default_rng(7)
    face_x, face_y, face_z = unit(rng, 3)
    add_member("OLD")
    _embed(session, "OLD", face_x)
    add_member("NEW")
    photos = _photos(session, "NEW")
    result = _result(make_result, photos[GALLERY].sha256, face_y, photos["verification"].sha256, face_z)
    row = batches.store_result(
        session,
        result,
        member_id="NEW",
        gallery_photo_id=photos[GALLERY].id,
        verification_photo_id=photos["verification"].id,
    )
    assert search.flag_possible_duplicates(session, row, result) == []
    assert row.status == AUTO_APPROVED and not row.possible_duplicate
    session.rollback()
    index = search.index_for(session.get_bind(), model.version, sync=False)
    assert index.search(face_y, k=1, min_similarity=0.9) == []
    assert session.get(Member, "NEW").status != MEMBER_IN_REVIEW


def test_stale_candidate_is_never_reported(session, add_member, model, make_result, db_engine):
    rng = np.random.default_rng(8)
    face_x, face_y = unit(rng, 2)
    add_member("GONE")
    _embed(session, "GONE", face_x)
    index = search.index_for(db_engine, model.version)
    assert len(index) == 1
    # GONE's gallery photo is replaced behind the index's back (no sync in between).
    _photos(session, "GONE")[GALLERY].current = False
    session.commit()
    index.last_sync = index.last_verify = float("inf")  # make sure it does not sync
    add_member("NEW")
    photos = _photos(session, "NEW")
    result = _result(make_result, photos[GALLERY].sha256, face_y, photos["verification"].sha256, face_x)
    row = batches.store_result(
        session,
        result,
        member_id="NEW",
        gallery_photo_id=photos[GALLERY].id,
        verification_photo_id=photos["verification"].id,
    )
    assert search.flag_possible_duplicates(session, row, result) == []
    session.commit()
    assert session.scalar(select(func.count(PossibleDuplicate.id))) == 0


def test_stand_in_engine_results_are_stored_unchanged(session, add_member, make_result):
    add_member("A")
    photos = _photos(session, "A")
    result = make_result(AUTO_APPROVED, 0.9)  # no embeddings or projections
    row = batches.store_result(
        session,
        result,
        member_id="A",
        gallery_photo_id=photos[GALLERY].id,
        verification_photo_id=photos["verification"].id,
    )
    assert search.flag_possible_duplicates(session, row, result) == []
    session.commit()
    assert session.scalar(select(func.count(Embedding.id))) == 0
    assert row.status == AUTO_APPROVED


def test_duplicate_flag_candidates_the_pages_can_read():
    flag = Flag(
        POSSIBLE_DUPLICATE, "two members", "verification", {"candidates": [["M-7", 0.9991], ["김1", 1.0]]}
    )
    assert search.candidates_of(flag) == [("M-7", 0.9991), ("김1", 1.0)]
    stored = {"code": POSSIBLE_DUPLICATE, "reason": "changed wording", "params": flag.params}
    assert search.candidates_of(stored) == [("M-7", 0.9991), ("김1", 1.0)]  # never read from the sentence
    # A flag stored before the candidates were parameters names them only in its reason.
    legacy = {
        "code": POSSIBLE_DUPLICATE,
        "reason": "member M-7 (similarity 0.999); member 김1 (similarity 1.000)",
    }
    assert search.candidates_of(legacy) == [("M-7", 0.999), ("김1", 1.0)]
    assert search.candidates_of({"code": POSSIBLE_DUPLICATE, "reason": None}) == []


# ----------------------------------------------------------------------------------------------
# A retrained model, promoted: the duplicate threshold on its own scale (real photos, real networks)


@pytest.mark.slow
def test_a_promoted_retrained_model_keeps_a_meaningful_duplicate_threshold(
    session_factory, photo_store, models_copy, warm_cache, monkeypatch
):
    """A small model trained on the sample people and promoted: its threshold sits between the floor
    and the ceiling, above its own approve_at, and searching with another photo of a person it never
    saw finds that person's member marked possible_duplicate, and nobody else."""
    from conftest import SAMPLE_DIR, SAMPLE_IMAGES

    from core.training import pipeline, registry
    from core.training.fitting import TrainParams
    from core.verification.engine import Engine

    monkeypatch.delenv(search.DUPLICATE_THRESHOLD_SETTING, raising=False)
    warm_cache(session_factory)
    outcome = pipeline.run(
        pipeline.DataChoice(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv", reviewed=False),
        TrainParams(epochs=3, gender_epochs=15, positives_per_person=20),
        session_factory=session_factory,
        store=photo_store,
        models_dir=models_copy,
        actor="ds_user",
        compare_with_active=False,
    )
    with session_factory() as session:
        registry.promote(session, outcome.version, "admin_user", models_dir=models_copy)
        active = registry.active_version(session, models_copy)
    assert active == outcome.version
    engine = Engine.load(active, models_copy)

    points = engine.model.operating_points
    dup = search.duplicate_threshold(
        engine.model.threshold, engine.model.uncertain_band, engine.model.metadata
    )
    assert search.DUPLICATE_FLOOR <= dup <= search.DUPLICATE_CEILING and dup > points.approve_at

    # Each held-out person enrolled with their first photo; every other photo of theirs searched.
    held = outcome.result["data"]["heldout_people"]
    photos = {p: sorted(SAMPLE_IMAGES.glob(f"{p}_[0-9][0-9][0-9][0-9].jpg")) for p in held}
    with session_factory() as session:
        for person, files in photos.items():
            blob = photo_store.put(files[0].read_bytes())
            session.add(Member(id=person, gender="M"))
            session.add(
                Photo(
                    member_id=person,
                    kind=GALLERY,
                    sha256=blob.sha256,
                    stored_path=blob.relative_path,
                    size_bytes=blob.size_bytes,
                    current=True,
                )
            )
        session.commit()
    assert search.enrol_missing(session_factory, engine, photo_store) == len(held)
    flagged_right, searches, flagged_wrong = 0, 0, []
    with session_factory() as session:
        for person, files in photos.items():
            for query in files[1:]:
                found = search.search_photo(session, engine, query.read_bytes(), k=len(held))
                assert found.duplicate_threshold == dup  # what /health and the API report
                searches += 1
                for c in found.candidates:
                    if c.similarity >= found.duplicate_threshold:  # the API's possible_duplicate
                        if c.member_id == person:
                            flagged_right += 1
                        else:
                            flagged_wrong.append((query.name, c.member_id, c.similarity))
    assert searches >= 10
    assert flagged_wrong == []
    assert flagged_right >= searches / 2, f"{flagged_right} of {searches} same-person searches flagged"


def test_the_consistency_check_runs_off_the_request_path(session, add_member, model, db_engine, monkeypatch):
    """A request that finds the check due answers at once; the check (made slow here, as a scan of
    200,000 photos is) runs on its own thread and reloads the index when the database differs."""
    import time as clock

    from core.workflows.search import index as index_module

    rng = np.random.default_rng(9)
    vectors = unit(rng, 3)
    for i in range(3):
        add_member(f"C{i}")
        _embed(session, f"C{i}", vectors[i])
    index = search.index_for(db_engine, model.version)
    assert len(index) == 3
    # Another process takes C0's gallery photo out of use: no new id, only the check can see it.
    _photos(session, "C0")[GALLERY].current = False
    session.commit()

    real = index_module._db_fingerprint
    started = threading.Event()

    def slow_fingerprint(*args, **kwargs):
        started.set()
        clock.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(index_module, "_db_fingerprint", slow_fingerprint)
    index.last_verify = 0.0  # the check is due
    checks = index.checks
    began = clock.perf_counter()
    index.sync(db_engine, lambda x: x)  # what a request does before it searches
    assert started.wait(1.0)
    # During the check: requests sync and search at once, from the content loaded so far.
    index.sync(db_engine, lambda x: x)
    assert index.search(vectors[1], k=1)[0][0] == "C1"
    assert clock.perf_counter() - began < 0.5
    assert index.checks == checks  # still running
    index.wait_for_check(10)
    assert index.checks == checks + 1
    assert "C0" not in [m for m, _ in index.search(vectors[0], k=5)]  # reloaded by the check
    assert len(index) == 2
