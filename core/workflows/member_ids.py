"""Member ids people cannot confuse: one canonical form, and no new id that looks like another.

    canonical_member_id(raw) -> str          NFKC-normalised, stripped id, or ValueError when it
                                             breaks core.workflows.spreadsheets.MEMBER_ID_RULE,
                                             holds invisible characters, mixes scripts, or uses a
                                             Cyrillic or Greek letter that looks like a Latin one
    skeleton(member_id) -> str               what an id looks like: case, O/0, l/1/I and the
                                             separators . - _ ignored
    lookalike_of(session, member_id)         an existing member id that looks the same but is not
                                             it, or None
    check_new_member_id(session, raw) -> str canonical, and ValueError when it only looks like an
                                             existing member's id

Look-alikes are refused, not folded: folding "m0001" into "M0001" would attach one person's
photos to another member on a typo, while a refusal names the existing id and lets a person
decide. Every entry point (API, importer, dashboard) calls these before a member is created.
"""

from __future__ import annotations

import unicodedata

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.storage.schema import Member
from core.workflows import spreadsheets

# Cyrillic and Greek letters drawn like Latin ones (upper and lower case).
CONFUSABLE_LETTERS = set(
    "АВЕЅІЈКМНОРСТХУаеіјорсхуѕԁһԛԝ"  # Cyrillic
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧαικνορτυχ"  # Greek
)
# Scripts written together in Korean and Japanese names count as one.
_EAST_ASIAN = {"HANGUL", "CJK", "HIRAGANA", "KATAKANA"}
# Lower-case characters that look alike, mapped to one of them.
_LOOKALIKE = str.maketrans({"o": "0", "l": "1", "i": "1", "|": "1"})
_SEPARATORS = str.maketrans("", "", ".-_")
# (Control characters such as tabs get the spreadsheet rule's own message.)
_INVISIBLE_CATEGORIES = {"Cf", "Co", "Cs", "Cn", "Mn", "Me", "Zs", "Zl", "Zp"}


def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    word = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
    return "EAST_ASIAN" if word in _EAST_ASIAN else word


def canonical_member_id(raw) -> str:
    """The id in its one canonical form (NFKC, stripped), or ValueError saying what is wrong."""
    text = unicodedata.normalize("NFKC", str(raw if raw is not None else ""))
    invisible = [c for c in text.strip() if c != " " and unicodedata.category(c) in _INVISIBLE_CATEGORIES]
    if invisible:
        names = ", ".join(sorted({f"U+{ord(ch):04X}" for ch in invisible}))
        raise ValueError(f"member_id contains invisible or combining characters ({names})")
    member_id = spreadsheets.check_member_id(text)
    confusable = sorted({ch for ch in member_id if ch in CONFUSABLE_LETTERS})
    if confusable:
        raise ValueError(
            f"member_id uses {', '.join(confusable)}: Cyrillic or Greek letters that look like Latin "
            "ones; type the id with Latin letters"
        )
    scripts = {s for s in map(_script, member_id) if s}
    if len(scripts) > 1:
        raise ValueError(f"member_id mixes scripts ({', '.join(sorted(scripts)).lower()}); use one")
    return member_id


def skeleton(member_id: str) -> str:
    return member_id.casefold().translate(_SEPARATORS).translate(_LOOKALIKE)


def _sql_skeleton(column):
    """skeleton() in SQL, for ids in the canonical form (only ASCII letters can look alike)."""
    expr = func.lower(column)
    for old, new in ((".", ""), ("-", ""), ("_", ""), ("o", "0"), ("l", "1"), ("i", "1"), ("|", "1")):
        expr = func.replace(expr, old, new)
    return expr


def lookalike_of(session: Session, member_id: str) -> str | None:
    """An existing member id that looks like member_id but is another id; None when there is none
    (or member_id itself exists). Compared exactly in Python: a case-insensitive database
    collation must not make "m0001" equal to "M0001"."""
    ids = session.scalars(
        select(Member.id).where(_sql_skeleton(Member.id) == skeleton(member_id)).limit(20)
    ).all()
    if member_id in ids:
        return None
    return next((other for other in ids if other != member_id), None)


def check_new_member_id(session: Session, raw) -> str:
    """canonical_member_id(), and ValueError when it is not a member yet but looks like one."""
    member_id = canonical_member_id(raw)
    other = lookalike_of(session, member_id)
    if other is not None:
        raise ValueError(
            f"member_id {member_id!r} looks like the existing member {other!r} (it differs only by "
            "case, O/0, l/1/I or . - _); use that id, or one that cannot be mistaken for it"
        )
    return member_id
