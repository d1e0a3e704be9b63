"""A selfie against the whole profile: verify_profile_member (a new member is enrolled with all its
photos at once)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.storage.photostore import PhotoNotFound, PhotoStoreBackend
from core.storage.schema import (
    GALLERY,
    MEMBER_IN_REVIEW,
    MEMBER_VERIFIED,
    VERIFICATION,
    Embedding,
    Member,
    Photo,
    ProfilePhoto,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification import profile as rule
from core.verification.networks import DEFAULT_NETWORKS
from core.verification.result import AUTO_APPROVED, FLAGGED, Face
from core.workflows import batches, member_photos, profile_rows, profile_rule, search, verification
from core.workflows.profile_rows import max_photos, profile_of
from core.workflows.profiles import analyse
from core.workflows.profiles.badge import refresh_badge
from core.workflows.profiles.checks import (
    _store_states,
    another_member_flag,
    member_result,
    other_members,
)
from core.workflows.profiles.common import (
    ProfileFull,
    RunOnEngine,
    SamePhotoTwice,
    _direct,
)
from core.workflows.verification import PhotoInput


@dataclass
class ProfileVerified:
    profile: rule.ProfileVerification
    verified: verification.Verified
    member_id: str

    @property
    def result_id(self) -> int:
        return self.verified.result_id


# ----------------------------------------------------------------------------------------------
# A selfie against the whole profile


def verify_profile_member(
    session_factory: sessionmaker,
    store: PhotoStoreBackend,
    actor: str,
    member_id: str,
    selfie: PhotoInput,
    profile_photos: list[PhotoInput],
    engine,
    *,
    gender: str | None = None,
    source: str = batches.API_SINGLE,
    enrol: bool = True,
    challenge_token: str | None = None,
    storing=None,
    run_on_engine: RunOnEngine | None = None,
) -> ProfileVerified:
    """Verify a selfie against the member's profile and store it (see the module's docstring).

    profile_photos: a new member's photos, in order (the first is the main photo); for an
    existing member, leave it empty (its stored profile is used) or send photos already in it.
    Raises the use case's VerifyError kinds (nothing stored), ProfileFull, SamePhotoTwice.
    """
    run_on_engine = run_on_engine or _direct(engine)
    if engine is not None:
        search.register_engine(engine)
    limit = max_photos()
    with session_factory() as session:
        exists = session.get(Member, member_id) is not None
        stored_rows = profile_of(session, member_id, public=True) if exists else []
        if exists and not stored_rows:
            main_photo = member_photos.current_photo(session, member_id, GALLERY)
            if main_photo is not None:
                stored_rows = [profile_rows.ensure_main_photo(session, member_id, main_photo)]
                session.commit()
        stored = [(r.photo.sha256, r.photo.stored_path) for r in stored_rows]
        reusable = _stored_faces(session, engine, member_id, stored_rows) if exists else {}
        session.rollback()
    if exists:
        known = {sha for sha, _ in stored}
        for photo in profile_photos:
            sha = photo.sha256 or (hashlib.sha256(photo.data).hexdigest() if photo.data is not None else None)
            if sha is not None and sha not in known:
                raise verification.GalleryLocked(
                    f"Member {member_id!r} already exists, so its profile is not replaced by a verification: "
                    f"add a photo on its own (API: POST /v1/members/{member_id}/profile-photos); it is "
                    "checked against the member's verified face."
                )
        if not stored:
            raise verification.PhotoRequired(f"Member {member_id!r} has no profile photo.", which=GALLERY)
        main = PhotoInput(GALLERY, sha256=stored[0][0])
        keys = [sha for sha, _ in stored]
        # Photos checked before are not read nor analysed again (their stored check is reused);
        # the others are read now, and analysed once each beside the selfie.
        others = {sha: _read_stored(store, path) for sha, path in stored[1:] if sha not in reusable}
        new_photos: list[PhotoInput] = []
    else:
        if len(profile_photos) > limit:
            raise ProfileFull(
                f"A profile holds at most {limit} photos; {len(profile_photos)} were given.", max=limit
            )
        shas = [hashlib.sha256(p.data).hexdigest() for p in profile_photos if p.data is not None]
        if len(set(shas)) != len(shas):
            raise SamePhotoTwice("The same photo was given twice for the profile.")
        main = profile_photos[0] if profile_photos else PhotoInput(GALLERY)
        main.which = GALLERY
        new_photos = list(profile_photos[1:])
        others = {hashlib.sha256(p.data).hexdigest(): p.data for p in new_photos if p.data is not None}
        keys = [None, *others]  # the main photo's hash once its bytes are known
        for photo in new_photos:
            if photo.data is None:
                raise verification.PhotoRequired(
                    "A new member's profile photos must be uploaded.", which=GALLERY
                )

    holder: dict[str, rule.ProfileVerification] = {}

    def run_engine(gallery_bytes, selfie_bytes, registered_gender, challenge):
        main_sha = hashlib.sha256(gallery_bytes).hexdigest()
        order = [main_sha, *keys[1:]]
        datas = {**others, main_sha: gallery_bytes}

        def work(engine_now):
            stored_now = analyse.stored_analyses(
                engine_now,
                [face for face, version in reusable.values() if version == engine_now.model_version],
            )
            for sha, path in stored[1:]:  # a stored check of another model version: analysed again
                if sha not in stored_now and sha not in datas:
                    datas[sha] = _read_stored(store, path)
            checked, counts = analyse.verify_photos(
                engine_now,
                selfie_bytes,
                order,
                datas,
                stored_now,
                registered_gender,
                profile_rule=profile_rule.rule_for(engine_now),
                challenge=challenge,
                max_photos=limit,
            )
            holder["profile"] = checked
            result = member_result(engine_now, checked, registered_gender, challenge)
            result.checks["profile_photos_analysed"] = counts  # the others' stored checks reused
            return result

        return run_on_engine(work)

    # The other photos' files first (content-addressed, idempotent), their rows with the result.
    paths: list[tuple[PhotoInput, str]] = []
    for photo in new_photos:
        try:
            paths.append((photo, store.put(photo.data, photo.ext).relative_path))
        except OSError:
            raise verification.StoreUnavailable(
                "The photo store cannot save the photo; nothing was stored."
            ) from None

    def on_store(session: Session, member, photo_ids: dict[str, int], row) -> None:
        now = utcnow()
        if paths:  # a new member: the other photos join the profile after the main one
            for position, (photo, path) in enumerate(paths, start=2):
                sha = hashlib.sha256(photo.data).hexdigest()
                photo_row = Photo(
                    member_id=member_id,
                    kind=GALLERY,
                    sha256=sha,
                    stored_path=path,
                    size_bytes=len(photo.data),
                    source=source,
                    current=False,  # the member's current gallery photo is the main one
                    created_at=now,
                    width=photo.width,
                    height=photo.height,
                )
                session.add(photo_row)
                session.flush()
                session.add(
                    ProfilePhoto(
                        member_id=member_id, position=position, photo_id=photo_row.id, created_at=now
                    )
                )
            session.flush()
        checked = holder["profile"]
        _store_states(session, member_id, checked, now)
        extra = []
        for photo in checked.photos:
            others = other_members(session, checked.model_version, photo, member_id, checked.rule.approve_at)
            if others:
                flag = another_member_flag(photo.position, others, "gallery")
                extra.append(
                    {"code": flag.code, "reason": flag.reason, "photo": flag.photo, "params": flag.params}
                )
        if extra:
            row.flags = list(row.flags or []) + extra
            if row.status == AUTO_APPROVED:
                row.status = FLAGGED
                session.execute(
                    update(Member)
                    .where(Member.id == member_id, Member.status == MEMBER_VERIFIED)
                    .values(status=MEMBER_IN_REVIEW)
                )
        # Every photo's embedding (the member's face in it), so the photos that show the member
        # join the 1:N index beside the main one once this commits; and its perceptual hashes, for
        # the reuse checks and so that the next verification reuses this check (_stored_faces).
        search.store_embeddings_of(session, checked.model_version, [p.analysis for p in checked.photos])
        _remember_hashes(session, member_id, checked)
        search.refresh_after_commit(session, member_id)
        # An approved verification does not settle a photo that waits for a reviewer: the member
        # stays in review until it is decided, as the badge says.
        refresh_badge(session, member_id)
        session.flush()

    done = verification.verify_member(
        session_factory,
        store,
        actor,
        member_id,
        {GALLERY: main, VERIFICATION: selfie},
        run_engine,
        gender=gender,
        source=source,
        enrol=enrol,
        challenge_token=challenge_token,
        storing=storing,
        on_store=on_store,
    )
    return ProfileVerified(holder["profile"], done, member_id)


# ----------------------------------------------------------------------------------------------
# Photos checked before: what is reused instead of analysing them again


def _read_stored(store: PhotoStoreBackend, path: str) -> bytes:
    try:
        return store.read(path)
    except PhotoNotFound:
        raise verification.PhotoMissing(
            "A stored profile photo is missing from the photo store.", which=GALLERY
        ) from None


def _remember_hashes(session: Session, member_id: str, checked: rule.ProfileVerification) -> None:
    for photo in checked.photos:
        hashes = photo.analysis.hashes if photo.analysis is not None else None
        if hashes:
            session.execute(
                update(Photo)
                .where(
                    Photo.member_id == member_id,
                    Photo.kind == GALLERY,
                    Photo.sha256 == photo.sha256,
                    Photo.photo_hashes.is_(None),
                )
                .values(photo_hashes=hashes)
                .execution_options(synchronize_session=False)
            )


def _last_profile_check(session: Session, member_id: str) -> ResultRow | None:
    """The member's newest stored profile verification (its per-photo check in checks.profile)."""
    for row in session.scalars(
        select(ResultRow).where(ResultRow.member_id == member_id).order_by(ResultRow.id.desc()).limit(20)
    ):
        if (row.checks or {}).get("profile"):
            return row
    return None


