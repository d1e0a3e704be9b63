"""The Retrain page through streamlit.testing.v1.AppTest: refused to other roles, settings and their
checks, start (the worker's launch replaced by a no-op: the real background run is tested in
test_training.py), second start refused, cancel, the comparison, promote with confirmation,
discard, rollback, failures shown with their reason; Korean and English labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE_DIR, SAMPLE_IMAGES
from sqlalchemy import select
from streamlit.testing.v1 import AppTest
from test_registry import make_version

from core import jobs
from core.storage.schema import AuditEntry, TrainingRun, utcnow
from core.training import registry, worker

PAGE = "pages/5_Retrain.py"


@pytest.fixture
def open_retrain(open_page):
    """The Retrain page, signed in as <role>_user."""

    def open_(role: str = "data_scientist", lang: str | None = None) -> AppTest:
        return open_page(PAGE, role, lang, timeout=60)

    return open_


def texts(at: AppTest) -> str:
    parts = []
    for kind in ("title", "subheader", "markdown", "caption", "error", "warning", "info", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [b.label for b in at.button] + [c.label for c in at.checkbox]
    parts += [option for r in at.radio for option in r.options]
    return "\n".join(parts)


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


@pytest.fixture
def retrain_env(app_env, models_copy, tmp_path, monkeypatch):
    """The app with its own models folder and a small LFW-style set standing in for lfw_dev."""
    lfw = tmp_path / "lfw_dev"
    lfw.mkdir()
    (lfw / "images").symlink_to(SAMPLE_IMAGES)
    shutil.copy(SAMPLE_DIR / "people.csv", lfw / "people.csv")
    monkeypatch.setenv("LFW_DEV_DIR", str(lfw))
    launched = []
    monkeypatch.setattr(jobs, "_launch_training", lambda factory, run_id, store_dir: launched.append(run_id))
    app_env.models_dir = models_copy
    app_env.launched = launched
    app_env.lfw_images = lfw / "images"
    return app_env


@pytest.mark.parametrize("role", ["staff", "manager"])
def test_other_roles_are_refused_on_the_server(app_env, role, open_retrain):
    at = open_retrain(role, lang="en")
    assert "may not open this page" in texts(at)
    assert not [b for b in at.button if b.label == "Start training"]
    with app_env.session() as session:
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "access_denied"))
        assert entry.actor == f"{role}_user"


def test_form_in_korean_and_english_with_the_active_version(retrain_env, open_retrain):
    at = open_retrain()
    assert at.title[0].value == "재학습"
    assert "학습 시작" in texts(at) and "LFW 개발 데이터 (사진 120장)" in texts(at)
    at = open_retrain(lang="en")
    assert at.title[0].value == "Retrain"
    assert "Start training" in texts(at) and "LFW development set (120 photos)" in texts(at)
    shipped = (retrain_env.models_dir / "DEFAULT").read_text().strip()
    table = at.dataframe[0].value
    assert list(table["Version"]) == [shipped] and "active" in table["Status"].iloc[0]
    assert at.number_input(key="retrain_set_epochs").value == 10
    assert at.selectbox(key="retrain_set_loss").value == "contrastive"


def test_settings_out_of_range_refused_before_any_run(retrain_env, open_retrain):
    at = open_retrain(lang="en")
    at.number_input(key="retrain_set_epochs").set_value(0)
    at.number_input(key="retrain_set_holdout_fraction").set_value(0.9)
    button(at, "Start training").click().run()
    message = texts(at)
    assert "Not started" in message and "epochs must be between 1 and 500" in message
    assert "holdout_fraction must be between 0.05 and 0.5" in message
    with retrain_env.session() as session:
        assert session.scalar(select(TrainingRun)) is None
    assert retrain_env.launched == []


def test_start_then_second_start_refused_then_cancel(retrain_env, open_retrain):
    first = open_retrain(lang="en")
    second = open_retrain(lang="en")  # another data scientist has the form open too
    button(first, "Start training").click().run()
    assert not first.exception
    with retrain_env.session() as session:
        run = session.scalar(select(TrainingRun))
    assert retrain_env.launched == [run.id] and run.status == "queued"
    assert run.params["data"]["reviewed"] is False  # nothing reviewed yet: unticked by default
    assert run.params["data"]["lfw_images"] == str(retrain_env.lfw_images)  # the set found on this machine
    assert f"Training run {run.id} started" in texts(first)
    assert "Training run" in texts(first) and "Cancel the run" in texts(first)  # the live panel

    button(second, "Start training").click().run()
    assert f"training run {run.id} by data_scientist_user is still going" in texts(second)
    with retrain_env.session() as session:
        assert len(session.scalars(select(TrainingRun)).all()) == 1

    again = open_retrain(lang="en")  # the page reopened later: the run is still shown
    assert "Cancel the run" in texts(again)
    button(again, "Cancel the run").click().run()
    assert "Cancelling" in texts(again) or f"Run {run.id} was asked to stop." in texts(again)
    with retrain_env.session() as session:
        run = worker.get_run(session, run.id)
        assert run.status == "cancelling" and "Cancelled by data_scientist_user" in run.error
        assert session.scalar(select(AuditEntry).where(AuditEntry.action == "cancel_training")) is not None


def candidate_run(env, status="succeeded", error=None) -> str:
    """A finished run whose candidate version is registered, as the worker leaves it."""
    version = make_version(env.models_dir, "v20990101-000000", "2099-01-01T00:00:00+00:00", 0.99)
    with env.session() as session:
        registry.register(session, version, "data_scientist_user", models_dir=env.models_dir)
        shipped = registry.active_version(session, env.models_dir)
        figures = {"verification_accuracy": 0.97, "verification_auc": 0.995, "fnmr_at_fmr_0_001": 0.05}
        session.add(
            TrainingRun(
                started_by="data_scientist_user",
                started_at=utcnow(),
                finished_at=utcnow(),
                status=status,
                error=error,
                stage="done",
                model_version=version if status == "succeeded" else None,
                params={"params": {}, "data": {}},
                progress={
                    "stage": "done",
                    "fraction": 1.0,
                    "siamese_loss": [[1, 0.3], [2, 0.2]],
                    "gender_loss": [[1, 0.5], [2, 0.4]],
                    "timings": {"total_seconds": 20.8, "features_seconds": 0.3, "training_seconds": 14.8},
                    "notes": [
                        "Reviewed result 21 (member M0001) skipped: the verification photo has no usable face."
                    ],
                    "comparison": {
                        "new": {"model_version": version, **figures, "latency_p50_ms": 50.0, "n_pairs": 100},
                        "active": {
                            "model_version": shipped,
                            **{k: v - 0.01 for k, v in figures.items()},
                            "latency_p50_ms": 52.0,
                            "n_pairs": 100,
                        },
                    },
                },
            )
        )
        session.commit()
    return version


def test_comparison_then_promote_with_confirmation_then_rollback(retrain_env, open_retrain):
    version = candidate_run(retrain_env)
    shipped = (retrain_env.models_dir / "DEFAULT").read_text().strip()
    at = open_retrain(lang="en")
    page = texts(at)
    assert f"New version {version} trained in 20.8 s" in page and "no usable face" in page
    table = at.dataframe[0].value
    assert list(table["Figure"][:3]) == [
        "Verification accuracy",
        "AUC",
        "False non-match rate at 0.1% false match rate",
    ]
    assert list(table["New is"][:3]) == ["better", "better", "worse"]
    assert table[f"New ({version})"].iloc[0] == "97.00%" and table[f"Active ({shipped})"].iloc[0] == "96.00%"
    promote = button(at, "Promote")
    assert promote.disabled  # until the confirmation is ticked
    at.checkbox(key=f"retrain_confirm_{version}").check().run()
    button(at, "Promote").click().run()
    assert f"Version {version} is now the active model." in texts(at)
    with retrain_env.session() as session:
        assert registry.active_version(session, retrain_env.models_dir) == version
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "promote_model"))
        assert entry.actor == "data_scientist_user" and entry.detail == {"from": shipped, "to": version}
    assert (retrain_env.models_dir / "DEFAULT").read_text().strip() == shipped  # the fresh-clone default

    assert at.selectbox(key="retrain_rollback_target").value == shipped
    assert button(at, "Roll back").disabled
    at.checkbox(key="retrain_rollback_confirm").check().run()
    button(at, "Roll back").click().run()
    assert f"version {shipped} is the active model again" in texts(at)
    with retrain_env.session() as session:
        assert registry.active_version(session, retrain_env.models_dir) == shipped
        assert session.scalar(select(AuditEntry).where(AuditEntry.action == "rollback_model")) is not None
    assert "rolled back" in list(at.dataframe[-1].value["Action"])  # the history table


def test_discard_the_candidate(retrain_env, open_retrain):
    version = candidate_run(retrain_env)
    at = open_retrain(lang="en")
    button(at, "Discard").click().run()
    assert f"Version {version} was discarded." in texts(at)
    with retrain_env.session() as session:
        statuses = {v.version: v.status for v in registry.list_versions(session, retrain_env.models_dir)}
        assert statuses[version] == "discarded"
        assert session.scalar(select(AuditEntry).where(AuditEntry.action == "discard_model")) is not None
    assert not (retrain_env.models_dir / version).exists()


def test_failed_run_shows_its_reason(retrain_env, open_retrain):
    with retrain_env.session() as session:
        session.add(
            TrainingRun(
                started_by="data_scientist_user",
                started_at=utcnow(),
                finished_at=utcnow(),
                status="failed",
                error="Cannot train: no photos of women (gender F): the gender head cannot learn it.",
            )
        )
        session.commit()
    at = open_retrain()
    assert "실행이 실패했습니다. 현재 모델은 바뀌지 않았습니다." in texts(at)
    assert "no photos of women" in at.code[0].value


# ----------------------------------------------------------------------------------------------
# Training sets on a fresh install (no lfw_dev on the machine): the reviewed decisions, an
# uploaded ZIP in the LFW layout, a folder on the server


@pytest.fixture
def fresh_install(app_env, models_copy, tmp_path, monkeypatch):
    """No LFW development set on this machine, uploads unpacked under tmp_path."""
    monkeypatch.setenv("LFW_DEV_DIR", str(tmp_path / "no_lfw_here"))
    monkeypatch.setenv("TRAINING_SETS_DIR", str(tmp_path / "training_sets"))
    launched = []
    monkeypatch.setattr(jobs, "_launch_training", lambda factory, run_id, store_dir: launched.append(run_id))
    app_env.models_dir = models_copy
    app_env.launched = launched
    app_env.sets_dir = tmp_path / "training_sets"
    return app_env


def lfw_zip(people_csv: bytes | None = None, extra: dict[str, bytes] | None = None) -> bytes:
    """data/sample as LFW ships it: lfw/Person_Name/Person_Name_0001.jpg and lfw/people.csv."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(
            "lfw/people.csv",
            people_csv if people_csv is not None else (SAMPLE_DIR / "people.csv").read_bytes(),
        )
        for photo in sorted(SAMPLE_IMAGES.iterdir()):
            z.write(photo, f"lfw/{photo.name.rsplit('_', 1)[0]}/{photo.name}")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return buffer.getvalue()


