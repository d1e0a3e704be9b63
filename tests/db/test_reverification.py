"""Re-verification after a promotion: which members, the batch run as a job on the real engine,
the comparison of two versions on the same members, and the Retrain and KPI pages that drive it."""

from __future__ import annotations

import pytest
from conftest import ROOT
from sqlalchemy import select

from core import jobs
from core.storage.schema import AuditEntry, Batch
from core.verification.heads import default_version
from core.workflows import batches, importer, reverification

OLD = "v20200101-000000"


def _older_results(session, n: int):
    """Every sample member verified once by an earlier version (results as that version stored them)."""
    from conftest import engine_result

    reports = importer.load_sample_members(session)
    assert all(r.status == importer.IMPORTED for r in reports)
    items = batches.items_for_members(session)[:n]
    statuses = ["auto_approved", "flagged", "auto_rejected"]
    for i, item in enumerate(items):
        result = engine_result(statuses[i % 3], 0.8 if i % 3 == 0 else 0.2, model_version=OLD)
        batches.store_result(
            session,
            result,
            member_id=item.member_id,
            gallery_photo_id=item.gallery_photo_id,
            verification_photo_id=item.verification_photo_id,
        )
    session.commit()
    return items


@pytest.fixture
def settings(db_url, tmp_path, monkeypatch):
    """The job resolves the database, store and models from the settings, as a worker would."""
    monkeypatch.delenv("JOB_BROKER_URL", raising=False)
    monkeypatch.delenv("PHOTO_STORE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("PHOTO_STORE_DIR", str(tmp_path / "photos"))
    monkeypatch.setenv("MODELS_DIR", str(ROOT / "models"))
    return default_version(ROOT / "models")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_reverify_older_members_then_compare_the_versions(session, session_factory, settings):
    version = settings
    items = _older_results(session, 12)
    everyone = {i.member_id for i in batches.items_for_members(session)}
    assert set(reverification.members_to_reverify(session, version, "older")) == everyone, (
        "members never verified by the active version, or only by another one"
    )
    assert reverification.count_to_reverify(session, version) == {"all": 20, "older": len(everyone)}
    with pytest.raises(ValueError):
        reverification.members_to_reverify(session, version, "some")

    batch_id = reverification.create(session_factory, "ds_user", version, "older")
    jobs.submit_batch(batch_id, "ds_user")  # core.jobs decides where it runs (here: a thread)
    state = jobs.wait_for_batch(session_factory, batch_id, timeout_s=300)
    assert (state["status"], state["done"], state["total"]) == ("completed", 20, 20)
    with session_factory() as s:
        batch = s.get(Batch, batch_id)
        assert (batch.source, batch.model_version) == (reverification.SOURCE, version)
        assert s.scalar(select(AuditEntry).where(AuditEntry.action == reverification.START_REVERIFICATION))
        assert reverification.members_to_reverify(s, version, "older") == []
        assert len(reverification.members_to_reverify(s, version, "all")) == 20
        assert reverification.count_to_reverify(s, version) == {"all": 20, "older": 0}
        assert reverification.create(session_factory, "ds_user", version, "older") is None

        comparison = reverification.compare_versions(s, OLD, version)
    assert comparison.members == 12, "only the members with a result under both versions"
    assert comparison.old.n == comparison.new.n == 12
    assert (comparison.old.approved, comparison.old.flagged, comparison.old.rejected) == (4, 4, 4)
    assert comparison.same_decision + len(comparison.changed) == 12
    assert {m for m, _, _ in comparison.changed} <= {i.member_id for i in items}
    assert comparison.new.mean_similarity is not None


def test_retrain_page_starts_a_reverification_and_kpis_compare(app_env, monkeypatch, open_page):
    monkeypatch.delenv("JOB_BROKER_URL", raising=False)
    started = []
    monkeypatch.setattr(jobs, "submit_batch", lambda batch_id, actor: started.append((batch_id, actor)))
    with app_env.session() as session:
        _older_results(session, 6)
    version = default_version(ROOT / "models")

    at = open_page("retrain", "data_scientist", "en", timeout=120)
    radio = next(r for r in at.radio if r.key == "retrain_reverify_scope")
    assert any("Not yet verified by" in o and "(20)" in o for o in radio.options)
    next(b for b in at.button if b.key == "retrain_reverify").click().run()
    assert not at.exception
    assert started and started[0][1] == "data_scientist_user"
    assert any("Re-verification batch" in str(s.value) for s in at.success)

    # The job ran (here: by hand, the way a worker would), results of both versions exist.
    with app_env.session() as session:
        batch = session.get(Batch, started[0][0])
        assert batch.model_version == version and batch.n_items == 20
    from conftest import engine_result

    with app_env.session() as session:
        for item in batches.items_for_members(session)[:6]:
            batches.store_result(
                session,
                engine_result("flagged", 0.4, model_version=version),
                member_id=item.member_id,
                gallery_photo_id=item.gallery_photo_id,
                verification_photo_id=item.verification_photo_id,
            )
        session.commit()
    kpis = open_page("kpis", "manager", "en", timeout=120)
    shown = "\n".join(str(m.value) for m in kpis.markdown)
    assert "6 members have a result under both versions" in shown
    assert kpis.dataframe, "the figures of both versions"
    ko = open_page("kpis", "manager", "ko", timeout=120)
    assert "두 버전의 결과가 모두 있는 회원은 6명" in "\n".join(str(m.value) for m in ko.markdown)
