"""The self-measurement (core.workflows.self_measurement): the false-match rate at approve_at counted
on the members' own cross-member pairs, with the shipped model, on SQLite and MariaDB.

The members are the real sample photos (their real embeddings through the product's feature path),
plus one planted look-alike: the same person's other photos under a second member id, not flagged.
Every expectation is computed here by brute force with the engine's own per-pair formula
(core.verification.heads.similarity_from_projections), never by the code under test.
"""

from __future__ import annotations

import itertools
import json
from datetime import timedelta

import numpy as np
import pytest
from conftest import SAMPLE_DIR, store_member
from sqlalchemy import func, select, update

from core.dashboard import self_measurement as page
from core.storage.schema import (
    AuditEntry,
    Embedding,
    Member,
    Photo,
    PossibleDuplicate,
    SelfMeasurement,
    SelfMeasurementPair,
    utcnow,
)
from core.storage.schema import ModelVersion as VersionRow
from core.storage.schema import VerificationResult as ResultRow
from core.verification.heads import load_version, similarity_from_projections
from core.workflows import self_measurement as sm

NETWORKS = ("dlib", "sface8")  # the shipped version's
PLANTED = ("P0001", "M", ("Kofi_Annan_0016.jpg", "Kofi_Annan_0025.jpg"))  # M0001 is Kofi Annan too


@pytest.fixture(scope="module")
def model():
    return load_version()


# ----------------------------------------------------------------------------------------------
# The bound


def test_clopper_pearson_upper_bound_matches_known_values():
    from scipy.stats import binom

    # None of 3,000: 1 - 0.05^(1/3000), the "rule of three" region.
    assert sm.clopper_pearson_upper(0, 3000) == pytest.approx(1 - 0.05 ** (1 / 3000), rel=1e-9)
    assert sm.clopper_pearson_upper(0, 3000) == pytest.approx(0.000998, abs=5e-7)
    # 2 of 1,000: the rate at which seeing 2 or fewer has probability 5%.
    upper = sm.clopper_pearson_upper(2, 1000)
    assert binom.cdf(2, 1000, upper) == pytest.approx(0.05, abs=1e-9)
    assert upper == pytest.approx(0.006281, abs=2e-6)
    assert sm.clopper_pearson_upper(0, 0) is None
    assert sm.clopper_pearson_upper(5, 5) == 1.0
    # The pairs needed before any bound can pass under a 0.001 target.
    needed = sm.pairs_needed(0.001)
    assert sm.clopper_pearson_upper(0, needed) <= 0.001 < sm.clopper_pearson_upper(0, needed - 1)


# ----------------------------------------------------------------------------------------------
# The blocks against brute force (no database)


def test_blocks_find_exactly_the_pairs_brute_force_finds():
    rng = np.random.default_rng(7)
    scale = sm.Scale(1.0, 12.0)
    n = 300
    members = [f"m{i // 2 if i < 100 else i:04d}" for i in range(n)]  # the first 50 have two photos
    genders = ["F" if i % 3 else "M" for i in range(n)]
    genders = [genders[(int(m[1:]) * 2) % n] for m in members]  # one gender per member
    births = [1960 + (i % 15) if i % 4 else None for i in range(n)]
    proj = rng.standard_normal((n, 16)).astype(np.float32) * 0.35
    proj[201] = proj[7] + 0.01  # a look-alike
    proj[202] = proj[9] + 0.01  # another one, its member pair excluded below
    excluded = [(members[9], members[202])]
    photo_set = sm.build_photo_set(list(range(1, n + 1)), members, genders, births, proj, excluded, 2026)
    approve_at, near_from, floor = 0.7, 0.35, 0.1
    total = sm.empty_counts(photo_set)
    found = []
    for block in sm.blocks(photo_set, 37):
        result = sm.scan_block(photo_set, block, scale, approve_at, near_from, floor, 1000, column_chunk=53)
        sm.add_counts(total, result.counts)
        found += [(int(photo_set.photo_ids[a]), int(photo_set.photo_ids[b])) for a, b, _ in result.pairs]
    expected, compared, near, tail = set(), {"F": 0, "M": 0}, {"F": 0, "M": 0}, {"F": 0, "M": 0}
    for i, j in itertools.combinations(range(n), 2):
        if members[i] == members[j] or genders[i] != genders[j] or genders[i] not in ("F", "M"):
            continue
        if {members[i], members[j]} == {members[9], members[202]}:
            continue
        compared[genders[i]] += 1
        s = similarity_from_projections(proj[i], proj[j], scale.offset, scale.scale)
        if s >= approve_at:
            expected.add((min(i, j) + 1, max(i, j) + 1))
        elif s >= near_from:
            near[genders[i]] += 1
        if s >= 0.5:
            tail[genders[i]] += 1
    assert {(min(a, b), max(a, b)) for a, b in found} == expected
    assert (8, 202) in expected and (10, 203) not in expected  # photo ids are row + 1
    for g in ("F", "M"):
        assert total["compared"]["genders"][g] == compared[g]
        assert total["genders"][g]["near"] == near[g]
        assert total["genders"][g]["tail"][sm.TAIL_THRESHOLDS.index(0.5)] == tail[g]
    assert sum(total["genders"][g]["at_approve"] for g in "FM") == len(expected)


