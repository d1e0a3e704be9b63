"""Korean all through: every page rendered in Korean, signed in as an administrator with the
sample members and a flagged pair, shows no sentence without Hangul.

A "sentence" is a line of visible text (titles, messages, captions, widget labels, help, options,
table headers) holding two or more Latin words. Names that are not sentences (member ids, model
versions, file names, units) are allowed; so are Streamlit's own texts the app cannot translate.
"""

from __future__ import annotations

import re

import pytest
from test_pages import flagged_result, sample_members

HANGUL = re.compile(r"[\uac00-\ud7a3]")
LATIN_WORD = re.compile(r"\b[A-Za-z][a-z]{2,}\b")  # "Hello", "people"; not "M0011", "KB", "ID"
# Streamlit's own words, which the app cannot put in its language.
STREAMLIT_OWN = ("Press Enter to apply", "Drag and drop file here", "Browse files", "Choose an option")


def sentences_without_hangul(at) -> list[str]:
    parts: list[str] = []
    for kind in (
        "title",
        "header",
        "subheader",
        "markdown",
        "caption",
        "error",
        "warning",
        "info",
        "success",
    ):
        parts += [str(e.value) for e in getattr(at, kind)]
    for kind in (
        "button",
        "checkbox",
        "radio",
        "selectbox",
        "multiselect",
        "text_input",
        "text_area",
        "toggle",
    ):
        for widget in getattr(at, kind):
            parts.append(str(getattr(widget, "label", "") or ""))
            parts.append(str(getattr(widget.proto, "help", "") or ""))
            parts += [str(o) for o in getattr(widget, "options", []) or []]
    parts += [m.label for m in at.metric]
    for frame in at.dataframe:
        parts += [str(c) for c in frame.value.columns]
    return english_sentences(parts)


def english_sentences(parts: list[str]) -> list[str]:
    """The sentences among these texts that hold two or more Latin words and no Hangul (also used on
    the text a real browser shows, tests/e2e)."""
    bad = []
    for part in parts:
        for line in part.splitlines():
            line = re.sub(
                r":material/[a-z_]+:|`[^`]*`|https?://\S+|\S+\.(?:py|csv|zip|jpg|png|json)\b", "", line
            )
            # A Korean sentence with an English one glued on is still English: judge each sentence.
            for sentence in re.split(r"(?<=[.!?;:])\s+|\s+[·—]\s+", line):
                if HANGUL.search(sentence) or any(own in sentence for own in STREAMLIT_OWN):
                    continue
                if len(LATIN_WORD.findall(sentence)) >= 2:
                    bad.append(sentence.strip())
    return bad


@pytest.mark.parametrize("page", ["home", "verify", "review", "members", "kpis", "retrain", "users"])
def test_every_page_in_korean_has_no_english_sentence(app_env, open_page, page):
    sample_members(app_env)
    flagged_result(app_env, "M0011", flags=("gender_mismatch",))
    at = open_page(page, role="admin", lang="ko", timeout=60)
    assert sentences_without_hangul(at) == []


def test_first_administrator_form_in_korean(app_env):
    from conftest import signed_in_app
    from sqlalchemy import delete

    from core.storage.schema import User

    with app_env.session() as session:
        session.execute(delete(User))
        session.commit()
    at = signed_in_app("home", role=None, lang="ko")
    assert sentences_without_hangul(at) == []
    at.text_input[1].input("short")
    at.text_input[2].input("short")
    at.button[0].click().run()
    assert at.error and sentences_without_hangul(at) == []


def test_verify_answers_a_text_file_named_jpg_in_korean(app_env, open_page):
    at = open_page("verify", role="admin", lang="ko", timeout=60)
    at.radio(key="verify_mode").set_value("upload").run()
    at.text_input(key="verify_new_member").input("W0001").run()
    at.selectbox(key="verify_gender").set_value("F").run()
    at.file_uploader(key="verify_gallery_file").set_value(
        ("g.jpg", b"this is not a photo\n" * 20, "image/jpeg")
    ).run()
    at.file_uploader(key="verify_verification_file").set_value(
        ("v.jpg", b"neither is this one\n" * 20, "image/jpeg")
    ).run()
    if at.button(key="verify_run").proto.disabled is False:
        at.button(key="verify_run").click().run(timeout=120)
    assert not at.exception
    assert sentences_without_hangul(at) == []


def test_training_data_problems_in_korean():
    import numpy as np

    from core.dashboard.retrain import problem_text
    from core.training.pipeline import data_problems

    problems = data_problems(np.array(["a", "a", "b"]), np.array(["M", "M", "M"]))
    texts = [problem_text(p, "ko") for p in problems]
    assert texts and all(HANGUL.search(t) for t in texts), texts
    english = [problem_text(p, "en") for p in problems]
    assert not any("1 people" in t for t in english), english
