"""Daily use in a real browser (Chromium), in Korean and English, at 1024x768 and 1440x900.

One browser; one signed-in context per language, reused across both sizes:
- a reload keeps the reviewer signed in, on the same page and the same pair (?item= kept), from the
  server-side sign-in the cookie names (HttpOnly, SameSite=Strict: no page script reads it); after
  signing out a reload shows the sign-in form;
- the review asks what the photos show (the label) apart from the decision buttons;
- the language switch keeps the choices made (the review label, the KPI period unit);
- the KPI charts are one per row below 1,200 px, their legends clear of the axis labels, nothing cut
  or overlapping (the role walk's checks);
- no English sentence in the Korean UI on the pages visited (Streamlit's own words listed as known);
- the member export is a one-time download of this sign-in: no /media address, refused without
  the sign-in's cookie and the second time.

Screenshots in artifacts/screenshots/daily/ (a failure keeps one named after its place).
"""

from __future__ import annotations

import contextlib
import re
from datetime import timedelta

import pytest
from conftest import USER_PASSWORD, engine_result
from test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LAYOUT_PROBLEMS_JS,
    SHOTS,
    SIZES,
    _open_first_member,
    _page_url,
    _require_chromium,
    _settle,
    _sign_in,
    _streamlit,
    _wait_images,
)
from test_korean_pages import english_sentences

pytestmark = pytest.mark.browser

DAILY = SHOTS / "daily"
LONG_BATCHES = (
    "Spring re-verification of the Busan members 2026-03",
    "Spring re-verification of the Busan members 2026-04",
    "B3",
)
# Words a browser shows that the app does not write: Streamlit's own, and the screen-reader texts of
# its date picker.
BROWSER_OWN = (
    "Press Enter to apply",
    "Drag and drop file here",
    "Browse files",
    "Choose an option",
    "Press the down arrow key to interact with the calendar",
    "Press the escape button to close the calendar",
    "Selected date range is from",
    "Selected date is",
)

CHART_PROBLEMS_JS = """(minShare) => {
  const main = document.querySelector('[data-testid="stMainBlockContainer"]')
            || document.querySelector('[data-testid="stMain"]');
  const style = getComputedStyle(main);  // the width the page's content gets (the block's padding aside)
  const width = main.getBoundingClientRect().width - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const problems = [];
  const overlap = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1
                         && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
  for (const [i, chart] of charts.entries()) {
    const box = chart.getBoundingClientRect();
    const name = 'chart ' + (i + 1);
    if (box.width < minShare * width) {
      const chain = [];
      for (let el = chart; el && el !== main; el = el.parentElement)
        chain.push((el.getAttribute('data-testid') || el.tagName) + ':' + Math.round(el.getBoundingClientRect().width));
      const svg = chart.querySelector('.main-svg');
      problems.push(`${name} is ${Math.round(box.width)} px of ${Math.round(width)}`
                    + ` (svg ${svg && svg.getAttribute('width')}; ${chain.join(' < ')})`);
    }
    const legend = chart.querySelector('.legend');
    if (legend) {
      const l = legend.getBoundingClientRect();
      for (const tick of chart.querySelectorAll('.xtick text, .ytick text, .g-xtitle text, .g-ytitle text')) {
        if (overlap(l, tick.getBoundingClientRect())) {
          problems.push(`${name}: the legend covers "${tick.textContent}"`); break;
        }
      }
    }
    for (const tick of chart.querySelectorAll('.xtick text')) {
      const t = tick.getBoundingClientRect();
      if (t.width > 1 && (t.left < box.left - 1 || t.right > box.right + 1))
        problems.push(`${name}: the label "${tick.textContent}" is cut`);
    }
  }
  return problems;
}"""


