"""The KPI page's self-measurement section, the Home banner's line, and the pairs a reviewer opens.

    kpi_view(session, lang, model_version=None, pair_limit=100) -> SelfMeasurementView
    refit_approve_at(session, run_id, actor, models_dir=None) -> str   a registered candidate version
    banner(session, lang) -> str | None          one line for managers and data scientists, or None
    trend_frame(session) -> pandas.DataFrame      one row per completed measurement (the trend)

Everything comes from core.workflows.self_measurement; this module only words it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy.orm import Session

from core.i18n import t
from core.workflows import self_measurement as sm


def _rate_text(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.3g}%" if value >= 1e-4 else f"{value:.2g}"


@dataclass
class PairLine:
    member_a: str
    member_b: str
    photo_a_id: int
    photo_b_id: int
    gender: str
    similarity: float


@dataclass
class SelfMeasurementView:
    status: str  # core.workflows.self_measurement alert status
    headline: str
    per_gender: list[str] = field(default_factory=list)
    fnmr_line: str | None = None
    alert: str | None = None
    measured_on: str | None = None
    model_version: str | None = None
    pairs: list[PairLine] = field(default_factory=list)
    pairs_note: str | None = None
    run_id: int | None = None
    summary: dict | None = None


def _gender_name(g: str, lang: str) -> str:
    return t("selfm.gender_f" if g == "F" else "selfm.gender_m", lang)


def kpi_view(
    session: Session, lang: str, model_version: str | None = None, pair_limit: int = 100
) -> SelfMeasurementView:
    """What the KPI page shows about the latest measurement of the active (or given) version."""
    state = sm.alert_state(session, model_version)
    row = sm.latest(session, state.model_version) if state.model_version else None
    if row is None or not row.summary:
        return SelfMeasurementView(
            sm.NOT_MEASURED, t("selfm.not_measured", lang), alert=banner_text(state, lang)
        )
    summary = row.summary
    overall = summary["all"]["at_approve"]
    if state.status == sm.TOO_FEW:
        headline = t(
            "selfm.too_few",
            lang,
            k=f"{overall['k']:,}",
            n=f"{overall['n']:,}",
            members=f"{summary['members']:,}",
            needed=f"{summary['pairs_needed']:,}",
        )
    else:
        headline = t(
            "selfm.headline",
            lang,
            k=f"{overall['k']:,}",
            n=f"{overall['n']:,}",
            upper=_rate_text(overall["upper"]),
        )
    per_gender = []
    for g, figures in summary["genders"].items():
        rate = figures["at_approve"]
        per_gender.append(
            t(
                "selfm.gender_line",
                lang,
                gender=_gender_name(g, lang),
                k=f"{rate['k']:,}",
                n=f"{rate['n']:,}",
                upper=_rate_text(rate["upper"]),
                near=f"{figures['near']:,}",
            )
        )
    fnmr = summary.get("fnmr") or {}
    fnmr_line = (
        t(
            "selfm.fnmr_line",
            lang,
            k=f"{fnmr['k']:,}",
            n=f"{fnmr['n']:,}",
            upper=_rate_text(fnmr.get("upper")),
            reject_below=f"{summary['reject_below']:.3f}",
        )
        if fnmr.get("n")
        else t("selfm.fnmr_none", lang)
    )
    pairs = [
        PairLine(p.member_a_id, p.member_b_id, p.photo_a_id, p.photo_b_id, p.gender, p.similarity)
        for p in sm.pairs_at_approve(session, row.id, pair_limit)
    ]
    note = None
    if overall["k"] > len(pairs):
        note = t("selfm.pairs_capped", lang, shown=f"{len(pairs):,}", k=f"{overall['k']:,}")
    return SelfMeasurementView(
        state.status,
        headline,
        per_gender,
        fnmr_line,
        banner_text(state, lang),
        row.measured_on,
        row.model_version,
        pairs,
        note,
        row.id,
        summary,
    )


def banner_text(state: sm.AlertState, lang: str) -> str | None:
    if state.status == sm.ABOVE_TARGET:
        return t(
            "selfm.alert_above",
            lang,
            upper=_rate_text(state.worst_upper),
            gender=_gender_name(state.worst_gender, lang) if state.worst_gender else "",
            target=_rate_text(state.target),
        )
    if state.status == sm.TOO_FEW:
        return t("selfm.alert_too_few", lang, n=f"{state.compared:,}", target=_rate_text(state.target))
    if state.status == sm.NOT_MEASURED:
        return t("selfm.alert_not_measured", lang)
    return None


def banner(session: Session, lang: str) -> str | None:
    """The Home banner's line for managers and data scientists (None when all is well)."""
    return banner_text(sm.alert_state(session), lang)


def trend_frame(session: Session) -> pd.DataFrame:
    """One row per completed measurement, oldest first: the trend the KPI page charts."""
    rows = []
    for row in sm.history(session):
        s = row.summary or {}
        for g, figures in (s.get("genders") or {}).items():
            rate = figures["at_approve"]
            rows.append(
                {
                    "measured_on": row.measured_on,
                    "model_version": row.model_version,
                    "gender": g,
                    "compared": rate["n"],
                    "at_approve": rate["k"],
                    "fmr": rate["rate"],
                    "fmr_upper": rate["upper"],
                }
            )
    return pd.DataFrame(
        rows, columns=["measured_on", "model_version", "gender", "compared", "at_approve", "fmr", "fmr_upper"]
    )


def pair_photos(session: Session, store, pair: PairLine, viewer: str) -> tuple[bytes | None, bytes | None]:
    """Both photos of a pair for a reviewer to look at; each member's view is audited (commits)."""
    from core.storage import audit
    from core.storage.photostore import PhotoNotFound
    from core.storage.schema import Photo

    out = []
    for member_id, photo_id in ((pair.member_a, pair.photo_a_id), (pair.member_b, pair.photo_b_id)):
        photo = session.get(Photo, photo_id)
        data = None
        if photo is not None and photo.member_id == member_id:
            try:
                data = store.read(photo.stored_path)
            except PhotoNotFound:
                data = None
            audit.log(session, viewer, audit.VIEW_MEMBER, "member", member_id, {"via": "self_measurement"})
        out.append(data)
    session.commit()
    return out[0], out[1]


def record_verdict(session: Session, pair: PairLine, same_person: bool, reviewer: str) -> None:
    sm.record_verdict(session, pair.member_a, pair.member_b, same_person, reviewer)


def refit_approve_at(session: Session, run_id: int, actor: str, models_dir=None, new_version=None) -> str:
    """Re-fit approve_at on a measurement and register the new version as a candidate (not active):
    the data scientist compares it and promotes it, or rolls back, through the registry."""
    from core.training import registry

    name = sm.write_refit_version(session, run_id, actor, models_dir, new_version)
    parent = session.get(sm.SelfMeasurement, run_id).model_version
    registry.register(
        session, name, actor, models_dir, notes=f"approve_at re-fitted on members from {parent}"
    )
    return name


def start_measurement(session: Session, actor: str) -> str:
    """A measurement of the active version on this database, in the background (core.jobs)."""
    from core import jobs

    url = session.get_bind().engine.url.render_as_string(hide_password=False)
    return jobs.submit_self_measurement(actor, database_url=url)