def start_run(env, at):
    button(at, "Start training").click().run()
    assert not at.exception, [e.value for e in at.exception]
    with env.session() as session:
        return session.scalar(select(TrainingRun))


def test_fresh_install_says_what_is_missing(fresh_install, open_retrain):
    at = open_retrain(lang="en")
    assert at.radio(key="retrain_photo_set").value == "none"
    assert at.radio(key="retrain_photo_set").options == [
        "None (the reviewed decisions only)",
        "A ZIP uploaded here (LFW layout)",
        "A folder on the server",
    ]  # no LFW development set on this machine
    assert "Training cannot start yet: choose at least one source" in texts(at)
    assert button(at, "Start training").disabled  # with the reason beside it
    assert "Start is not available yet: choose at least one source" in texts(at)
    with fresh_install.session() as session:
        assert session.scalar(select(TrainingRun)) is None


def test_train_from_the_reviewed_decisions_alone(fresh_install, add_reviewed, open_retrain):
    add_reviewed(fresh_install.session_factory, fresh_install.store)
    at = open_retrain(lang="en")
    assert at.checkbox(key="retrain_use_reviewed").value  # decisions exist: ticked
    page = texts(at)
    assert "Reviewed decisions in the database (20 pairs" in page
    assert "Enough to train." in page and "Ready: training can start" in page
    run = start_run(fresh_install, at)
    assert run.params["data"] == {
        "lfw_images": None,
        "lfw_people": None,
        "reviewed": True,
        "gender_only": None,
        "gender_only_images": None,
        "sets": [],
        "cohort": [],
        "cohort_labels": [],
    }
    assert fresh_install.launched == [run.id]