@pytest.fixture(scope="module")
def daily_dashboard(tmp_path_factory, dashboard_models):
    """`python -m ui.serve` over a database with the sample members, three finished batches of
    reviewed results (long names, for the KPI charts) and one flagged pair waiting for review."""
    _require_chromium()
    from core.dashboard import verify
    from core.storage.db import init_db, make_engine, session_factory
    from core.storage.photostore import PhotoStore
    from core.storage.schema import GALLERY, VERIFICATION, Batch, Member, Photo, utcnow
    from core.storage.schema import VerificationResult as ResultRow
    from core.storage.users import create_user
    from core.workflows import importer

    tmp = tmp_path_factory.mktemp("daily_use")
    url = f"sqlite:///{tmp / 'app.sqlite3'}"
    store = PhotoStore(tmp / "photos", fsync=False)
    engine = make_engine(url)
    init_db(engine)
    factory = session_factory(engine)
    with factory() as session:
        for name in ("ko", "en", "label"):  # one each: a sign-in switches to the user's saved language
            create_user(session, f"daily_{name}", USER_PASSWORD, "admin")
        importer.load_sample_members(session, actor="test", photo_store=store)
        members = session.query(Member).order_by(Member.id).all()
        now = utcnow()
        for i, name in enumerate(LONG_BATCHES):
            batch = Batch(
                name=name,
                source="page",
                created_by="test",
                created_at=now - timedelta(days=3 - i),
                model_version="test",
                status="done",
                n_items=6,
            )
            session.add(batch)
            session.flush()
            for j, member in enumerate(members[i * 6 : i * 6 + 6]):
                photo = {p.kind: p for p in session.query(Photo).filter_by(member_id=member.id, current=True)}
                same = j % 3 != 0
                session.add(
                    ResultRow(
                        member_id=member.id,
                        batch_id=batch.id,
                        gallery_photo_id=photo[GALLERY].id,
                        verification_photo_id=photo[VERIFICATION].id,
                        same_person=same,
                        similarity=0.8 if same else 0.1,
                        threshold=0.4,
                        band_low=0.1,
                        band_high=0.9,
                        registered_gender=member.gender,
                        predicted_gender=member.gender,
                        status="auto_approved" if same else "auto_rejected",
                        flags=[],
                        model_version="test",
                        latency_ms=80.0 + 10 * j,
                        ground_truth_same=same,
                        ground_truth_gender=member.gender,
                        decided_at=now,
                        decided_by="test",
                        created_at=batch.created_at,
                    )
                )
        session.commit()
        member = session.get(Member, "M0011")
        photos = {p.kind: p.id for p in member.photos if p.current}
        verify.record_single_result(
            session,
            "test",
            engine_result(
                "flagged", 0.45, flags=("gender_mismatch",), registered_gender="M", predicted_gender="F"
            ),
            "M0011",
            photos["gallery"],
            photos["verification"],
            "M",
        )
    engine.dispose()
    with _streamlit(tmp, url, dashboard_models, warm_engine=False) as (base, _pid):
        yield base, factory


@contextlib.contextmanager
def _kept_on_failure(page, name: str):
    try:
        yield
    except Exception:
        page.screenshot(path=DAILY / f"failure_{name}.png", full_page=True)
        raise


def _switch_language(page, to: str) -> None:
    from core.i18n import LANGUAGES

    page.locator('[data-testid="stSidebar"]').get_by_text(LANGUAGES[to], exact=True).click()
    _settle(page, timeout_ms=60000)


def _open(page, key: str, lang: str) -> None:
    from playwright.sync_api import expect

    from core.i18n import t

    page.locator('[data-testid="stSidebar"]').get_by_text(t(f"page.{key}", lang), exact=True).click()
    title = t("app.title" if key == "home" else f"page.{key}", lang)
    expect(page.get_by_role("heading", name=title).first).to_be_visible(timeout=60000)
    _settle(page, timeout_ms=60000)


def _english_in(page) -> list[str]:
    """Sentences without Hangul in what the page shows (main area and sidebar)."""
    text = page.evaluate(
        """() => ['stMain', 'stSidebar'].map(id => document.querySelector(`[data-testid="${id}"]`)?.innerText || '')
                 .join('\\n')"""
    )
    return [s for s in english_sentences(text.splitlines()) if not any(own in s for own in BROWSER_OWN)]


def _item_of(url: str) -> str | None:
    found = re.search(r"[?&]item=(\d+)", url)
    return found.group(1) if found else None


def _check_review(page, lang: str) -> None:
    """What the photos show (the label) is asked apart from the decision buttons."""
    from playwright.sync_api import expect

    from core.i18n import t

    label = page.get_by_role("radiogroup", name=t("review.label", lang))
    expect(label).to_be_visible(timeout=30000)
    assert label.get_by_role("radio").count() == 3
    for decision in ("review.approve", "review.reject"):  # the decision is asked by buttons of its own
        expect(page.get_by_role("button", name=t(decision, lang)).first).to_be_visible()
    assert label.get_by_role("button").count() == 0


