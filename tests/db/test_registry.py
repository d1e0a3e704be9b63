"""Model registry on SQLite and MariaDB: the shipped model registers itself, candidates, promote,
rollback, discard, each with its audit entry; promotion is a compare-and-set (never two actives)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from core.storage.schema import AuditEntry
from core.storage.schema import ModelVersion as VersionRow
from core.training import registry


def make_version(models_dir, name: str, created_at: str, accuracy: float = 0.9) -> str:
    """A loadable version folder (untrained heads) with the metadata a trained one has."""
    from core.verification.features import FEATURES_VERSION
    from core.verification.heads import build_gender, build_siamese, build_tower, save_version

    metadata = {
        "created_at": created_at,
        "features_version": FEATURES_VERSION,
        "threshold": 0.5,
        "uncertain_band": [0.3, 0.7],
        "metrics": {"verification_accuracy": accuracy, "gender_accuracy": 0.95},
        "params": {"seed": 7},
        "data": {"n_photos": 10, "train_people": ["a"], "heldout_people": ["b"]},
    }
    save_version(models_dir, name, build_siamese(build_tower()), build_gender(), metadata)
    return name


@pytest.fixture
def versions(models_copy):
    shipped = (models_copy / "DEFAULT").read_text().strip()
    return {
        "shipped": shipped,
        "old": make_version(models_copy, "v20200101-000000", "2020-01-01T00:00:00+00:00", 0.8),
        "new": make_version(models_copy, "v20990101-000000", "2099-01-01T00:00:00+00:00", 0.99),
    }


def actions(session) -> list[tuple[str, str, str]]:
    rows = session.scalars(
        select(AuditEntry).where(AuditEntry.target_type == "model_version").order_by(AuditEntry.id)
    )
    return [(e.actor, e.action, e.target_id) for e in rows]


def n_active(session) -> int:
    return session.scalar(select(func.count()).where(VersionRow.active.is_(True)))


def test_shipped_model_registers_itself_as_active(session, models_copy, versions):
    assert registry.active_version(session, models_copy) == versions["shipped"]
    assert registry.active_version(session, models_copy) == versions["shipped"]  # once only
    row = session.scalar(select(VersionRow).where(VersionRow.version == versions["shipped"]))
    assert row.active and row.metrics["verification_accuracy"] > 0.98 and row.threshold is not None
    assert "train_people" not in row.data_summary
    assert actions(session) == [("system", "register_model", versions["shipped"])]


def test_promote_rollback_discard_each_audited(session, models_copy, versions):
    registry.register(session, versions["new"], "ds_user", models_dir=models_copy)
    registry.register(session, versions["old"], "ds_user", models_dir=models_copy)
    listed = {v.version: v.status for v in registry.list_versions(session, models_copy)}
    assert listed == {
        versions["shipped"]: "active",
        versions["new"]: "candidate",
        versions["old"]: "candidate",
    }

    registry.promote(
        session, versions["new"], "ds_user", expected_active=versions["shipped"], models_dir=models_copy
    )
    assert registry.active_version(session, models_copy) == versions["new"] and n_active(session) == 1
    entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "promote_model"))
    assert entry.actor == "ds_user" and entry.detail == {"from": versions["shipped"], "to": versions["new"]}

    # Rollback goes to an earlier version only; a newer one is promoted instead.
    registry.rollback(session, versions["shipped"], "admin_user", models_dir=models_copy)
    assert registry.active_version(session, models_copy) == versions["shipped"]
    with pytest.raises(registry.RegistryError, match="newer than the active one"):
        registry.rollback(session, versions["new"], "admin_user", models_dir=models_copy)
    registry.rollback(session, versions["old"], "admin_user", models_dir=models_copy)
    assert registry.active_version(session, models_copy) == versions["old"] and n_active(session) == 1
    with pytest.raises(registry.RegistryError, match="already the active one"):
        registry.promote(session, versions["old"], "ds_user", models_dir=models_copy)

    with pytest.raises(registry.RegistryError, match="is the active one"):
        registry.discard(session, versions["old"], "ds_user", models_dir=models_copy)
    with pytest.raises(registry.RegistryError, match="fresh-install default"):
        registry.discard(session, versions["shipped"], "ds_user", models_dir=models_copy)
    registry.discard(session, versions["new"], "ds_user", models_dir=models_copy)
    assert not (models_copy / versions["new"]).exists()
    with pytest.raises(registry.RegistryError, match="was discarded"):
        registry.promote(session, versions["new"], "ds_user", models_dir=models_copy)
    statuses = {v.version: v.status for v in registry.list_versions(session, models_copy)}
    assert statuses == {
        versions["shipped"]: "previous",
        versions["new"]: "discarded",
        versions["old"]: "active",
    }

    assert actions(session) == [
        ("system", "register_model", versions["shipped"]),
        ("ds_user", "register_model", versions["new"]),
        ("ds_user", "register_model", versions["old"]),
        ("ds_user", "promote_model", versions["new"]),
        ("admin_user", "rollback_model", versions["shipped"]),
        ("admin_user", "rollback_model", versions["old"]),
        ("ds_user", "discard_model", versions["new"]),
    ]
    with pytest.raises(registry.UnknownVersion):
        registry.promote(session, "v-nothing", "ds_user", models_dir=models_copy)


def test_stale_page_cannot_switch_away_from_someone_elses_promotion(session, models_copy, versions):
    registry.register(session, versions["new"], "ds_user", models_dir=models_copy)
    registry.register(session, versions["old"], "ds_user", models_dir=models_copy)
    registry.promote(session, versions["new"], "alice", models_dir=models_copy)
    # Bob's page still showed the shipped version as active.
    with pytest.raises(registry.ActiveChanged, match=f"now {versions['new']}"):
        registry.rollback(
            session, versions["old"], "bob", expected_active=versions["shipped"], models_dir=models_copy
        )
    assert registry.active_version(session, models_copy) == versions["new"]


def test_simultaneous_promotions_leave_exactly_one_active(session_factory, models_copy, versions):
    with session_factory() as session:
        registry.active_version(session, models_copy)
        registry.register(session, versions["new"], "ds_user", models_dir=models_copy)
        registry.register(session, versions["old"], "ds_user", models_dir=models_copy)
    outcomes = {}
    barrier = threading.Barrier(2)

    def press(who, version):
        with session_factory() as session:
            barrier.wait()
            try:
                registry.promote(
                    session, version, who, expected_active=versions["shipped"], models_dir=models_copy
                )
                outcomes[who] = "promoted"
            except registry.ActiveChanged as exc:
                outcomes[who] = str(exc)

    threads = [
        threading.Thread(target=press, args=("alice", versions["new"])),
        threading.Thread(target=press, args=("bob", versions["old"])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o == "promoted" for o in outcomes.values()) == [False, True], outcomes
    with session_factory() as session:
        assert n_active(session) == 1
        winner = next(w for w, o in outcomes.items() if o == "promoted")
        active = registry.active_version(session, models_copy)
        assert active == {"alice": versions["new"], "bob": versions["old"]}[winner]
        promotions = session.scalars(select(AuditEntry).where(AuditEntry.action == "promote_model")).all()
        assert [e.actor for e in promotions] == [winner]


def test_pages_notice_a_promotion(session_factory, models_copy, versions):
    assert registry.current_version(session_factory, models_copy) == versions["shipped"]
    with session_factory() as session:
        registry.register(session, versions["new"], "ds_user", models_dir=models_copy)
        registry.promote(session, versions["new"], "ds_user", models_dir=models_copy)
    assert registry.current_version(session_factory, models_copy, max_age_s=0) == versions["new"]


def test_no_model_at_all_is_a_clear_error(session, tmp_path):
    from core.errors import ModelError

    with pytest.raises(ModelError, match="DEFAULT does not exist"):
        registry.active_version(session, tmp_path)


def test_version_of_other_features_cannot_be_promoted(session, models_copy, versions):
    import json

    path = models_copy / versions["new"] / "metadata.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "features_version": "something-else"}))
    registry.register(session, versions["new"], "ds_user", models_dir=models_copy)
    from core.errors import ModelError

    with pytest.raises(ModelError, match="trained on features 'something-else'"):
        registry.promote(session, versions["new"], "ds_user", models_dir=models_copy)
    assert registry.active_version(session, models_copy) == versions["shipped"]
