"""Labels: both languages complete and consistent, and every label the dashboard asks for exists."""

from __future__ import annotations

import re
import string

from conftest import ROOT

from core import i18n
from core.dashboard.access import PAGES
from core.dashboard.kpis import KPI_CHARTS
from core.i18n import EN, KO, flag_text, t
from core.storage.schema import BATCH_COMPLETED, MEMBER_STATUSES, ROLES
from core.verification.result import STATUSES

FILES = [ROOT / "Home.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "ui").glob("*.py"))]
FILES += sorted((ROOT / "core" / "dashboard").glob("*.py"))


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_catalogs_are_one_json_file_per_language():
    assert sorted(p.stem for p in (ROOT / "core" / "i18n").glob("*.json")) == sorted(i18n.LANGUAGES)
    assert all(isinstance(v, str) for catalog in i18n.STRINGS.values() for v in catalog.values())


def test_both_languages_have_the_same_keys_and_placeholders():
    assert set(EN) == set(KO), sorted(set(EN) ^ set(KO))
    for key in EN:
        assert _fields(EN[key]) == _fields(KO[key]), key


def test_korean_is_the_default_and_actually_korean():
    assert i18n.DEFAULT_LANG == "ko"
    assert t("verify.run") == "인증 실행"
    hangul = re.compile(r"[\uac00-\ud7a3]")
    untranslated = [k for k in KO if KO[k] == EN[k] and hangul.search(EN[k]) is None and len(EN[k]) > 12]
    assert not untranslated, untranslated


def test_every_label_used_in_the_pages_exists():
    used = set()
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r'(?:\bt|tr|ctx\.t)\(\s*"([a-z_0-9]+\.[a-z_0-9.]+)"', text))
    missing = sorted(k for k in used if k not in EN)
    assert not missing, missing


def test_labels_built_from_codes_exist():
    keys = [f"page.{p.key}" for p in PAGES] + [f"role.{r}" for r in ROLES]
    keys += [f"status.{s}" for s in STATUSES] + [f"member_status.{s}" for s in MEMBER_STATUSES]
    keys += [f"batch_status.{s}" for s in ("pending", "running", BATCH_COMPLETED, "interrupted", "failed")]
    keys += [f"kpi.chart.{c}" for c in KPI_CHARTS] + [f"kpi.no_points.{c}" for c in KPI_CHARTS]
    keys += [f"home.about.{p.key}" for p in PAGES if p.key != "home"]
    keys += [f"verify.decision.{s}" for s in ("auto_approved", "auto_rejected", "flagged")]
    from core.verification import result

    codes = [v for k, v in vars(result).items() if k.isupper() and isinstance(v, str) and v not in STATUSES]
    keys += [f"flag.{c}" for c in codes] + [f"flagtext.{c}" for c in codes]
    assert not [k for k in keys if k not in EN]


def test_formatting_never_breaks_a_page():
    assert t("review.backlog", "en", n=3, skipped=1) == "3 pair(s) waiting · 1 skipped by you"
    assert t("review.backlog", "ko") == KO["review.backlog"]  # missing figures: the text as it is
    assert t("no.such.key", "ko") == "no.such.key"
    assert t("verify.run", "fr") == "인증 실행"  # unknown language: the default
    text = flag_text("uncertain_similarity", "ko", similarity=0.52, low=0.4, high=0.6)
    assert text == "유사도 0.520이 판단이 애매한 구간 0.400–0.600에 있습니다."
    assert flag_text("uncertain_similarity", "en", detail="engine says so") == "engine says so"
    assert flag_text("something_new", "en", detail="the engine's words") == "the engine's words"
