"""Korean particles follow the final sound of the word before them."""

from __future__ import annotations

import pytest

from core.i18n.korean import attach, fill, final_sound


@pytest.mark.parametrize(
    ("word", "particle", "expected"),
    [
        ("여성", "(으)로", "여성으로"),
        ("남성", "(으)로", "남성으로"),
        ("서울", "(으)로", "서울로"),  # final ㄹ takes the short form
        ("사과", "(으)로", "사과로"),
        ("등록 사진", "이(가)", "등록 사진이"),
        ("인증 사진", "은(는)", "인증 사진은"),
        ("회원", "을(를)", "회원을"),
        ("배치", "을(를)", "배치를"),
        ("검토자", "과(와)", "검토자와"),
        ("M0015", "은(는)", "M0015는"),  # 오
        ("M0011", "이(가)", "M0011이"),  # 일
        ("0.520", "이(가)", "0.520이"),  # ... 이영
        ("0.552", "이(가)", "0.552가"),  # ... 오이
        ("10", "(으)로", "10으로"),  # 십
        ("7", "(으)로", "7로"),  # 칠: ㄹ
        ("1,000", "이(가)", "1,000이"),  # 천
        ("200", "을(를)", "200을"),  # 이백
        ("99.5%", "이(가)", "99.5%가"),  # 퍼센트
        ("M", "(으)로", "M으로"),  # 엠
        ("F", "(으)로", "F로"),  # 에프
        ("CSV", "을(를)", "CSV을(를)"),  # a Latin word: both forms, as written Korean does
        ("", "이(가)", "이(가)"),
    ],
)
def test_attach_follows_the_final_sound(word, particle, expected):
    assert attach(word, particle) == expected


def test_final_sound_of_hangul():
    assert final_sound("강") == "ㅇ" and final_sound("가") is None and final_sound("닭") == "ㄺ"


def test_templates_choose_the_particle():
    template = "등록 성별은 {registered}인데 사진은 {predicted:(으)로} 보입니다 (신뢰도 {confidence:.2f})."
    assert fill(template, registered="남성", predicted="여성", confidence=0.9) == (
        "등록 성별은 남성인데 사진은 여성으로 보입니다 (신뢰도 0.90)."
    )
    assert fill("유사도 {s:.3f이(가)} 구간에", s=0.52) == "유사도 0.520이 구간에"
    assert fill("유사도 {s:.3f이(가)} 구간에", s=0.55) == "유사도 0.550이 구간에"
    assert fill("유사도 {s:.2f이(가)}", s=0.55) == "유사도 0.55가"


def test_the_catalog_picks_the_particle_for_the_gender_it_names():
    from core.i18n import flag_text

    female = flag_text("gender_mismatch", "ko", registered="남성", predicted="여성", confidence=0.9)
    male = flag_text("gender_mismatch", "ko", registered="여성", predicted="남성", confidence=0.9)
    assert "사진은 여성으로 보입니다" in female and "사진은 남성으로 보입니다" in male
    assert flag_text("uncertain_similarity", "ko", similarity=0.552, low=0.4, high=0.6).startswith(
        "유사도 0.552가"
    )


def test_unknown_particle_is_refused():
    with pytest.raises(ValueError):
        attach("여성", "에게(께)")