def _stored_faces(
    session: Session, engine, member_id: str, rows: list[ProfilePhoto]
) -> dict[str, tuple[analyse.StoredFace, str]]:
    """{hash: (stored face, model version)} of the profile photos whose check can be reused: the
    member's last profile verification found one face in it, or found the member among several
    (analyse.py says why that is safe), the face the row names, and its embedding and hashes are
    stored. Others (group photos without the member, photos added later, checks of another kind)
    are analysed again."""
    if engine is None or not rows:
        return {}
    last = _last_profile_check(session, member_id)
    if last is None:
        return {}
    profile = last.checks["profile"]
    version = profile.get("model_version")
    checked = {p.get("sha256"): p for p in profile.get("photos") or [] if isinstance(p, dict)}
    main = last.gallery_analysis or {}
    model_id = search.pretrained_model_id(getattr(engine, "networks", None) or DEFAULT_NETWORKS)
    vectors = dict(
        session.execute(
            select(Embedding.photo_sha256, Embedding.vector).where(
                Embedding.photo_sha256.in_([r.photo.sha256 for r in rows]), Embedding.model_id == model_id
            )
        ).all()
    )
    out = {}
    for row in rows:
        photo = row.photo
        entry = checked.get(photo.sha256)
        boxes = [list(b) for b in (entry or {}).get("faces") or []]
        if (
            entry is None
            or row.model_version != version
            or not row.face_box
            or list(entry.get("box") or []) != list(row.face_box)
            or list(row.face_box) not in boxes
            or not analyse.reusable(len(boxes), entry.get("state"))
            or photo.sha256 not in vectors
            or not photo.photo_hashes
        ):
            continue
        face = analyse.StoredFace(
            sha256=photo.sha256,
            box=tuple(row.face_box),
            embedding=np.frombuffer(vectors[photo.sha256], "<f4").copy(),
            hashes=photo.photo_hashes,
            flags=[(f["code"], f["reason"]) for f in entry.get("flags") or []],
            width=photo.width or 0,
            height=photo.height or 0,
        )
        if len(boxes) > 1:
            face.faces = [Face(tuple(b), 0.0) for b in boxes]
        if main.get("sha256") == photo.sha256:  # the main photo as the last result stored it
            face.quality, face.taken_at = main.get("quality"), main.get("taken_at")
            face.width, face.height = main.get("width") or face.width, main.get("height") or face.height
            face.faces = [
                Face(tuple(f["box"]), f.get("score", 0.0), f.get("keypoints") or [])
                for f in main.get("faces") or []
            ] or face.faces
        if face.faces:
            at = [list(f.box) for f in face.faces]
            if list(row.face_box) not in at:
                continue
            face.main_face = at.index(list(row.face_box))
        out[photo.sha256] = (face, version)
    return out
