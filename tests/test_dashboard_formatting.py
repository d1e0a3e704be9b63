"""Flags in the page's language (core.dashboard.formatting)."""

from __future__ import annotations

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
