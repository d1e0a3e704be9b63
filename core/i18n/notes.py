"""What the import says about a row or a file, as catalog keys (core/i18n) and their values, so
the Members page says it in the user's language while the command line and the logs read the
English catalog: one source of wording.

    Note("import.note.up_to_date").text("ko")  -> "이미 최신 상태입니다"
    str(Note("import.note.up_to_date"))        -> "already up to date"

A value may itself be a Note (said in the same language). An error written elsewhere in English
(a member id rule, a link refused, a profile photo's check) keeps that English text for the
command line (`en`) and says what happened in Korean from its own key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from core import i18n

EN = "en"


@dataclass(frozen=True)
class Note:
    key: str
    params: dict = field(default_factory=dict)
    en: str | None = None  # the English text, when it was written outside the catalog

    def text(self, lang: str = EN) -> str:
        if lang == EN and self.en is not None:
            return self.en
        values = {k: v.text(lang) if isinstance(v, Note) else v for k, v in self.params.items()}
        return i18n.t(self.key, lang, **values)

    def __str__(self) -> str:
        return self.text(EN)


def note(key: str, **params) -> Note:
    return Note(key, params)


def joined(notes: Iterable[Note], lang: str = EN) -> str:
    return "; ".join(n.text(lang) for n in notes)


def of_error(exc: Exception, fallback: str, **params) -> Note:
    """An error as a note: its own catalog key and values when it has them (core.errors.ImageError),
    else the fallback key; the English text stays the error's own."""
    key = getattr(exc, "key", None)
    if key and key in i18n.EN:
        return Note(key, dict(getattr(exc, "params", None) or {}), en=str(exc))
    code = getattr(exc, "code", None)
    if code and f"image_error.{code}" in i18n.EN:
        return Note(f"image_error.{code}", {"detail": ""}, en=str(exc))
    return Note(fallback, {**params, "detail": str(exc)}, en=str(exc))
