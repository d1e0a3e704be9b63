"""core.dashboard.ui_services without Streamlit: roles, upload checks, background batches, KPI frames, photos."""

from __future__ import annotations

import csv
import io
import threading
import time
import zipfile

import pytest
from conftest import ROOT, engine_result
from PIL import Image

from core.dashboard import kpi_targets
from core.dashboard import ui_services as svc
from core.storage.schema import ADMIN, DATA_SCIENTIST, MANAGER, STAFF
from core.verification.result import PhotoAnalysis
from core.workflows import importer

SAMPLE = ROOT / "data" / "sample" / "images"


def test_page_roles():
    allowed = {
        page.key: {r for r in (STAFF, MANAGER, DATA_SCIENTIST, ADMIN) if svc.can_open(r, page.key)}
        for page in svc.PAGES
    }
    assert allowed["home"] == {STAFF, MANAGER, DATA_SCIENTIST, ADMIN}
    assert allowed["verify"] == allowed["review"] == allowed["members"] == {STAFF, ADMIN}
    assert allowed["kpis"] == {MANAGER, DATA_SCIENTIST, ADMIN}
    assert allowed["retrain"] == {DATA_SCIENTIST, ADMIN}
    assert not svc.can_open(None, "home") and not svc.can_open("intruder", "home")


def test_session_expiry():
    now = time.time()
    assert not svc.session_expired(now - 60, now, idle_minutes=30)
    assert svc.session_expired(now - 31 * 60, now, idle_minutes=30)
    assert svc.session_expired(None, now)


def test_targets_are_the_agreed_ones():
    assert kpi_targets.GENDER_ACCURACY.value == 0.80 and kpi_targets.GENDER_ACCURACY.owner == "contract"
    assert kpi_targets.LATENCY_CONTRACT_MS.value == 2000 and kpi_targets.LATENCY_P95_MS.value == 80
    assert kpi_targets.VERIFICATION_ACCURACY.met(0.995) and not kpi_targets.VERIFICATION_ACCURACY.met(0.98)
    assert kpi_targets.LATENCY_CONTRACT_MS.met(1999) and not kpi_targets.LATENCY_CONTRACT_MS.met(2001)
    assert kpi_targets.BACKLOG.met(None) is None


# ----------------------------------------------------------------------------------------------
# Batch upload checks


def _upload(rows, entries: dict[str, bytes], header=importer.EXPECTED_COLUMNS):
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows(rows)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return table.getvalue().encode(), buffer.getvalue()


def _keys(check):
    return [key for key, _ in check.problems]


def test_check_upload_accepts_a_good_upload():
    a, b = (SAMPLE / "John_Howard_0014.jpg").read_bytes(), (SAMPLE / "John_Howard_0005.jpg").read_bytes()
    manifest, photo_zip = _upload(
        [["M1", "남", "a.jpg", "photos/b.jpg"]], {"pics/a.jpg": a, "photos/b.jpg": b}
    )
    check = svc.check_batch_upload(manifest, "m.csv", photo_zip)
    assert check.ok and check.rows == 1


def test_check_upload_refuses_an_empty_or_missing_zip():
    manifest, _ = _upload([["M1", "M", "a.jpg", "b.jpg"]], {})
    empty = io.BytesIO()
    zipfile.ZipFile(empty, "w").close()
    assert _keys(svc.check_batch_upload(manifest, "m.csv", empty.getvalue())) == ["batch.zip_empty"]
    assert _keys(svc.check_batch_upload(manifest, "m.csv", None)) == ["batch.zip_missing"]
    assert _keys(svc.check_batch_upload(manifest, "m.csv", b"not a zip")) == ["batch.zip_unreadable"]


def test_check_upload_lists_every_problem_of_the_manifest():
    a = (SAMPLE / "John_Howard_0014.jpg").read_bytes()
    manifest, photo_zip = _upload(
        [
            ["M1", "M", "a.jpg", "nowhere.jpg"],
            ["M1", "M", "a.jpg", "a.jpg"],
            ["", "Q", "a.jpg", "notes.txt"],
            ["M3", "F", "", "../../etc/passwd"],
        ],
        {"a.jpg": a, "notes.txt": b"just text"},
    )
    check = svc.check_batch_upload(manifest, "m.csv", photo_zip)
    keys = _keys(check)
    assert not check.ok
    assert "batch.row_photo_missing" in keys  # nowhere.jpg
    assert "batch.row_duplicate" in keys  # M1 twice
    assert "batch.row_no_member" in keys and "batch.row_gender" in keys
    assert "batch.row_photo_unusable" in keys  # notes.txt is not a photo
    assert "batch.row_photo_empty" in keys and "batch.row_photo_bad" in keys  # '..' path refused


def test_check_upload_refuses_wrong_columns():
    manifest, photo_zip = _upload([["M1", "M", "a.jpg"]], {"a.jpg": b"x"}, header=("member", "sex", "photo"))
    check = svc.check_batch_upload(manifest, "m.csv", photo_zip)
    assert set(_keys(check)) == {"batch.manifest_problem"}


# ----------------------------------------------------------------------------------------------
# Background batches


class SlowEngine:
    """Enough of core.verification.engine.Engine for run_batch, waiting for a signal before the first photo."""

    model_version = "fake-v1"

    def __init__(self):
        self.go = threading.Event()
        self.calls = 0

    def analyze_many(self, photos):
        self.go.wait(30)
        self.calls += 1
        return [PhotoAnalysis(sha256=str(i)) for i, _ in enumerate(photos)]

    def compare(self, gallery, verification, registered_gender=None):
        return engine_result("auto_approved", 0.9, model_version=self.model_version)