def test_train_from_an_uploaded_zip_in_the_lfw_layout(fresh_install, open_retrain):
    at = open_retrain()  # Korean
    at.radio(key="retrain_photo_set").set_value("upload").run()
    assert "학습할 ZIP을 올려 주세요." in texts(at)
    at.file_uploader(key="retrain_zip").set_value(("lfw.zip", lfw_zip(), "application/zip")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "사진 120장, 24명" in texts(at) and "준비됨" in texts(at)
    at.checkbox(key="retrain_use_reviewed").uncheck().run()
    button(at, "학습 시작").click().run()
    with fresh_install.session() as session:
        run = session.scalar(select(TrainingRun))
    images = Path(run.params["data"]["lfw_images"])
    assert images.parent.parent == fresh_install.sets_dir and len(list(images.iterdir())) == 120
    from core.training import pipeline

    assert len(pipeline.read_lfw_folder(images, Path(run.params["data"]["lfw_people"]))) == 120


@pytest.mark.parametrize(
    "zip_of, expected",
    [
        (lambda: b"not a zip at all", "cannot be opened"),
        (lambda: lfw_zip(extra={"../../escape.jpg": b"x"}), "point outside it"),
        (lambda: lfw_zip(people_csv=b"name,sex\nA,M\n"), "needs the columns person,gender"),
        (lambda: lfw_zip(people_csv=b"person,gender\nAdrien_Brody,X\n"), "must be M or F"),
        (lambda: lfw_zip(extra={"other/people.csv": b"person,gender\n"}), "exactly one people.csv"),
        (lambda: lfw_zip(people_csv=b"person,gender\nNobody_Here,F\n"), "No photo in the ZIP"),
    ],
)
def test_a_bad_zip_is_refused_with_its_reason_and_nothing_is_kept(
    fresh_install, zip_of, expected, open_retrain
):
    at = open_retrain(lang="en")
    at.radio(key="retrain_photo_set").set_value("upload").run()
    at.file_uploader(key="retrain_zip").set_value(("set.zip", zip_of(), "application/zip")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "This set cannot be used" in texts(at) and expected in texts(at)
    assert not fresh_install.sets_dir.exists() or not any(fresh_install.sets_dir.iterdir())


def test_a_zip_bomb_stops_at_the_limit(fresh_install, monkeypatch):
    """A photo whose ZIP header claims a small size but unpacks to more than the cap."""
    import io
    import zipfile

    from core.dashboard import training_sets

    monkeypatch.setattr(training_sets, "MAX_UNPACKED_BYTES", 3 * 1024 * 1024)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("people.csv", "person,gender\nA_B,M\n")
        for k in range(1, 5):
            z.writestr(f"A_B_{k:04d}.jpg", b"\0" * (1024 * 1024))  # 4 MB of zeros: a few KB packed
    with pytest.raises(training_sets.TrainingSetError, match="unpacked; the limit is"):
        training_sets.unpack_upload(buffer.getvalue(), fresh_install.sets_dir)
    assert not fresh_install.sets_dir.exists() or not any(fresh_install.sets_dir.iterdir())


def test_train_from_a_folder_on_the_server(fresh_install, tmp_path, open_retrain):
    at = open_retrain(lang="en")
    at.radio(key="retrain_photo_set").set_value("folder").run()
    at.text_input(key="retrain_folder").input(str(tmp_path / "missing")).run()
    assert "There is no folder" in texts(at)
    at.text_input(key="retrain_folder").input("data/sample").run()
    page = texts(at)
    assert "120 photos of 24 people (24 with two photos or more; 69 photos of men, 51 of women)" in page
    run = start_run(fresh_install, at)
    assert run.params["data"]["lfw_images"] == str(SAMPLE_IMAGES)
    assert run.params["data"]["lfw_people"] == str(SAMPLE_DIR / "people.csv")


def test_too_small_a_folder_says_why(fresh_install, tmp_path, open_retrain):
    small = tmp_path / "small"
    small.mkdir()
    (small / "people.csv").write_text("person,gender\nAdrien_Brody,M\nCharles_Moose,M\n")
    for photo in (
        sorted(SAMPLE_IMAGES.glob("Adrien_Brody_*"))[:2] + sorted(SAMPLE_IMAGES.glob("Charles_Moose_*"))[:2]
    ):
        shutil.copy(photo, small / photo.name)
    at = open_retrain(lang="en")
    at.radio(key="retrain_photo_set").set_value("folder").run()
    at.text_input(key="retrain_folder").input(str(small)).run()
    page = texts(at)
    assert "4 photos of 2 people" in page and "Not enough on its own" in page
    assert "only 2 people with a usable face" in page and "no photos of women" in page
    assert "Training cannot start yet" in page


# ----------------------------------------------------------------------------------------------
# After a run: the outcome on top, no stale notice, the comparison whole, the photo set kept


def test_after_a_run_the_outcome_comes_first_and_reads_whole(retrain_env, open_retrain, monkeypatch):
    import streamlit as st

    heights = []
    original = st.dataframe

    def dataframe(data, *args, **kwargs):  # the height each table is drawn with
        heights.append((len(data), kwargs.get("height", "auto")))
        return original(data, *args, **kwargs)

    monkeypatch.setattr(st, "dataframe", dataframe)
    version = candidate_run(retrain_env)
    at = open_retrain(lang="en")
    subheaders = [str(h.value) for h in at.subheader]
    assert subheaders[0].startswith("Last run") and subheaders[1] == "New training run", subheaders
    n_rows, height = heights[0]  # the comparison: every row shown, no scroll box of its own
    assert n_rows == len(at.dataframe[0].value) and isinstance(height, int) and height >= 35 * (n_rows + 1)

    button(at, "Discard").click().run()
    page = texts(at)
    assert f"Version {version} was discarded." in page
    assert "not active until you promote it" not in page  # the stale sentence is gone


def test_the_photo_set_choice_survives_a_run(retrain_env, open_retrain):
    at = open_retrain(lang="en")
    at.radio(key="retrain_photo_set").set_value("folder").run()
    with retrain_env.session() as session:  # a run goes on: the form is not drawn meanwhile
        run = TrainingRun(started_by="data_scientist_user", started_at=utcnow(), status="running", stage="x")
        session.add(run)
        session.commit()
        run_id = run.id
    at.run()
    assert "retrain_photo_set" not in [r.key for r in at.radio]
    with retrain_env.session() as session:
        session.get(TrainingRun, run_id).status = "cancelled"
        session.commit()
    at.run()
    assert at.radio(key="retrain_photo_set").value == "folder"