def _check_kpis(page, lang: str, width: int, where: str) -> list[str]:
    """The period unit kept across a language switch; the charts one per row below 1,200 px, legends
    clear of the axis labels, batch names not cut."""
    from playwright.sync_api import expect

    from core.i18n import LANGUAGES, t

    other = next(code for code in LANGUAGES if code != lang)
    problems = []
    unit = page.get_by_role("radiogroup", name=t("kpi.per", lang))
    unit.get_by_text(t("kpi.per.week", lang), exact=True).click()
    _settle(page, timeout_ms=60000)
    _switch_language(page, other)
    try:
        expect(page.get_by_role("radio", name=t("kpi.per.week", other), exact=True)).to_be_checked(
            timeout=15000
        )
    except AssertionError:
        problems.append(f"{where}: the KPI period unit was lost switching to {other}")
    _switch_language(page, lang)
    try:
        expect(page.get_by_role("radio", name=t("kpi.per.week", lang), exact=True)).to_be_checked(
            timeout=15000
        )
    except AssertionError:
        problems.append(f"{where}: the KPI period unit was lost switching back to {lang}")
    unit = page.get_by_role("radiogroup", name=t("kpi.per", lang))
    unit.get_by_text(t("kpi.per.batch", lang), exact=True).click()  # the batch names on the axis
    _settle(page, timeout_ms=60000)
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
                 .every(chart => chart.querySelector('.main-svg'))""",
        timeout=30000,
    )
    page.wait_for_timeout(500)  # plotly's own transition
    charts = page.locator('[data-testid="stPlotlyChart"]').count()
    if charts < 3:
        problems.append(f"{where}: only {charts} KPI charts drawn")
    # Below 1,200 px one chart a row (nearly the whole width); wider, at least a third each.
    share = 0.9 if width < 1200 else 0.3  # a bordered box round each chart takes its padding
    problems += [f"{where}: {p}" for p in page.evaluate(CHART_PROBLEMS_JS, share)]
    return problems


def _check_export(page, context, browser, base: str, lang: str) -> None:
    """Members: the export is a link to the dashboard's one-time route, fetched once with this
    sign-in's cookie; refused without it; no /media address holds a ZIP."""
    from playwright.sync_api import expect

    from core.dashboard import downloads
    from core.i18n import t

    _open(page, "members", lang)
    _open_first_member(page, lang)
    member = re.search(
        r"(\S+)$",
        page.get_by_role(
            "heading", name=re.compile("^" + re.escape(t("members.detail", lang, member="\0").split("\0")[0]))
        ).first.inner_text(),
    ).group(1)
    page.get_by_role("button", name=t("members.export", lang, member=member)).click()
    link = page.get_by_role("link", name=t("members.export_download", lang, member=member))
    expect(link).to_be_visible(timeout=60000)
    href = link.get_attribute("href")
    assert href and downloads.DOWNLOAD_ROUTE in href and "/media/" not in href, href
    media = page.evaluate(
        """() => [...document.querySelectorAll('[src*="/media/"], [href*="/media/"]')]
                 .map(el => el.src || el.href)"""
    )
    stranger = browser.new_context()
    try:
        for address in media:  # whatever /media holds (photos are inline data), never the ZIP
            answer = stranger.request.get(address)
            assert "zip" not in (answer.headers.get("content-type") or ""), address
        absolute = href if href.startswith("http") else base + href
        refused = stranger.request.get(absolute)  # no sign-in cookie: refused, and the code is spent
        assert refused.status == 403
    finally:
        stranger.close()
    assert context.request.get(absolute).status == 403, "a spent code answers nothing"
    page.get_by_role("button", name=t("members.export", lang, member=member)).click()
    _settle(page, timeout_ms=60000)
    href = page.get_by_role("link", name=t("members.export_download", lang, member=member)).get_attribute(
        "href"
    )
    absolute = href if href.startswith("http") else base + href
    got = context.request.get(absolute)
    assert got.status == 200 and got.headers["content-type"] == "application/zip"
    assert got.body()[:2] == b"PK" and f"member-{member}.zip" in got.headers["content-disposition"]
    assert context.request.get(absolute).status == 403, "used once"


