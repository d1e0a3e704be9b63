"""Model registry: which model versions exist, which one is active, promote / rollback / discard.

A version is a folder under config.models_dir() (core.verification.heads.save_version) and a row in the
`model_versions` table with its threshold, metrics, parameters and data summary. Exactly one row is
active: the version the dashboard and the API load. models/DEFAULT names the version a fresh clone
starts with; it registers itself as the active version the first time a database is used.

    active_version(session, models_dir=None) -> str      the active row (bootstraps from DEFAULT)
    current_version(session_factory, models_dir=None, max_age_s=2.0) -> str
        the same, cached a moment per process: what pages call on every run to notice a promotion
    register(session, version, actor, models_dir=None) -> row         a new candidate (inactive)
    promote(session, version, actor, expected_active=None) -> row     make it active
    rollback(session, version, actor, expected_active=None) -> row    back to an earlier version
    discard(session, version, actor) -> row          a candidate nobody wants: files removed
    list_versions(session) -> list[VersionInfo]      newest first, with their status

Each change is one transaction with its audit_log entry. Promotion and rollback are a
compare-and-set: "deactivate the version that is active now" must match exactly one row, or the
transaction is rolled back with ActiveChanged; so two people promoting at the same moment can never
leave two active versions (the second is told who won), and a page that showed version A as active
cannot switch away from B by mistake (expected_active).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from core import config
from core.errors import FaceVerifyError, ModelError
from core.storage import audit
from core.storage.schema import ModelVersion as VersionRow
from core.storage.schema import utcnow

REGISTER, PROMOTE, ROLLBACK, DISCARD, FORGET = (
    "register_model",
    "promote_model",
    "rollback_model",
    "discard_model",
    "forget_model",
)
TARGET = "model_version"
DISCARDED = "discarded"
ACTIVE, CANDIDATE, PREVIOUS = "active", "candidate", "previous"


class RegistryError(FaceVerifyError):
    code = "registry_error"


class UnknownVersion(RegistryError):
    code = "unknown_version"


class ActiveChanged(RegistryError):
    """Someone else changed the active version between reading it and switching."""

    code = "active_changed"


@dataclass
class VersionInfo:
    version: str
    status: str  # active / candidate / previous / discarded
    created_at: datetime | None
    created_by: str | None
    promoted_at: datetime | None
    promoted_by: str | None
    threshold: float | None
    metrics: dict
    params: dict
    data_summary: dict
    notes: str | None
    on_disk: bool


def _models_dir(models_dir: Path | None) -> Path:
    return Path(models_dir or config.models_dir())


def _metadata(models_dir: Path, version: str) -> dict:
    path = models_dir / version / "metadata.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"Model version {version!r} has no readable metadata at {path}: {exc}") from exc


def _row_values(models_dir: Path, version: str) -> dict:
    meta = _metadata(models_dir, version)
    band = meta.get("uncertain_band") or [None, None]
    created = meta.get("created_at")
    try:
        created_at = datetime.fromisoformat(created).replace(tzinfo=None) if created else utcnow()
    except ValueError:
        created_at = utcnow()
    return {
        "version": version,
        "kind": "verifier",
        "created_at": created_at,
        "threshold": meta.get("threshold"),
        "band_low": band[0],
        "band_high": band[1],
        "metrics": meta.get("metrics"),
        "params": meta.get("params"),
        "data_summary": {k: v for k, v in (meta.get("data") or {}).items() if not k.endswith("_people")},
        "path": str(models_dir / version),
    }


def _find(session: Session, version: str) -> VersionRow | None:
    return session.scalar(select(VersionRow).where(VersionRow.version == version))


def _active(session: Session) -> str | None:
    return session.scalar(
        select(VersionRow.version)
        .where(VersionRow.active.is_(True))
        .order_by(VersionRow.promoted_at.desc(), VersionRow.id.desc())
        .limit(1)
    )


def active_version(session: Session, models_dir: Path | None = None) -> str:
    """The active version; on a database that has none yet, models/DEFAULT's version becomes it.

    Raises ModelError when there is neither (no model trained or shipped).
    """
    current = _active(session)
    if current:
        return current
    from core.verification.heads import default_version

    models_dir = _models_dir(models_dir)
    version = default_version(models_dir)
    values = _row_values(models_dir, version)
    now = utcnow()
    try:
        row = _find(session, version)
        if row is None:
            session.add(
                VersionRow(**values, created_by="shipped", active=True, promoted_at=now, promoted_by="system")
            )
        else:
            session.execute(
                update(VersionRow)
                .where(VersionRow.version == version)
                .values(active=True, promoted_at=now, promoted_by="system")
            )
        audit.log(
            session, "system", REGISTER, TARGET, version, {"active": True, "from": "models/DEFAULT"}, at=now
        )
        session.commit()
    except (IntegrityError, OperationalError):
        session.rollback()  # another process registered it at the same moment
    current = _active(session)
    if not current:
        raise ModelError(f"No active model version could be set from {models_dir / 'DEFAULT'}.")
    return current


def register(
    session: Session, version: str, actor: str, models_dir: Path | None = None, notes: str | None = None
) -> VersionRow:
    """Record a saved version folder as a candidate (inactive). Commits, with its audit entry."""
    models_dir = _models_dir(models_dir)
    values = _row_values(models_dir, version)
    try:  # the version in use is registered first, so the list always has an active one
        active_version(session, models_dir)
    except ModelError:
        pass
    row = VersionRow(**values, created_by=actor, active=False, notes=notes)
    session.add(row)
    audit.log(
        session,
        actor,
        REGISTER,
        TARGET,
        version,
        {"metrics": {k: values["metrics"].get(k) for k in ("verification_accuracy", "gender_accuracy")}}
        if values["metrics"]
        else None,
    )
    session.commit()
    return row


def _check_switchable(session: Session, version: str, models_dir: Path) -> VersionRow:
    from core.verification import features

    row = _find(session, version)
    if row is None:
        raise UnknownVersion(f"There is no registered model version {version!r}.")
    if (row.notes or "").startswith(DISCARDED):
        raise RegistryError(f"Model version {version} was discarded and cannot be made active.")
    meta = _metadata(models_dir, version)
    for name in ("siamese.keras", "gender.keras"):
        if not (models_dir / version / name).is_file():
            raise ModelError(f"Model version {version} is missing {name} in {models_dir / version}.")
    from core.verification.networks import networks_of

    expected = features.features_version(networks_of(meta))  # for the networks the version names
    if meta.get("features_version") != expected:
        raise ModelError(
            f"Model version {version} was trained on features {meta.get('features_version')!r}; this code "
            f"computes {expected!r}, so it cannot be made active."
        )
    return row


def _switch(
    session: Session,
    version: str,
    actor: str,
    action: str,
    expected_active: str | None,
    models_dir: Path | None,
    older_only: bool,
    reason: str | None,
) -> VersionRow:
    models_dir = _models_dir(models_dir)
    current = active_version(session, models_dir)
    if expected_active is not None and expected_active != current:
        raise ActiveChanged(
            f"The active model is now {current}, not {expected_active}: someone changed it meanwhile. "
            "Nothing was switched; look at the versions again."
        )
    if version == current:
        raise RegistryError(f"Model version {version} is already the active one.")
    target = _check_switchable(session, version, models_dir)
    if older_only:
        active_row = _find(session, current)
        if active_row is not None and target.created_at and active_row.created_at:
            if target.created_at > active_row.created_at:
                raise RegistryError(
                    f"Model version {version} is newer than the active one; promote it instead."
                )
    # End the read, so the writes below start a transaction that sees (and locks) the newest rows.
    session.rollback()
    now = utcnow()
    try:
        off = session.execute(
            update(VersionRow)
            .where(VersionRow.version == current, VersionRow.active.is_(True))
            .values(active=False)
            .execution_options(synchronize_session=False)
        ).rowcount
        on = 0
        if off == 1:
            on = session.execute(
                update(VersionRow)
                .where(VersionRow.version == version, VersionRow.active.is_(False))
                .values(active=True, promoted_at=now, promoted_by=actor)
                .execution_options(synchronize_session=False)
            ).rowcount
        actives = session.scalar(select(func.count()).where(VersionRow.active.is_(True)))
        if off != 1 or on != 1 or actives != 1:
            session.rollback()
            now_active = _active(session)
            session.rollback()
            raise ActiveChanged(
                f"Someone else changed the active model meanwhile (it is now {now_active}); "
                f"{version} was not made active."
            )
        detail = {"from": current, "to": version}
        if reason:
            detail["reason"] = reason
        audit.log(session, actor, action, TARGET, version, detail, at=now)
        session.commit()
    except OperationalError as exc:  # SQLite: another writer held the database
        session.rollback()
        raise ActiveChanged(f"The registry was busy ({exc.orig}); nothing was switched, try again.") from exc
    _forget_cached()
    return _find(session, version)


def promote(
    session: Session,
    version: str,
    actor: str,
    expected_active: str | None = None,
    models_dir: Path | None = None,
    reason: str | None = None,
) -> VersionRow:
    """Make a registered version the active one (compare-and-set on the active one). Commits."""
    return _switch(session, version, actor, PROMOTE, expected_active, models_dir, False, reason)


def rollback(
    session: Session,
    version: str,
    actor: str,
    expected_active: str | None = None,
    models_dir: Path | None = None,
    reason: str | None = None,
) -> VersionRow:
    """Go back to an earlier registered version (older than the active one). Commits."""
    return _switch(session, version, actor, ROLLBACK, expected_active, models_dir, True, reason)


def discard(session: Session, version: str, actor: str, models_dir: Path | None = None) -> VersionRow:
    """A candidate nobody wants: marked discarded (kept in the list and the audit log), files removed."""
    models_dir = _models_dir(models_dir)
    row = _find(session, version)
    if row is None:
        raise UnknownVersion(f"There is no registered model version {version!r}.")
    if row.active:
        raise RegistryError(
            f"Model version {version} is the active one: promote or roll back to another first."
        )
    if (row.notes or "").startswith(DISCARDED):
        raise RegistryError(f"Model version {version} was already discarded.")
    default = models_dir / "DEFAULT"
    if default.is_file() and default.read_text().strip() == version:
        raise RegistryError(
            f"Model version {version} is the fresh-install default (models/DEFAULT); it stays."
        )
    now = utcnow()
    claimed = session.execute(
        update(VersionRow)
        .where(VersionRow.version == version, VersionRow.active.is_(False))
        .values(notes=f"{DISCARDED} by {actor} at {now:%Y-%m-%d %H:%M:%S} UTC", path=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        session.rollback()
        raise ActiveChanged(f"Model version {version} was made active meanwhile; it was not discarded.")
    audit.log(session, actor, DISCARD, TARGET, version, None, at=now)
    session.commit()
    folder = models_dir / version
    if folder.is_dir() and folder.resolve().parent == models_dir.resolve():
        shutil.rmtree(folder, ignore_errors=True)
    return _find(session, version)


def forget(
    session: Session, version: str, actor: str = "system", reason: str = "the run did not finish"
) -> None:
    """Remove the row of a version whose run failed after registering it (never the active one)."""
    session.rollback()
    gone = session.execute(
        VersionRow.__table__.delete().where(VersionRow.version == version, VersionRow.active.is_(False))
    ).rowcount
    if gone:
        audit.log(session, actor, FORGET, TARGET, version, {"reason": reason})
    session.commit()


def _status(row: VersionRow) -> str:
    if row.active:
        return ACTIVE
    if (row.notes or "").startswith(DISCARDED):
        return DISCARDED
    return PREVIOUS if row.promoted_at else CANDIDATE


def list_versions(session: Session, models_dir: Path | None = None) -> list[VersionInfo]:
    """Every registered version, newest first (the active one bootstrapped if need be)."""
    models_dir = _models_dir(models_dir)
    try:
        active_version(session, models_dir)
    except ModelError:
        pass
    rows = session.scalars(select(VersionRow).order_by(VersionRow.created_at.desc(), VersionRow.id.desc()))
    return [
        VersionInfo(
            version=r.version,
            status=_status(r),
            created_at=r.created_at,
            created_by=r.created_by,
            promoted_at=r.promoted_at,
            promoted_by=r.promoted_by,
            threshold=r.threshold,
            metrics=r.metrics or {},
            params=r.params or {},
            data_summary=r.data_summary or {},
            notes=r.notes,
            on_disk=(models_dir / r.version / "metadata.json").is_file(),
        )
        for r in rows
    ]


# ----------------------------------------------------------------------------------------------
# The active version as pages and services ask for it on every request

_cache: dict[tuple[str, str], tuple[float, str]] = {}
_cache_lock = threading.Lock()


def _forget_cached() -> None:
    with _cache_lock:
        _cache.clear()


def current_version(session_factory, models_dir: Path | None = None, max_age_s: float = 2.0) -> str:
    """active_version() read at most every max_age_s per process and database.

    A process that caches its loaded engine keyed by this string picks up a promotion made by
    anyone (another page, another process, the command line) within max_age_s.
    """
    models_dir = _models_dir(models_dir)
    bind = session_factory.kw.get("bind")
    key = (bind.url.render_as_string(hide_password=True) if bind is not None else "", str(models_dir))
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
        if hit and now - hit[0] < max_age_s:
            return hit[1]
    with session_factory() as session:
        version = active_version(session, models_dir)
    with _cache_lock:
        _cache[key] = (now, version)
    return version
