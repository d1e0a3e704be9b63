"""Flags in the page's language (core.dashboard.formatting)."""

from __future__ import annotations

import pytest
from conftest import engine_result

from core.dashboard import formatting


def test_describe_flags_in_both_languages():
    result = engine_result(
        "flagged",
        0.55,
        flags=("gender_mismatch", "uncertain_similarity"),
        registered_gender="F",
        predicted_gender="M",
    )
    ko = formatting.describe_flags(result, "ko")
    en = formatting.describe_flags(result, "en")
    assert ko[0]["title"] == "성별 불일치" and "등록 성별은 여성인데 사진은 남성으로" in ko[0]["text"]
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
    (flag,) = formatting.describe_flags(result, "ko")
    assert (
        flag["text"]
        == "다른 회원과 같은 사람일 수 있습니다: 회원 M0008 (유사도 0.999), 회원 M0100 (유사도 0.991)"
    )


def test_csv_downloads_escape_cells_that_would_run_as_formulas():
    import csv
    import io

    import pandas as pd

    frame = pd.DataFrame(
        {
            "member_id": [
                '=HYPERLINK("http://evil.example/x","click")',
                "=cmd|' /C calc'!A0",
                "@SUM(1+1)",
                "+1-1",
                "M1",
            ],
            "similarity": [0.9, -0.1, 0.5, 0.4, 0.3],
            "note": ["\tx", "\rx", "-2", "ok", ""],
        }
    )
    text = formatting.to_csv_bytes(frame).decode("utf-8-sig")
    header, *rows = list(csv.reader(io.StringIO(text, newline="")))
    assert [r[0] for r in rows] == [
        '\'=HYPERLINK("http://evil.example/x","click")',
        "'=cmd|' /C calc'!A0",
        "'@SUM(1+1)",
        "'+1-1",
        "M1",
    ]
    assert [r[2] for r in rows] == ["'\tx", "'\rx", "'-2", "ok", ""]
    assert [r[1] for r in rows] == ["0.9", "-0.1", "0.5", "0.4", "0.3"]  # numbers stay numbers


@pytest.mark.parametrize(
    ("hits", "n", "low", "high"),
    [(1, 2, 0.0945, 0.9055), (0, 10, 0.0, 0.2775), (95, 100, 0.8882, 0.9785), (30, 30, 0.8865, 1.0)],
)
def test_wilson_interval_matches_the_textbook_values(hits, n, low, high):
    got = formatting.wilson_interval(hits, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_a_rate_says_what_it_rests_on_in_both_languages():
    few = formatting.Rate(1, 2)
    assert formatting.basis_text(few, "reviewed_pairs", "en") == (
        "1 of 2 reviewed pairs · 95% interval 9.5–90.5% · too few to judge (fewer than 30)"
    )
    assert formatting.basis_text(few, "reviewed_pairs", "ko") == (
        "검토된 쌍 2건 중 1건 · 95% 신뢰구간 9.5–90.5% · 판단하기에 너무 적음 (30건 미만)"
    )
    many = formatting.rate_of(0.97, 1200)
    assert many.hits == 1164 and many.enough
    assert formatting.basis_text(many, "results", "en") == "1,164 of 1,200 pairs · 95% interval 95.9–97.8%"
    assert formatting.basis_text(formatting.rate_of(None, 0), "gender_truth", "en") == (
        "no photos with a known gender yet"
    )
    assert formatting.wilson_interval(0, 0) is None and formatting.percent(None) == "—"
    assert formatting.milliseconds(568.759) == "569 ms" and formatting.percent(0.5) == "50.0%"


def test_times_are_shown_in_the_deployment_time_zone_with_its_name():
    from datetime import datetime

    stored = datetime(2026, 12, 6, 9, 10)  # naive UTC, as the database keeps it
    assert formatting.local_time(stored) == "2026-12-06 18:10 KST"  # Asia/Seoul by default
    assert formatting.local_time(stored, "UTC") == "2026-12-06 09:10 UTC"
    assert formatting.local_time(datetime(2026, 7, 1, 9, 10), "Europe/Berlin") == "2026-07-01 11:10 CEST"
    assert formatting.local_time(stored, "Asia/Almaty").endswith(" UTC+05")  # no abbreviation of its own
    assert formatting.local_time(None) == ""
    assert formatting.zone_name() == "KST"


def test_the_display_timezone_setting_is_used_everywhere_and_checked():
    import os
    import subprocess
    import sys

    script = (
        "from datetime import datetime\n"
        "from core import config\n"
        "from core.dashboard import formatting\n"
        "from core.workflows import batches\n"
        "from core.i18n import t\n"
        "print(config.DISPLAY_TZ)\n"
        "print(formatting.local_time(datetime(2026, 12, 6, 23, 30)))\n"
        "print(batches.local_day(datetime(2026, 12, 6, 23, 30)))\n"
        "print(t('kpi.period', 'en', zone=formatting.zone_name()))\n"
    )

    def run(zone: str):
        env = {**os.environ, "DISPLAY_TIMEZONE": zone}
        return subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )

    berlin = run("Europe/Berlin")
    assert berlin.returncode == 0, berlin.stderr
    assert berlin.stdout.splitlines() == [
        "Europe/Berlin",
        "2026-12-07 00:30 CET",
        "2026-12-07",
        "Period (CET)",
    ]
    wrong = run("Mars/Olympus")
    assert wrong.returncode != 0
    assert "DISPLAY_TIMEZONE 'Mars/Olympus' is not a time zone" in wrong.stderr


def test_the_similarity_reads_as_words_in_both_languages_and_as_a_code_for_the_api():
    from core.api.output import words_code
    from core.dashboard.formatting import similarity_in_words

    assert similarity_in_words(0.999, "en") == "Very likely the same person"
    assert similarity_in_words(0.5, "en") == "Cannot tell from these photos"
    assert similarity_in_words(0.001, "en") == "Very likely different people"
    assert any("\uac00" <= ch <= "\ud7a3" for ch in similarity_in_words(0.95, "ko"))
    assert similarity_in_words(None, "en") is None
    assert [words_code(p) for p in (0.995, 0.95, 0.5, 0.05, 0.0)] == [
        "very_likely_same",
        "likely_same",
        "cannot_tell",
        "likely_different",
        "very_likely_different",
    ]