def test_daily_use_in_both_languages_at_both_sizes(daily_dashboard):
    from playwright.sync_api import expect, sync_playwright
    from sqlalchemy import select

    from core.dashboard import downloads
    from core.i18n import t
    from core.storage import sign_in_sessions
    from core.storage.schema import AuditEntry, User

    base, factory = daily_dashboard
    DAILY.mkdir(parents=True, exist_ok=True)
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for lang in ("ko", "en"):
                context = browser.new_context(viewport={"width": 1024, "height": 768})
                page = context.new_page()
                sidebar = page.locator('[data-testid="stSidebar"]')
                try:
                    with _kept_on_failure(page, f"{lang}_reload"):
                        # Signed in on the review queue; a reload keeps the user, the page and the pair.
                        page.goto(_page_url(base, "pages/2_Review_Queue.py", lang))
                        _sign_in(page, f"daily_{lang}", lang)
                        heading = page.get_by_role("heading", name=re.compile(r"M0011"))
                        expect(heading).to_be_visible(timeout=60000)
                        item = _item_of(page.url)
                        assert item, page.url
                        cookie = next(c for c in context.cookies() if c["name"] == "faceverify_sign_in")
                        assert (
                            cookie["sameSite"] == "Strict" and cookie["path"] == "/" and not cookie["secure"]
                        )
                        assert cookie["httpOnly"], "no page script may read the sign-in token"
                        assert "faceverify_sign_in" not in page.evaluate("document.cookie")
                        page.reload()
                        expect(sidebar.get_by_text(t("auth.sign_out", lang))).to_be_visible(timeout=60000)
                        _settle(page, timeout_ms=60000)
                        expect(heading).to_be_visible(timeout=60000)
                        assert _item_of(page.url) == item and "/Review_Queue" in page.url, page.url
                        assert page.get_by_label(t("auth.password", lang), exact=True).count() == 0
                    for width, height in SIZES:
                        page.set_viewport_size({"width": width, "height": height})
                        where = f"{lang}_{width}x{height}"
                        with _kept_on_failure(page, f"{where}_review"):
                            _open(page, "review", lang)
                            _wait_images(page, timeout_ms=30000)
                            _check_review(page, lang)
                            problems += [f"{where} review: {x}" for x in page.evaluate(LAYOUT_PROBLEMS_JS)]
                            if lang == "ko":
                                problems += [f"{where} review: English {s!r}" for s in _english_in(page)]
                            page.screenshot(path=DAILY / f"{where}_review.png")
                        with _kept_on_failure(page, f"{where}_kpis"):
                            _open(page, "kpis", lang)
                            problems += _check_kpis(page, lang, width, where)
                            problems += [f"{where} kpis: {x}" for x in page.evaluate(LAYOUT_PROBLEMS_JS)]
                            if lang == "ko":
                                problems += [f"{where} kpis: English {s!r}" for s in _english_in(page)]
                            page.screenshot(path=DAILY / f"{where}_kpis.png", full_page=True)
                        if lang == "ko":
                            for key in ("home", "members"):
                                with _kept_on_failure(page, f"{where}_{key}"):
                                    _open(page, key, lang)
                                    problems += [f"{where} {key}: English {s!r}" for s in _english_in(page)]
                    with _kept_on_failure(page, f"{lang}_export"):
                        page.set_viewport_size({"width": 1024, "height": 768})
                        if lang == "en":
                            _check_export(page, context, browser, base, lang)
                    with _kept_on_failure(page, f"{lang}_sign_out"):
                        # Sign out: the cookie is cleared and a reload shows the sign-in form.
                        sidebar.get_by_role("button", name=t("auth.sign_out", lang)).click()
                        expect(page.get_by_text(t("auth.signed_out", lang))).to_be_visible(timeout=30000)
                        page.wait_for_timeout(500)
                        assert "faceverify_sign_in" not in {c["name"] for c in context.cookies()}
                        page.reload()
                        expect(page.get_by_label(t("auth.password", lang), exact=True)).to_be_visible(
                            timeout=60000
                        )
                        assert sidebar.get_by_text(t("auth.sign_out", lang)).count() == 0
                finally:
                    context.close()
        finally:
            browser.close()
    with factory() as session:
        actions = session.scalars(
            select(AuditEntry.action).where(AuditEntry.actor.in_(("daily_ko", "daily_en")))
        ).all()
        rows = session.scalars(
            select(sign_in_sessions.SignInSession)
            .join(User, User.id == sign_in_sessions.SignInSession.user_id)
            .where(User.username.in_(("daily_ko", "daily_en")))
        ).all()
    assert actions.count("login") == 2 and actions.count(sign_in_sessions.RESTORE) == 2, actions
    assert actions.count("logout") == 2 and actions.count(downloads.DOWNLOAD) == 1, actions
    assert len(rows) == 2 and all(r.end_reason == sign_in_sessions.SIGNED_OUT for r in rows)
    assert not problems, "\n".join(problems)


def test_a_label_chosen_before_a_language_switch_is_kept(daily_dashboard):
    from playwright.sync_api import expect, sync_playwright

    from core.i18n import t

    base, _factory = daily_dashboard
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1024, "height": 768})
            page = context.new_page()
            with _kept_on_failure(page, "review_label_language"):
                page.goto(_page_url(base, "pages/2_Review_Queue.py", "ko"))
                _sign_in(page, "daily_label", "ko")
                label = page.get_by_role("radiogroup", name=t("review.label", "ko"))
                label.get_by_text(t("review.label.different", "ko"), exact=True).click()
                _settle(page)
                _switch_language(page, "en")
                chosen = page.get_by_role("radio", name=t("review.label.different", "en"), exact=True)
                expect(chosen).to_be_checked(timeout=15000)
        finally:
            browser.close()
