"""Every label of the dashboard, in Korean and English: one JSON catalog per language, keyed by string id.

    t("verify.run", "ko")                      -> "인증 실행"
    t("review.backlog", "en", n=3, skipped=0)  -> "3 pairs waiting · 0 skipped"

The catalogs are core/i18n/en.json and core/i18n/ko.json, read once at import. Korean is the
default (the verification staff are Korean); the sidebar switches to English. Placeholders use
str.format; both languages must have the same keys and the same placeholders (tests/unit/test_i18n.py
checks). A missing key falls back to English, then to the key itself, and a formatting problem
returns the unformatted text: a label never breaks a page.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.i18n import korean

DEFAULT_LANG = "ko"
LANGUAGES = {"ko": "한국어", "en": "English"}
CATALOG_DIR = Path(__file__).resolve().parent


def _load(lang: str) -> dict[str, str]:
    return json.loads((CATALOG_DIR / f"{lang}.json").read_text(encoding="utf-8"))


STRINGS: dict[str, dict[str, str]] = {lang: _load(lang) for lang in LANGUAGES}
EN, KO = STRINGS["en"], STRINGS["ko"]


def _fill(template: str, fmt: dict) -> str | None:
    try:
        return korean.fill(template, **fmt)  # str.format, plus Korean particles: "{name:(으)로}"
    except (KeyError, IndexError, ValueError, TypeError):
        return None


def t(key: str, lang: str = DEFAULT_LANG, **fmt) -> str:
    """The label `key` in `lang`, formatted with `fmt`."""
    template = STRINGS.get(lang, KO).get(key)
    if template is None:
        template = EN.get(key, key)
    if not fmt:
        return template
    filled = _fill(template, fmt)
    return template if filled is None else filled


def flag_text(code: str, lang: str = DEFAULT_LANG, **params) -> str:
    """One sentence about a flag, from its code and the result's figures. Falls back to the
    engine's English reason (`detail`) when a figure the sentence needs is missing."""
    template = STRINGS.get(lang, KO).get(f"flagtext.{code}") or EN.get(f"flagtext.{code}")
    if template is None:
        return params.get("detail") or code
    filled = _fill(template, params)
    return filled if filled is not None else (params.get("detail") or t(f"flag.{code}", lang))
