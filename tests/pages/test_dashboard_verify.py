"""The Verify page's services: result filters, pair input errors (core.dashboard.verify)."""

from __future__ import annotations

import pandas as pd
import pytest

from core.dashboard import formatting, verify


def test_filter_results():
    frame = pd.DataFrame(
        [
            {"member_id": "A1", "status": "flagged", "flags": "no_face several_faces"},
            {"member_id": "B2", "status": "auto_approved", "flags": ""},
            {"member_id": "a3", "status": "flagged", "flags": "gender_mismatch"},
        ]
    )
    assert list(verify.filter_results(frame, ["flagged"])["member_id"]) == ["A1", "a3"]
    assert list(verify.filter_results(frame, None, ["several_faces"])["member_id"]) == ["A1"]
    assert list(verify.filter_results(frame, None, None, "a")["member_id"]) == ["A1", "a3"]
    assert formatting.to_csv_bytes(frame).startswith("\ufeff".encode())  # Excel reads the Korean right


@pytest.mark.parametrize("lang", ["ko", "en"])
def test_pair_input_errors_speak_the_page_language(lang):
    error = verify.PairInputError("verify.need_photo", which="gallery")
    assert error.text(lang) == {"ko": "등록 사진이 없습니다.", "en": "Missing: Gallery photo."}[lang]
