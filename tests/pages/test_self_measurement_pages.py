"""The self-measurement on the pages, through streamlit.testing.v1.AppTest: the alert at the top of
every page for managers and data scientists (never for staff), and the Retrain page's re-fit of the
approve point on the members' own pairs (comparison, written as a version, promoted, rolled back),
in English and Korean.

The members are synthetic (core.benchmarks.self_measure: embeddings drawn like the sample photos'
real ones, with planted look-alikes), measured by the real job on the app's database with the
shipped model."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.benchmarks import self_measure as bench
from core.storage.schema import AuditEntry, VerificationResult
from core.training import registry
from core.verification.heads import load_version
from core.workflows import self_measurement as sm

RETRAIN = "pages/5_Retrain.py"


def texts(at) -> str:
    parts = []
    for kind in ("title", "subheader", "markdown", "caption", "error", "warning", "info", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def refit_table(at, after: str = "Re-fitted"):
    """The re-fit comparison: the table with the re-fitted column."""
    return next(d.value for d in at.dataframe if after in d.value.columns)


def measured(app_env, models_dir, members: int, planted: int, seed: int = 3) -> dict:
    """Synthetic members in the app's database, measured with the active model version."""
    model = load_version(None, models_dir)
    bench.populate(app_env.session_factory, members, planted=planted, seed=seed, model=model)
    return sm.measure(app_env.session_factory, model, "test")


# ----------------------------------------------------------------------------------------------
# The alert


@pytest.fixture
def above_target(app_env, models_copy):
    """140 members with 20 planted look-alike pairs: enough pairs to bound the rate, and the bound
    passes the 0.001 target."""
    summary = measured(app_env, models_copy, 140, planted=20)
    assert summary["alert"] == sm.ABOVE_TARGET  # the case this fixture stands for
    return summary


@pytest.mark.parametrize("role", ["manager", "data_scientist"])
def test_managers_and_data_scientists_see_the_alert_on_every_page(above_target, open_page, role):
    upper = above_target["genders"]
    worst = max(upper, key=lambda g: upper[g]["at_approve"]["upper"])
    for page in ("home", "kpis"):
        at = open_page(page, role=role, lang="en", timeout=120)
        warnings = [str(w.value) for w in at.warning]
        alert = next((w for w in warnings if "may be as high as" in w), None)
        assert alert is not None, warnings
        assert "above the target 0.1%" in alert
        assert ("Women" if worst == "F" else "Men") in alert
    at = open_page("home", role=role, lang="ko", timeout=120)
    assert any("목표 0.1%보다 높을 수 있습니다" in str(w.value) for w in at.warning)


def test_staff_do_not_see_the_alert(above_target, open_page):
    at = open_page("home", role="staff", lang="en", timeout=120)
    assert not any("may be as high as" in str(w.value) for w in at.warning)
    at = open_page("review", role="staff", lang="en", timeout=120)
    assert not any("may be as high as" in str(w.value) for w in at.warning)


def test_twenty_members_are_too_few_to_bound_anything(app_env, models_copy, open_page):
    summary = measured(app_env, models_copy, 20, planted=0)
    assert summary["alert"] == sm.TOO_FEW and summary["members"] == 20
    at = open_page("home", role="manager", lang="en", timeout=120)
    expected = (
        f"20 members ({summary['all']['compared']:,} cross-member pairs) are too few to bound the "
        "false-match rate under the target 0.1%."
    )
    assert expected in [str(w.value) for w in at.warning]
    at = open_page("home", role="data_scientist", lang="ko", timeout=120)
    assert any("회원 20명" in str(w.value) for w in at.warning)
    at = open_page("home", role="staff", lang="en", timeout=120)
    assert not any("too few to bound" in str(w.value) for w in at.warning)


def test_no_alert_before_any_measurement(app_env, open_page):
    at = open_page("home", role="manager", lang="en")
    assert not any("false-match rate" in str(w.value) for w in at.warning)


# ----------------------------------------------------------------------------------------------
# The re-fit on the Retrain page


@pytest.fixture
def measured_members(app_env, models_copy):
    """140 members (two planted look-alikes): the bound is under the target, the re-fit possible."""
    summary = measured(app_env, models_copy, 140, planted=2)
    assert summary["all"]["compared"] >= summary["pairs_needed"]
    app_env.models_dir = models_copy
    app_env.parent = summary["model_version"]
    return summary


def add_scored_results(app_env, version: str, similarities) -> None:
    """Stored results of the version with these scores (the automation row counts them)."""
    from core.storage.schema import utcnow

    with app_env.session() as session:
        for k, s in enumerate(similarities):
            session.add(
                VerificationResult(
                    similarity=s,
                    threshold=0.5,
                    band_low=0.0,
                    band_high=1.0,
                    status="flagged",
                    flags=[],
                    model_version=version,
                    created_at=utcnow(),
                    member_id=None,
                    latency_ms=float(k),
                )
            )
        session.commit()


