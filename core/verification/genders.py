"""Gender values: one normalisation for the importer, the engine, the API and the pages."""

from __future__ import annotations

import unicodedata

_MALE = {"m", "male", "man", "남", "남성", "남자"}
_FEMALE = {"f", "female", "woman", "여", "여성", "여자"}


def normalise_gender(value) -> str:
    """'M' or 'F' from M/F, male/female, man/woman, 남/여, 남성/여성, 남자/여자 (any case, trimmed)."""
    # NFKC: full-width letters typed with a Korean input method ("Ｍ") count as "M".
    text = unicodedata.normalize("NFKC", str(value if value is not None else "")).strip().lower()
    if text in _MALE:
        return "M"
    if text in _FEMALE:
        return "F"
    shown = str(value).strip() if value is not None else ""
    raise ValueError(
        f"gender {shown!r} is not recognised: use M or F (also male/female, man/woman, 남/여, "
        "남성/여성, 남자/여자)"
        if shown
        else "gender is empty: use M or F"
    )


def optional_gender(value) -> str | None:
    """Like normalise_gender, but None (not given) for None or blank."""
    if value is None or str(value).strip() == "":
        return None
    return normalise_gender(value)
