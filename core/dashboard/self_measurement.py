"""The KPI page's self-measurement section, the Home banner's line, and the pairs a reviewer opens.

    kpi_view(session, lang, model_version=None, pair_limit=100) -> SelfMeasurementView
    refit_view(session, lang, models_dir=None) -> RefitView   the Retrain page's re-fit comparison
    refit_approve_at(session, run_id, actor, models_dir=None) -> str   a registered candidate version
    pending_refit(versions, active, models_dir=None) -> str | None     its candidate, not promoted yet
    banner(session, lang) -> str | None          one line for managers and data scientists, or None
    header_banner(session, lang, role) -> str | None   the alert at the top of every page (ui.page)
    trend_frame(session) -> pandas.DataFrame      one row per completed measurement (the trend)

Everything comes from core.workflows.self_measurement; this module only words it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy.orm import Session

from core.i18n import t
from core.storage.schema import DATA_SCIENTIST, MANAGER
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
        if state.members is not None:
            return t(
                "selfm.alert_too_few_members",
                lang,
                members=f"{state.members:,}",
                n=f"{state.compared:,}",
                target=_rate_text(state.target),
            )
        return t("selfm.alert_too_few", lang, n=f"{state.compared:,}", target=_rate_text(state.target))
    if state.status == sm.NOT_MEASURED:
        return t("selfm.alert_not_measured", lang)
    return None


def banner(session: Session, lang: str) -> str | None:
    """The Home banner's line for managers and data scientists (None when all is well)."""
    return banner_text(sm.alert_state(session), lang)


BANNER_ROLES = (MANAGER, DATA_SCIENTIST)
BANNER_STATUSES = (sm.ABOVE_TARGET, sm.TOO_FEW)  # the bound passes the target, or cannot be set


def sees_banner(role: str | None) -> bool:
    return role in BANNER_ROLES


def header_banner(session: Session, lang: str, role: str | None) -> str | None:
    """The alert every page shows managers and data scientists at its top: the active version's
    measured bound passes the target, or its members are too few to bound it. None otherwise (all
    well, not measured yet, or another role)."""
    if not sees_banner(role):
        return None
    state = sm.alert_state(session)
    return banner_text(state, lang) if state.status in BANNER_STATUSES else None


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


# ----------------------------------------------------------------------------------------------
# The Retrain page's re-fit of approve_at on the members' own impostors


@dataclass
class RefitView:
    available: bool  # a re-fitted version can be written from this measurement
    message: str
    run_id: int | None = None
    parent: str | None = None
    rows: list[dict] = field(default_factory=list)  # figure, now, re-fitted
    plan: dict | None = None


def _pairs_text(k: int | None, n: int, upper: float | None, lang: str) -> str:
    if k is None:
        return "-"
    return t("selfm.refit.pairs_value", lang, k=f"{k:,}", n=f"{n:,}", upper=_rate_text(upper))


def _automation_text(figures: dict, lang: str) -> str:
    if not figures["n"]:
        return t("selfm.refit.no_results", lang)
    return t(
        "selfm.refit.automation_value",
        lang,
        rate=f"{100 * figures['rate']:.1f}%",
        automatic=f"{figures['automatic']:,}",
        n=f"{figures['n']:,}",
    )


def refit_view(session: Session, lang: str, models_dir=None) -> RefitView:
    """The latest measurement of the active version, and what re-fitting approve_at on it changes:
    the approve point, the measured cross-member pairs at or above it with their 95% bound, and the
    share of the version's results the score alone decides (before and after)."""
    version = sm.active_version(session)
    row = sm.latest(session, version) if version else None
    if row is None or not row.summary:
        return RefitView(False, t("selfm.refit.not_measured", lang, version=version or "-"))
    plan = sm.refit_plan(session, row.id, models_dir)
    before_cols = t("selfm.refit.col_now", lang, version=plan["parent"])
    after_cols = t("selfm.refit.col_after", lang)
    figure = t("selfm.refit.col_figure", lang)
    after_point = plan["approve_at_after"]
    rows = [
        {
            figure: t("selfm.refit.row_approve_at", lang),
            before_cols: f"{plan['approve_at_before']:.6f}",
            after_cols: f"{after_point:.6f}" if after_point is not None else "-",
        },
        {
            figure: t("selfm.refit.row_measured", lang),
            before_cols: _pairs_text(plan["k_before"], plan["compared"], plan["upper_before"], lang),
            after_cols: _pairs_text(plan["k_after"], plan["compared"], plan["upper_after"], lang),
        },
    ]
    before = sm.score_automation(session, plan["parent"], plan["approve_at_before"], plan["reject_below"])
    after = (
        sm.score_automation(session, plan["parent"], after_point, plan["reject_below"])
        if after_point is not None
        else None
    )
    rows.append(
        {
            figure: t("selfm.refit.row_automation", lang),
            before_cols: _automation_text(before, lang),
            after_cols: _automation_text(after, lang) if after else "-",
        }
    )
    if after_point is None:
        message = t(
            "selfm.refit.too_few",
            lang,
            n=f"{plan['compared']:,}",
            needed=f"{plan['pairs_needed']:,}",
            target=_rate_text(plan["target"]),
        )
        return RefitView(False, message, row.id, plan["parent"], rows, plan)
    message = t(
        "selfm.refit.based_on",
        lang,
        day=plan["measured_on"],
        version=plan["parent"],
        n=f"{plan['compared']:,}",
        target=_rate_text(plan["target"]),
    )
    return RefitView(True, message, row.id, plan["parent"], rows, plan)


def pending_refit(versions, active: str | None, models_dir=None) -> str | None:
    """The newest re-fitted candidate of the active version (registered, not promoted nor
    discarded), from the versions the Retrain page lists; None when there is none."""
    import json
    from pathlib import Path

    from core import config
    from core.training import registry

    if not active:
        return None
    folder = Path(models_dir or config.models_dir())
    for info in versions:  # newest first
        if info.status != registry.CANDIDATE or not info.on_disk:
            continue
        try:
            refit = json.loads((folder / info.version / "metadata.json").read_text()).get("refit") or {}
        except (OSError, ValueError):
            continue
        if refit.get("parent") == active:
            return info.version
    return None


def version_approve_at(version: str, models_dir=None) -> float:
    """The approve point a version's files carry (its policy)."""
    import json
    from pathlib import Path

    from core import config

    metadata = json.loads((Path(models_dir or config.models_dir()) / version / "metadata.json").read_text())
    policy = metadata.get("policy") or {}
    return float(policy.get("approve_at", (metadata.get("uncertain_band") or [0, 1])[1]))