def test_a_second_start_of_the_same_members_attaches_to_the_running_batch(
    session_factory, photo_store, add_member
):
    from sqlalchemy import func, select

    from core.storage.schema import Batch

    for n in range(3):
        add_member(f"J{n}")
    jobs, engine = svc.BatchJobs(), SlowEngine()
    first, started = jobs.start_members(
        session_factory, engine, photo_store, "staff_user", ["J0", "J1", "J2"]
    )
    again, started_again = jobs.start_members(
        session_factory, engine, photo_store, "staff_user", ["J2", "J1", "J0"]
    )
    assert started and not started_again and again is first
    engine.go.set()
    first.thread.join(30)
    assert first.phase == svc.DONE and first.done == first.total == 3
    with session_factory() as session:
        assert session.scalar(select(func.count(Batch.id))) == 1
    # Once finished, the same selection may run again (a new batch).
    _, started_later = jobs.start_members(session_factory, engine, photo_store, "staff_user", ["J0"])
    assert started_later


def test_nothing_to_run_is_reported_not_raised(session_factory, photo_store):
    jobs = svc.BatchJobs()
    job, _ = jobs.start_members(session_factory, SlowEngine(), photo_store, "staff_user", ["nobody"])
    job.thread.join(30)
    assert job.phase == svc.FAILED and job.error == ("batch.nothing_to_run", {})


# ----------------------------------------------------------------------------------------------
# Results, KPIs, photos


def test_filter_results():
    frame = svc.pd.DataFrame(
        [
            {"member_id": "A1", "status": "flagged", "flags": "no_face several_faces"},
            {"member_id": "B2", "status": "auto_approved", "flags": ""},
            {"member_id": "a3", "status": "flagged", "flags": "gender_mismatch"},
        ]
    )
    assert list(svc.filter_results(frame, ["flagged"])["member_id"]) == ["A1", "a3"]
    assert list(svc.filter_results(frame, None, ["several_faces"])["member_id"]) == ["A1"]
    assert list(svc.filter_results(frame, None, None, "a")["member_id"]) == ["A1", "a3"]
    assert svc.to_csv_bytes(frame).startswith("\ufeff".encode())  # Excel reads the Korean right


def test_kpi_frame_and_figures(session, add_member):
    from core.workflows import batches

    members = [add_member(f"K{n}") for n in range(4)]
    specs = [
        batches.BatchItemSpec(m.id, m.photos[0].id, m.photos[1].id, "M")
        for m in members  # gallery, verification
    ]
    batch = batches.create_batch(session, "t", specs, "v1", source="upload")
    items = sorted(batch.items, key=lambda i: i.position)
    for item, status in zip(
        items, ["auto_approved", "auto_rejected", "flagged", "auto_approved"], strict=True
    ):
        batches.store_result(
            session,
            engine_result(status, 0.9, latency_ms=50.0, model_version="v1"),
            batch_id=batch.id,
            batch_item_id=item.id,
            member_id=item.member_id,
        )
    session.commit()
    frame = svc.kpi_frame(session)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["n_results"] == 4 and row["automation_rate"] == 0.75 and row["backlog"] == 1
    assert row["latency_p95_ms"] == 50.0
    for chart in svc.KPI_CHARTS:
        fig = svc.kpi_figure(frame, chart, "en")
        lines = [shape for shape in fig.layout.shapes if shape.type == "line"]
        assert len(lines) == len(svc.KPI_CHARTS[chart][1])  # one line per target
        assert list(svc.chart_frame(frame, chart).columns)[:3] == ["batch_id", "batch", "first_result"]
    assert svc.kpi_frame(session, model_version="other").empty
    assert len(svc.kpi_frame(session, per="day")) == 1


def test_annotate_photo_draws_the_boxes():
    data = (SAMPLE / "John_Howard_0014.jpg").read_bytes()
    analysis = {"faces": [{"box": [60, 60, 100, 120]}, {"box": [5, 5, 30, 30]}], "main_face": 0}
    image = svc.annotate_photo(data, analysis)
    assert isinstance(image, Image.Image) and image.size == (250, 250)
    assert image.getpixel((60, 100)) == svc.MAIN_BOX and image.getpixel((5, 20)) == svc.OTHER_BOX
    assert svc.annotate_photo(b"not a photo", analysis) is None
    assert svc.crop_from_analysis(data, None) is None


def test_describe_flags_in_both_languages():
    result = engine_result(
        "flagged",
        0.55,
        flags=("gender_mismatch", "uncertain_similarity"),
        registered_gender="F",
        predicted_gender="M",
    )
    ko = svc.describe_flags(result, "ko")
    en = svc.describe_flags(result, "en")
    assert ko[0]["title"] == "성별 불일치" and "등록 성별은 여성인데 사진은 남성로" in ko[0]["text"]
    assert en[1]["text"] == "Similarity 0.550 is in the uncertain band 0.400–0.600."


def test_possible_duplicates_are_named_in_the_page_language():
    from core.verification.result import Flag

    result = engine_result("flagged", 0.9)
    result.flags.append(
        Flag(
            "possible_duplicate",
            "member M0008 (similarity 0.999); member M0100 (similarity 0.991) - at or above the duplicate threshold 0.990",
            "verification",
        )
    )
    (flag,) = svc.describe_flags(result, "ko")
    assert (
        flag["text"]
        == "다른 회원과 같은 사람일 수 있습니다: 회원 M0008 (유사도 0.999), 회원 M0100 (유사도 0.991)"
    )


@pytest.mark.parametrize("lang", ["ko", "en"])
def test_pair_input_errors_speak_the_page_language(lang):
    error = svc.PairInputError("verify.need_photo", which="gallery")
    assert error.text(lang) == {"ko": "등록 사진이(가) 없습니다.", "en": "Missing: Gallery photo."}[lang]
