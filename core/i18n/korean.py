"""Korean particles that follow the final sound of the word before them (여성으로, 남성으로).

A Korean particle has two forms, chosen by whether the word before it ends in a consonant
(받침): 은/는, 이/가, 을/를, 과/와, 이나/나, 이라/라, and (으)로, where a final ㄹ takes the short
form (서울로, 남성으로). Templates name the particle in its written-both form after a
placeholder's format spec, so a template that is not filled still reads right:

    "사진은 {predicted:(으)로} 보입니다"       predicted="여성"  -> "사진은 여성으로 보입니다"
    "유사도 {similarity:.3f이(가)} 구간에"      similarity=0.52  -> "유사도 0.520이 구간에"

The final sound of a Hangul syllable is in its code point; digits are read the Sino-Korean way
(1 일, 3 삼, 10 십, 100 백; after a decimal point digit by digit), single Latin letters by their
Korean names (M 엠, F 에프). Anything else (a longer Latin word, a symbol) keeps both forms, as
Korean writing does when the reading is unknown: "CSV을(를)".
"""

from __future__ import annotations

import string

HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3
RIEUL = 8  # index of ㄹ among the final consonants of a syllable

# written-both form -> (after a final consonant, after a vowel)
PARTICLES = {
    "은(는)": ("은", "는"),
    "이(가)": ("이", "가"),
    "을(를)": ("을", "를"),
    "과(와)": ("과", "와"),
    "이나(나)": ("이나", "나"),
    "이라(라)": ("이라", "라"),
    "(이)라": ("이라", "라"),
    "(으)로": ("으로", "로"),
}

# Final sound of a digit read alone (Sino-Korean): None = no final consonant.
_DIGIT_FINAL = {
    "0": "ㅇ",
    "1": "ㄹ",
    "2": None,
    "3": "ㅁ",
    "4": None,
    "5": None,
    "6": "ㄱ",
    "7": "ㄹ",
    "8": "ㄹ",
    "9": None,
}
# 10, 100, 1000, 10000: 십 백 천 만
_TENS_FINAL = {1: "ㅂ", 2: "ㄱ", 3: "ㄴ", 4: "ㄴ"}
# Korean names of the Latin letters end in: L 엘, M 엠, N 엔, R 알; the others in a vowel
# (A 에이, B 비, ..., F 에프, S 에스, X 엑스 end in the vowel ㅡ).
_LETTER_FINAL = {"l": "ㄹ", "m": "ㅁ", "n": "ㄴ", "r": "ㄹ"}
_SYMBOL_FINAL = {"%": None}  # 퍼센트


def final_sound(word: str) -> str | None | bool:
    """The final consonant of how `word` is read: a jamo such as "ㄴ", None for a vowel ending,
    False when it cannot be told (then both forms are written)."""
    text = str(word).rstrip()
    if not text:
        return False
    last = text[-1]
    code = ord(last)
    if HANGUL_FIRST <= code <= HANGUL_LAST:
        index = (code - HANGUL_FIRST) % 28
        if index == 0:
            return None
        return "ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ"[index - 1]
    if last in _SYMBOL_FINAL:
        return _SYMBOL_FINAL[last]
    if last.isdigit():
        return _number_final(text)
    if last.isascii() and last.isalpha():
        # A lone letter (or one after digits or a separator, as in "M0015-B") is read by its name.
        before = text[-2] if len(text) > 1 else ""
        if before and before.isascii() and before.isalpha():
            return False
        return _LETTER_FINAL.get(last.lower())
    return False


def _number_final(text: str) -> str | None:
    digits = ""
    for ch in reversed(text):
        if ch.isdigit() or ch in ".,":
            digits = ch + digits
        else:
            break
    digits = digits.replace(",", "").lstrip(".")
    if "." in digits:  # after the decimal point each digit is read alone: 0.520 -> 영점오이영
        return _DIGIT_FINAL[digits[-1]]
    stripped = digits.rstrip("0")
    zeros = len(digits) - len(stripped)
    if not stripped:  # 0
        return _DIGIT_FINAL["0"]
    if zeros == 0:
        return _DIGIT_FINAL[digits[-1]]
    if zeros <= 4:
        return _TENS_FINAL[zeros]
    # 십만 백만 천만 -> 만 (ㄴ); 억 (ㄱ) from 10^8, 조 (vowel) from 10^12
    if zeros < 8:
        return "ㄴ"
    return "ㄱ" if zeros < 12 else None


def attach(word, particle: str) -> str:
    """`word` followed by the form of `particle` (written-both, e.g. "(으)로") its final sound takes."""
    text = str(word)
    forms = PARTICLES.get(particle)
    if forms is None:
        raise ValueError(f"unknown particle {particle!r}; known: {', '.join(PARTICLES)}")
    final = final_sound(text)
    if final is False:
        return text + particle
    with_final, without = forms
    if final is None or (particle == "(으)로" and final == "ㄹ"):
        return text + without
    return text + with_final


def split_spec(format_spec: str) -> tuple[str, str | None]:
    """A placeholder's format spec as (str.format's own spec, particle or None): ".3f이(가)" ->
    (".3f", "이(가)")."""
    for particle in PARTICLES:
        if format_spec.endswith(particle):
            return format_spec[: -len(particle)], particle
    return format_spec, None


class ParticleFormatter(string.Formatter):
    """str.format with particles: "{name:(으)로}" and "{value:.3f이(가)}"."""

    def format_field(self, value, format_spec: str) -> str:
        spec, particle = split_spec(format_spec)
        text = format(value, spec)
        return text if particle is None else attach(text, particle)


FORMATTER = ParticleFormatter()


def fill(template: str, **fields) -> str:
    return FORMATTER.format(template, **fields)