def test_projections_in_a_file_scan_exactly_as_in_memory():
    """Rows written in any order into the measurement's projection file read back bit for bit, and
    a scan over the file gives the in-memory scan's counts and pairs (the file holds float32)."""
    from core.workflows.self_measurement.store import ProjectionFile

    rng = np.random.default_rng(3)
    n, d = 2500, 20
    proj = (rng.standard_normal((n, d)) * 0.35).astype(np.float32)
    proj[2001] = proj[7] + 0.01
    members = [f"m{i // 2:05d}" for i in range(n)]
    genders = ["F" if (i // 2) % 2 else "M" for i in range(n)]
    args = (list(range(1, n + 1)), members, genders, [None] * n)
    in_memory = sm.build_photo_set(*args, proj, [], 2026)
    in_file = sm.build_photo_set(*args, None, [], 2026, dim=d)
    assert isinstance(in_file.projections, ProjectionFile)
    order = rng.permutation(n)
    for start in range(0, n, 700):
        rows = order[start : start + 700]
        in_file.projections.write_rows(rows, in_memory.projections[rows])
    assert np.array_equal(in_file.projections.projections(), in_memory.projections)
    keep = rng.random(n) < 0.7
    assert np.array_equal(in_file.projections.take(keep).projections(), in_memory.projections[keep])
    scale, results = sm.Scale(1.0, 12.0), []
    for photo_set in (in_memory, in_file):
        total, pairs = sm.empty_counts(photo_set), []
        for block in sm.blocks(photo_set, 257):
            result = sm.scan_block(photo_set, block, scale, 0.7, 0.35, 0.1, 1000, column_chunk=300)
            sm.add_counts(total, result.counts)
            pairs += result.pairs
        results.append((total, sorted(pairs)))
    assert results[0] == results[1] and results[0][0]["genders"]["F"]["at_approve"] > 0
    # The genders' blocks in turn, and every pair of a gender in exactly one block.
    blocks = sm.blocks(in_memory, 257)
    assert [int(in_memory.gender[f]) for f, _e, _g in blocks[:4]] == [0, 1, 0, 1]
    same_member = sum(1 for i in range(0, n, 2))
    assert sum(sm.scan.block_pairs(b) for b in blocks) - same_member == sum(
        sm.compared_pairs(in_memory)["genders"].values()
    )
    in_file.close()


# ----------------------------------------------------------------------------------------------
# A database of real sample photos


def _embedding(sample_vectors, sha: str) -> np.ndarray:
    return np.concatenate([sample_vectors[""][sha][:128], sample_vectors["sface"][sha]]).astype("<f4")


def _store_embeddings(session, sample_vectors) -> None:
    from core.workflows.search import embedding_dim, pretrained_model_id

    model_id, dim = pretrained_model_id(NETWORKS), embedding_dim(NETWORKS)
    have = set(session.scalars(select(Embedding.photo_sha256)))
    for sha in sorted(set(session.scalars(select(Photo.sha256))) - have):
        session.add(
            Embedding(
                photo_sha256=sha,
                model_id=model_id,
                dim=dim,
                vector=_embedding(sample_vectors, sha).tobytes(),
                created_at=utcnow(),
            )
        )
    session.commit()


def _planted_photos() -> tuple[bytes, bytes]:
    return tuple((SAMPLE_DIR / "images" / name).read_bytes() for name in PLANTED[2])


@pytest.fixture
def sample_members(session_factory, photo_store, sample_vectors, add_member):
    """The 20 sample members with their embeddings; returns a function that plants the look-alike."""
    from core.workflows import importer

    with session_factory() as session:
        importer.load_sample_members(session, actor="test", photo_store=photo_store)
        _store_embeddings(session, sample_vectors)

    def plant():
        add_member(PLANTED[0], PLANTED[1], photos=_planted_photos())
        with session_factory() as session:
            _store_embeddings(session, sample_vectors)

    return plant


def _brute_force(session, model, excluded=()):
    """(compared pairs, {(photo a, photo b)} at or above approve_at) by the engine's per-pair formula."""
    rows = session.execute(
        select(Photo.id, Photo.member_id, Member.gender, Embedding.vector)
        .join(Member, Member.id == Photo.member_id)
        .join(Embedding, Embedding.photo_sha256 == Photo.sha256)
        .where(Photo.current.is_(True))
    ).all()
    offset, scale = model.similarity_params()
    approve_at = model.operating_points.approve_at
    proj = np.asarray(model.tower(np.stack([np.frombuffer(r[3], "<f4") for r in rows]), training=False))
    compared, at = 0, set()
    for i, j in itertools.combinations(range(len(rows)), 2):
        a, b = rows[i], rows[j]
        if a[1] == b[1] or a[2] != b[2] or {a[1], b[1]} in [set(p) for p in excluded]:
            continue
        compared += 1
        if similarity_from_projections(proj[i], proj[j], offset, scale) >= approve_at:
            at.add((min(a[0], b[0]), max(a[0], b[0])))
    return compared, at


def _stored_pairs(session, run_id):
    rows = session.execute(
        select(SelfMeasurementPair.photo_a_id, SelfMeasurementPair.photo_b_id).where(
            SelfMeasurementPair.run_id == run_id
        )
    ).all()
    return {(min(a, b), max(a, b)) for a, b in rows}


def _member_pairs(session, run_id):
    rows = session.execute(
        select(SelfMeasurementPair.member_a_id, SelfMeasurementPair.member_b_id).where(
            SelfMeasurementPair.run_id == run_id
        )
    ).all()
    return {tuple(sorted(r)) for r in rows}


def test_fresh_install_says_twenty_members_are_too_few(session_factory, sample_members, model):
    summary = sm.measure(session_factory, model, "test", day="2026-12-01")
    assert summary["members"] == 20 and summary["photos"] == 40
    assert summary["alert"] == sm.TOO_FEW
    assert 0 < summary["all"]["compared"] < summary["pairs_needed"]
    for g in ("F", "M"):
        assert summary["genders"][g]["at_approve"]["upper"] > summary["target"]
    with session_factory() as session:
        state = sm.alert_state(session, model.version)
    assert state.status == sm.TOO_FEW and state.alerting
    from core.dashboard import self_measurement as page

    with session_factory() as session:
        view = page.kpi_view(session, "en", model.version)
    assert "too few" in view.headline.lower()
    assert f"{summary['all']['compared']:,}" in view.headline


def test_the_job_finds_the_planted_look_alike_and_leaves_flagged_pairs_out(
    session_factory, sample_members, model
):
    sample_members()  # P0001: Kofi Annan's other photos, not flagged
    summary = sm.measure(session_factory, model, "test", day="2026-12-02")
    with session_factory() as session:
        compared, expected = _brute_force(session, model)
        run_id = summary["run_id"]
        assert summary["all"]["compared"] == compared
        assert _stored_pairs(session, run_id) == expected
        assert ("M0001", "P0001") in _member_pairs(session, run_id)
        assert summary["all"]["at_approve"]["k"] == len(expected)
        assert summary["genders"]["M"]["tail"]["0.1"] >= summary["genders"]["M"]["at_approve"]["k"]

        # The KPI page's service lists the pair for a reviewer.
        from core.dashboard import self_measurement as page

        view = page.kpi_view(session, "en", model.version)
        assert any({p.member_a, p.member_b} == {"M0001", "P0001"} for p in view.pairs)

        # Flag the two members as a possible duplicate account: the next measurement leaves them out.
        result = ResultRow(
            member_id="P0001", threshold=0.5, band_low=0.1, band_high=0.7, status="flagged", model_version="x"
        )
        session.add(result)
        session.flush()
        session.add(PossibleDuplicate(result_id=result.id, candidate_member_id="M0001", similarity=0.99))
        session.commit()
    later = sm.measure(session_factory, model, "test", day="2026-12-03")
    with session_factory() as session:
        compared_after, expected_after = _brute_force(session, model, excluded=[("P0001", "M0001")])
        assert later["all"]["compared"] == compared_after == compared - 4  # 2 photos x 2 photos
        assert _stored_pairs(session, later["run_id"]) == expected_after
        assert ("M0001", "P0001") not in _member_pairs(session, later["run_id"])
        assert later["excluded_member_pairs"] == 1

        # A reviewer's "same person" verdict leaves a pair out just the same.
        sm.record_verdict(session, "M0010", "M0015", True, "reviewer")
        assert session.scalar(select(func.count()).where(AuditEntry.action == sm.PAIR_VERDICT)) == 1
    third = sm.measure(session_factory, model, "test", day="2026-12-04")
    with session_factory() as session:
        compared_third, _ = _brute_force(session, model, excluded=[("P0001", "M0001"), ("M0010", "M0015")])
    assert third["all"]["compared"] == compared_third == compared - 8


def test_the_job_is_idempotent_and_resumes_where_it_stopped(session_factory, sample_members, model):
    sample_members()
    whole = sm.measure(session_factory, model, "test", day="2026-12-05", block_rows=4)
    again = sm.measure(session_factory, model, "test", day="2026-12-05", block_rows=4)
    assert again == whole  # the completed measurement, not a second count
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(SelfMeasurement)) == 1
        pairs_whole = _stored_pairs(session, whole["run_id"])

    # A worker that dies after two blocks: the next run resumes from the third.
    partial = sm.measure(session_factory, model, "test", day="2026-12-06", block_rows=4, stop_after_blocks=2)
    assert partial["status"] == sm.RUNNING and partial["blocks_done"] == 2
    with session_factory() as session:
        row = session.scalar(select(SelfMeasurement).where(SelfMeasurement.measured_on == "2026-12-06"))
        assert row.blocks_done == 2 and row.status == sm.RUNNING
        # Its heartbeat is fresh: another worker must not start it twice meanwhile.
    with pytest.raises(sm.MeasurementRunning):
        sm.measure(session_factory, model, "test", day="2026-12-06", block_rows=4)
    with session_factory() as session:
        session.execute(
            update(SelfMeasurement)
            .where(SelfMeasurement.id == row.id)
            .values(heartbeat_at=utcnow() - sm.STALE_AFTER - timedelta(seconds=1))
        )
        session.commit()
    resumed = sm.measure(session_factory, model, "test", day="2026-12-06", block_rows=4)
    for key in ("all", "genders", "age_bands", "above_floor"):
        assert resumed[key] == whole[key], key
    with session_factory() as session:
        assert _stored_pairs(session, resumed["run_id"]) == pairs_whole
        row = session.get(SelfMeasurement, resumed["run_id"])
        assert row.blocks_done == row.blocks_total and row.status == sm.COMPLETED

    # The members changed while it was stopped: it starts again from zero, never adds to old counts.
    partial = sm.measure(session_factory, model, "test", day="2026-12-07", block_rows=4, stop_after_blocks=3)
    with session_factory() as session:
        session.execute(update(Photo).where(Photo.member_id == "M0002").values(current=False))
        session.execute(
            update(SelfMeasurement)
            .where(SelfMeasurement.measured_on == "2026-12-07")
            .values(heartbeat_at=utcnow() - sm.STALE_AFTER - timedelta(seconds=1))
        )
        session.commit()
        compared, expected = _brute_force(session, model)
    restarted = sm.measure(session_factory, model, "test", day="2026-12-07", block_rows=4)
    assert restarted["all"]["compared"] == compared
    with session_factory() as session:
        assert _stored_pairs(session, restarted["run_id"]) == expected


def test_birth_years_group_pairs_by_age_band(session_factory, sample_members, model):
    with session_factory() as session:
        for i, member in enumerate(session.scalars(select(Member).order_by(Member.id))):
            member.birth_year = 1962 if i % 2 else 1971  # 60s and 50s in 2026
        session.commit()
    summary = sm.measure(session_factory, model, "test", day="2026-12-08", year=2026)
    bands = summary["age_bands"]
    assert set(bands) <= {f"{g}|{b}" for g in "FM" for b in ("50s", "60s")}
    assert sum(v["compared"] for v in bands.values()) < summary["all"]["compared"]  # mixed bands left out
    assert all(v["compared"] > 0 for v in bands.values())


# ----------------------------------------------------------------------------------------------
# Re-fit of approve_at


def test_refit_writes_a_version_that_keeps_every_other_figure_of_its_parent(
    session_factory, models_copy, monkeypatch
):
    from core.benchmarks import self_measure as bench
    from core.training import registry

    monkeypatch.setenv("SELF_MEASURE_FMR_TARGET", "0.001")
    parent_model = load_version(None, models_copy)
    parent = parent_model.version
    bench.populate(session_factory, 140, planted=2, seed=3, model=parent_model)
    summary = sm.measure(session_factory, parent_model, "test", day="2026-12-09")
    assert summary["all"]["compared"] >= summary["pairs_needed"]
    with session_factory() as session:
        registry.active_version(session, models_copy)
        name = page.refit_approve_at(session, summary["run_id"], "scientist", models_copy)
        row = session.scalar(select(VersionRow).where(VersionRow.version == name))
        assert row is not None and not row.active  # a candidate, promoted through the registry
        assert session.scalar(select(func.count()).where(AuditEntry.action == sm.REFIT)) == 1
    before = json.loads((models_copy / parent / "metadata.json").read_text())
    after = json.loads((models_copy / name / "metadata.json").read_text())
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {"policy", "uncertain_band", "version", "refit"}
    assert {k for k in before["policy"] if before["policy"][k] != after["policy"][k]} == {"approve_at"}
    assert after["uncertain_band"][0] == before["uncertain_band"][0]
    assert after["uncertain_band"][1] == after["policy"]["approve_at"]
    assert after["refit"]["parent"] == parent
    for file in ("siamese.keras", "gender.keras"):
        assert (models_copy / name / file).read_bytes() == (models_copy / parent / file).read_bytes()

    # The re-fitted point keeps the measured impostors' bound at the target, and it loads.
    refit = load_version(name, models_copy)
    with session_factory() as session:
        photo_set = sm.load_photo_set(session, refit)
    scale = sm.model_scale(refit)
    total = sm.empty_counts(photo_set)
    for block in sm.blocks(photo_set, 512):
        sm.add_counts(
            total, sm.scan_block(photo_set, block, scale, after["policy"]["approve_at"], 0.3, 0.1, 10).counts
        )
    k = sum(total["genders"][g]["at_approve"] for g in "FM")
    assert sm.clopper_pearson_upper(k, summary["all"]["compared"]) <= 0.001
    with session_factory() as session:
        registry.promote(session, name, "scientist", models_dir=models_copy)
        assert registry.active_version(session, models_copy) == name
        registry.rollback(session, parent, "scientist", models_dir=models_copy)
        assert registry.active_version(session, models_copy) == parent


def test_refit_refuses_when_too_few_pairs(session_factory, sample_members, model, models_copy):
    summary = sm.measure(session_factory, model, "test", day="2026-12-10")
    with session_factory() as session, pytest.raises(sm.SelfMeasurementError, match="too few"):
        page.refit_approve_at(session, summary["run_id"], "scientist", models_copy)


# ----------------------------------------------------------------------------------------------
# The job, the promotion hook, /health and the import column


def test_a_promotion_measures_the_new_version_on_the_database_it_was_promoted_in(
    session_factory, sample_members, models_copy, monkeypatch
):
    import shutil
    import threading

    from core.dashboard import retrain
    from core.jobs import tasks
    from core.training import registry

    assert tasks.JOBS[sm.JOB_NAME].run is tasks.self_measure
    monkeypatch.setenv("SELF_MEASURE_AFTER_PROMOTION", "on")
    monkeypatch.delenv("JOB_BROKER_URL", raising=False)
    parent = load_version(None, models_copy).version
    shutil.copytree(models_copy / parent, models_copy / "v-copy")
    with session_factory() as session:
        registry.register(session, "v-copy", "scientist", models_copy)
        retrain.promote(session, "v-copy", "scientist", models_dir=models_copy)  # the page's promotion
    for thread in [t for t in threading.enumerate() if t.name == f"job-{sm.JOB_NAME}"]:
        thread.join(timeout=300)
    with session_factory() as session:
        row = sm.latest(session, "v-copy")
        assert row is not None and row.triggered_by == "scientist" and row.summary["members"] == 20
        assert sm.alert_state(session).model_version == "v-copy"
        assert sm.health_field(session_factory) == sm.TOO_FEW


def test_health_field_before_any_measurement(session_factory):
    assert sm.health_field(session_factory) == sm.NOT_MEASURED


def test_import_reads_the_optional_birth_year(session, photo_store, tmp_path):
    from core.workflows import importer

    rows = (SAMPLE_DIR / "members.csv").read_text().splitlines()[:3]
    table = tmp_path / "members.csv"
    table.write_text("\n".join([rows[0] + ",birth_year", rows[1] + ",1961", rows[2] + ",1870"]) + "\n")
    reports = importer.import_members(
        session, table, base_dir=SAMPLE_DIR, actor="test", photo_store=photo_store
    )
    assert [r.status for r in reports] == [importer.IMPORTED, importer.REJECTED]
    assert "birth_year" in reports[1].message
    member = session.get(Member, rows[1].split(",")[0])
    assert member.birth_year == 1961


def test_benchmark_finds_every_planted_look_alike(tmp_path):
    from core import cli

    out = tmp_path / "bench.json"
    code = cli.main(["bench", "self-measure", "--members", "400", "--planted", "5", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0
    assert report["planted"] >= 4 and report["planted_found"] == report["planted"]
    assert report["compared_pairs"] == 2 * (400 * 399 // 2 - 200)  # two photos each, same gender
    assert report["seconds"] > 0 and report["peak_mb"] > 0
    # A share of the blocks: every photo loaded, the time extrapolated from the pairs scanned.
    code = cli.main(
        [
            "bench",
            "self-measure",
            "--members",
            "400",
            "--planted",
            "5",
            "--block-rows",
            "64",
            "--blocks",
            "2",
            "--json",
            str(out),
        ]
    )
    part = json.loads(out.read_text())
    assert code == 0 and part["blocks"].startswith("2 of ") and 0 < part["pairs_share"] < 1
    assert part["planted"] >= 4 and part["planted_found"] == part["planted"]
    assert part["seconds_extrapolated"] > part["scan_seconds_measured"] > 0


def test_a_failed_run_is_released_at_once_and_the_schedule_sees_what_is_due(
    session_factory, sample_members, model, monkeypatch
):
    whole = sm.measure(session_factory, model, "test", day="2026-12-11", block_rows=4)
    real_scan, calls = sm.scan_block, []

    def failing_scan(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("the disk went away")
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(sm.run, "scan_block", failing_scan)  # where measure looks it up
    with pytest.raises(OSError):
        sm.measure(session_factory, model, "test", day="2026-12-12", block_rows=4)
    with session_factory() as session:
        row = session.scalar(select(SelfMeasurement).where(SelfMeasurement.measured_on == "2026-12-12"))
        assert row.status == sm.INTERRUPTED and row.blocks_done == 2 and "disk" in row.error
    monkeypatch.setattr(sm.run, "scan_block", real_scan)
    resumed = sm.measure(session_factory, model, "test", day="2026-12-12", block_rows=4)  # no waiting
    assert resumed["all"] == whole["all"] and resumed["genders"] == whole["genders"]
    with session_factory() as session:
        assert not sm.due(session, 3600, model.version)  # finished just now
        assert sm.due(session, 3600, "another-version")
        session.execute(update(SelfMeasurement).values(finished_at=utcnow() - timedelta(hours=2)))
        session.commit()
        assert sm.due(session, 3600, model.version)


def test_a_worker_killed_mid_way_is_resumed_without_doubling(tmp_path, model):
    """A real process measuring a database is killed (SIGKILL) after a few blocks; the next run
    takes over once its heartbeat is stale and ends with exactly the counts of an unbroken run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    from core.benchmarks import self_measure as bench
    from core.storage.db import init_db, make_engine
    from core.storage.db import session_factory as make_factory

    url = f"sqlite:///{tmp_path / 'kill.sqlite3'}"
    engine = make_engine(url)
    factory = make_factory(init_db(engine))
    bench.populate(factory, 6000, planted=5, seed=11, model=model)
    env = {**os.environ, "SELF_MEASURE_BLOCK_ROWS": "256", "TF_CPP_MIN_LOG_LEVEL": "3"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "core", "self-measure", "--url", url, "--actor", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with factory() as session:
                row = session.scalar(select(SelfMeasurement))
                if row is not None and row.blocks_done >= 2:
                    break
            assert worker.poll() is None, "the worker ended before it could be killed"
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    with factory() as session:
        row = session.scalar(select(SelfMeasurement))
        assert row.status == sm.RUNNING and 2 <= row.blocks_done < row.blocks_total
        day, run_id = row.measured_on, row.id
        session.execute(
            update(SelfMeasurement).values(heartbeat_at=utcnow() - sm.STALE_AFTER - timedelta(seconds=1))
        )
        session.commit()
    resumed = sm.measure(factory, model, "test", day=day, block_rows=256)
    unbroken = sm.measure(factory, model, "test", day="2000-01-01", block_rows=256)
    assert resumed["run_id"] == run_id
    for key in ("all", "genders", "age_bands", "above_floor"):
        assert resumed[key] == unbroken[key], key
    with factory() as session:
        assert _stored_pairs(session, run_id) == _stored_pairs(session, unbroken["run_id"])
    engine.dispose()


def test_the_kpi_page_shows_the_measurement_and_the_planted_pair(app_env, sample_vectors, model, open_page):
    from test_pages import texts

    from core.workflows import importer

    with app_env.session() as session:
        importer.load_sample_members(session, actor="test", photo_store=app_env.store)
        store_member(session, app_env.store, PLANTED[0], PLANTED[1], _planted_photos())
        _store_embeddings(session, sample_vectors)
    summary = sm.measure(app_env.session_factory, model, "test")
    at = open_page("kpis", role="manager", lang="en", timeout=120)
    assert not at.exception
    shown = texts(at)
    overall = summary["all"]["at_approve"]
    assert f"{overall['k']:,} of {overall['n']:,} cross-member pairs at or above the approve point" in shown
    assert "too few to bound the false-match rate" in shown
    labels = at.selectbox(key="selfm_pair").options
    assert any("M0001" in label and "P0001" in label for label in labels)
    assert len(at.get("imgs")) >= 1 or len(at.get("image")) >= 1
    # A manager marks a pair as one person: the next measurement leaves it out.
    chosen = next(label for label in labels if "M0001" in label and "P0001" in label)
    at.selectbox(key="selfm_pair").select(chosen).run()
    assert "P0001" in texts(at)
    at.button(key="selfm_verdict_True").click().run()
    assert not at.exception and "Saved." in texts(at)
    later = sm.measure(app_env.session_factory, model, "test", day="2026-12-20")
    assert later["excluded_member_pairs"] == 1
    assert later["all"]["compared"] == summary["all"]["compared"] - 4


def test_fnmr_at_reject_below_from_reviewed_same_person_pairs(
    session_factory, photo_store, sample_vectors, model
):
    from conftest import seed_reviewed

    ids = seed_reviewed(session_factory, photo_store)
    with session_factory() as session:
        _store_embeddings(session, sample_vectors)
        offset, scale = model.similarity_params()
        expected_n = expected_k = 0
        for result_id in ids.values():
            row = session.get(ResultRow, result_id)
            if not row.ground_truth_same:
                continue
            vectors = [
                np.frombuffer(
                    session.scalar(
                        select(Embedding.vector)
                        .join(Photo, Photo.sha256 == Embedding.photo_sha256)
                        .where(Photo.id == pid)
                    ),
                    "<f4",
                )
                for pid in (row.gallery_photo_id, row.verification_photo_id)
            ]
            a, b = np.asarray(model.tower(np.stack(vectors), training=False))
            expected_n += 1
            expected_k += (
                similarity_from_projections(a, b, offset, scale) < model.operating_points.reject_below
            )
    summary = sm.measure(session_factory, model, "test", day="2026-12-13")
    assert expected_n == 14
    assert summary["fnmr"]["n"] == expected_n and summary["fnmr"]["k"] == expected_k
    assert summary["fnmr"]["upper"] == pytest.approx(sm.clopper_pearson_upper(expected_k, expected_n))


def test_a_queue_worker_schedules_and_runs_the_measurement(
    tmp_path, photo_store, sample_vectors, monkeypatch
):
    """A real worker process on Redis: its schedule finds the active version unmeasured, enqueues
    the job, and a worker thread runs it on the worker's database."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import redis
    from conftest import ROOT

    from core.jobs import queue
    from core.storage.db import init_db, make_engine
    from core.storage.db import session_factory as make_factory
    from core.workflows import importer

    broker = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/8")
    try:
        redis.Redis.from_url(broker, socket_connect_timeout=3).ping()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {broker} is not reachable: {exc}")
        pytest.skip(f"Redis at {broker} is not reachable: {exc}")
    url = f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    engine = make_engine(url)
    factory = make_factory(init_db(engine))
    with factory() as session:
        importer.load_sample_members(session, actor="test", photo_store=photo_store)
        _store_embeddings(session, sample_vectors)
    env = {
        "DATABASE_URL": url,
        "PHOTO_STORE_DIR": str(tmp_path / "store"),
        "JOB_BROKER_URL": broker,
        "MODELS_DIR": str(ROOT / "models"),
        "SELF_MEASURE_EVERY_HOURS": "24",
        "RETENTION_EVERY_HOURS": "off",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    queue._state.clear()
    queue.flush()
    queue.broker().close()
    queue._state.clear()
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "core", "worker", "--queues", "fv_batches", "--no-warm-up"],
            cwd=ROOT,
            env={**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline, row = time.monotonic() + 300, None
        while time.monotonic() < deadline and worker.poll() is None:
            with factory() as session:
                row = sm.latest(session)
            if row is not None:
                break
            time.sleep(1)
        assert row is not None, log.read_text(errors="replace")[-3000:]
        assert row.triggered_by == "schedule" and row.summary["members"] == 20
        with factory() as session:
            assert not sm.due(session, 24 * 3600, row.model_version)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        queue._state.clear()
        engine.dispose()
