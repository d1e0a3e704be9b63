"""Switching the language keeps every choice made on a page (AppTest, Korean -> English -> Korean).

The browser holds a radio's, select box's or multiselect's choice as the label it shows. After a
switch it kept showing the old language's label, which matched none of the new options: radios
showed nothing selected and select boxes their Korean text, unless the server sent the choice again
in the new words. `shown_in_browser` reads what the browser shows from what the server sent."""

from __future__ import annotations

import pytest
from test_pages import flagged_result, sample_members, seed_kpi_results

LANG = "_lang_widget"


def switch(at, lang: str) -> None:
    at.radio(key=LANG).set_value(lang).run()
    assert not at.exception, [e.value for e in at.exception]


def widget(at, kind: str, key: str):
    return getattr(at, kind)(key=key)


def choose(at, choices) -> None:
    for kind, key, value in choices:
        element = widget(at, kind, key)
        (element.input(value) if kind == "text_input" else element.set_value(value)).run()
        assert not at.exception, [e.value for e in at.exception]


def label_of(element, kind: str):
    """The label(s) of the element's value in the language of its last run."""
    if kind == "multiselect":
        return [element.format_func(v) for v in element.value]
    return element.options[element.index]


def shown_in_browser(element, kind: str, held):
    """What a browser that showed `held` shows after this run: the value the server sent, if any."""
    proto = element.proto
    if not proto.set_value:
        return held
    return list(proto.raw_values) if kind == "multiselect" else proto.raw_value


def labels(at, choices) -> dict:
    return {key: label_of(widget(at, kind, key), kind) for kind, key, _ in choices if kind != "text_input"}


def assert_kept(at, choices, lang: str, held: dict | None = None) -> None:
    for kind, key, value in choices:
        element = widget(at, kind, key)
        assert element.value == value, f"{key} in {lang}: {element.value!r}, chosen {value!r}"
        if held is not None and kind != "text_input":
            shown = shown_in_browser(element, kind, held[key])
            assert shown == label_of(element, kind), f"{key}: the browser shows {shown!r} in {lang}"


CASES = {
    "verify": (
        "staff",
        [
            ("radio", "verify_mode", "upload"),
            ("text_input", "verify_new_member", "W0001"),
            ("selectbox", "verify_gender", "F"),
            ("radio", "verify_source_upload", "camera"),
        ],
    ),
    "review": (
        "staff",
        [
            ("selectbox", "review_order", "risk"),
            ("multiselect", "review_filter_flags", ["gender_mismatch"]),
        ],
    ),
    "members": (
        "staff",
        [
            ("text_input", "members_search", "M001"),
            ("selectbox", "members_gender", "F"),
            ("selectbox", "members_status", "in_review"),
        ],
    ),
    "kpis": (
        "manager",
        [
            ("selectbox", "kpi_version", "test-v1"),
            ("radio", "kpi_per", "day"),
        ],
    ),
    "retrain": ("data_scientist", [("radio", "retrain_photo_set", "folder")]),
    "users": (
        "admin",
        [
            ("selectbox", "users_pick", "staff_user"),
            ("selectbox", "users_role_staff_user", "manager"),
        ],
    ),
}


@pytest.mark.parametrize("page", list(CASES))
def test_a_language_switch_keeps_every_choice(app_env, open_page, page):
    seed_kpi_results(app_env) if page == "kpis" else sample_members(app_env)
    if page == "review":
        flagged_result(app_env, "M0011", flags=("gender_mismatch",))
        flagged_result(app_env, "M0003", flags=("uncertain_similarity",), similarity=0.41)
    role, choices = CASES[page]
    at = open_page(page, role=role, timeout=60)
    assert at.session_state["lang"] == "ko"
    choose(at, choices)
    assert_kept(at, choices, "ko")
    korean_title, held = at.title[0].value, labels(at, choices)

    switch(at, "en")
    assert at.title[0].value != korean_title  # the page is now in English
    assert_kept(at, choices, "en", held)
    held = labels(at, choices)
    switch(at, "ko")
    assert at.title[0].value == korean_title
    assert_kept(at, choices, "ko", held)


def test_the_shown_label_follows_the_language(app_env, open_page):
    """The kept choice is shown in the new language's words, not the old one's."""
    seed_kpi_results(app_env)
    at = open_page("kpis", role="manager", timeout=60)
    at.radio(key="kpi_per").set_value("day").run()
    switch(at, "en")
    radio = at.radio(key="kpi_per")
    assert radio.options == ["Batch", "Day", "Week", "Month"], radio.options
    assert shown_in_browser(radio, "radio", "일") == "Day"