def test_refit_comparison_then_promote_then_rollback(measured_members, app_env, open_page):
    parent = app_env.parent
    with app_env.session() as session:
        plan = sm.refit_plan(session, measured_members["run_id"], app_env.models_dir)
    old, new = plan["approve_at_before"], plan["approve_at_after"]
    assert new is not None and new != old
    low, high = sorted((old, new))
    # One result above both points, one between them, two in the review band, one rejected.
    scores = [0.9999999, (low + high) / 2, 0.05, 0.02, plan["reject_below"] / 2]
    add_scored_results(app_env, parent, scores)

    at = open_page(RETRAIN, role="data_scientist", lang="en", timeout=120)
    shown = texts(at)
    assert "Re-fit the approve point on your members" in shown
    assert f"{plan['compared']:,} cross-member pairs" in shown
    table = refit_table(at)
    now, after = f"Now ({parent})", "Re-fitted"
    assert list(table["Figure"]) == [
        "Approve point (similarity)",
        "Measured cross-member pairs at or above it",
        "Automation: results the score alone decides",
    ]
    assert table[now].iloc[0] == f"{old:.6f}" and table[after].iloc[0] == f"{new:.6f}"
    n = f"{plan['compared']:,}"
    assert table[now].iloc[1].startswith(f"{plan['k_before']:,} of {n} ")
    assert table[after].iloc[1].startswith(f"{plan['k_after']:,} of {n} ")
    # Before: the top score and the rejected one, plus the middle one when the point goes down.
    before_auto = 2 + (1 if old <= scores[1] else 0)
    after_auto = 2 + (1 if new <= scores[1] else 0)
    assert table[now].iloc[2] == f"{100 * before_auto / 5:.1f}% ({before_auto} of 5)"
    assert table[after].iloc[2] == f"{100 * after_auto / 5:.1f}% ({after_auto} of 5)"

    at.button(key="selfm_refit_write").click().run()
    assert not at.exception
    with app_env.session() as session:
        versions = registry.list_versions(session, app_env.models_dir)
        refit = next(v for v in versions if v.version != parent)
        assert refit.status == registry.CANDIDATE
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == sm.REFIT))
        assert entry.actor == "data_scientist_user" and entry.target_id == refit.version
        assert entry.detail["approve_at_after"] == pytest.approx(new)
    assert f"Version {refit.version} written with the re-fitted approve point" in texts(at)
    assert not [b for b in at.button if b.key == "selfm_refit_write"]  # one waiting at a time

    at.run()  # the next run after the one that wrote it (AppTest keeps a rerun's widgets unset)
    promote = at.button(key=f"selfm_refit_promote_{refit.version}")
    assert promote.disabled  # until the comparison is confirmed
    at.checkbox(key=f"selfm_refit_confirm_{refit.version}").check().run()
    at.button(key=f"selfm_refit_promote_{refit.version}").click().run()
    assert not at.exception
    assert f"Version {refit.version} is now the active model." in texts(at)
    with app_env.session() as session:
        assert registry.active_version(session, app_env.models_dir) == refit.version
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "promote_model"))
        assert entry.detail == {"from": parent, "to": refit.version}
    assert "re-fitted the approve point" in list(at.dataframe[-1].value["Action"])  # the history

    # Rollback through the Versions panel, as for any version (the page opened again later).
    at = open_page(RETRAIN, role="data_scientist", lang="en", timeout=120)
    assert at.selectbox(key="retrain_rollback_target").value == parent
    at.checkbox(key="retrain_rollback_confirm").check().run()
    at.button(key="retrain_rollback").click().run()
    assert not at.exception
    with app_env.session() as session:
        assert registry.active_version(session, app_env.models_dir) == parent
        assert session.scalar(select(func.count()).where(AuditEntry.action == "rollback_model")) == 1


def test_refit_in_korean_and_discarding_the_waiting_version(measured_members, app_env, open_page):
    at = open_page(RETRAIN, role="data_scientist", lang="ko", timeout=120)
    assert "회원 데이터로 자동 승인 기준 재조정" in texts(at)
    assert list(refit_table(at, "재조정 후")["항목"])[0] == "자동 승인 기준 (유사도)"
    at.button(key="selfm_refit_write").click().run()
    with app_env.session() as session:
        name = next(
            v.version
            for v in registry.list_versions(session, app_env.models_dir)
            if v.version != app_env.parent
        )
    assert f"재조정한 버전 {name}" in texts(at)
    at.run()
    at.button(key=f"selfm_refit_discard_{name}").click().run()
    assert not at.exception
    with app_env.session() as session:
        status = {v.version: v.status for v in registry.list_versions(session, app_env.models_dir)}
    assert status[name] == registry.DISCARDED
    assert [b for b in at.button if b.key == "selfm_refit_write"]  # a new re-fit may be written


def test_refit_says_why_not_with_too_few_members(app_env, models_copy, open_page):
    summary = measured(app_env, models_copy, 20, planted=0)
    at = open_page(RETRAIN, role="data_scientist", lang="en", timeout=120)
    expected = (
        f"{summary['all']['compared']:,} cross-member pairs are too few to re-fit the approve point to a "
        f"false-match rate of 0.1%: at least {summary['pairs_needed']:,} are needed."
    )
    assert expected in [str(w.value) for w in at.warning]
    assert not [b for b in at.button if b.key == "selfm_refit_write"]


def test_refit_before_any_measurement(app_env, models_copy, open_page):
    at = open_page(RETRAIN, role="data_scientist", lang="en", timeout=120)
    assert any("has not been measured on your members yet" in str(w.value) for w in at.warning)
    assert not [b for b in at.button if b.key == "selfm_refit_write"]
