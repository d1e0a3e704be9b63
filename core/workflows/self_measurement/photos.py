"""The photos a self-measurement compares: current member photos projected through the tower, and
the genuine pairs of reviewed decisions (the FNMR side)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage.schema import (
    MEMBER_ERASED,
    Embedding,
    Member,
    MemberPairVerdict,
    Photo,
    PossibleDuplicate,
    VerificationResult,
    utcnow,
)
from core.workflows.self_measurement.settings import AGE_BANDS, GENDERS, LOAD_CHUNK, photo_kinds
from core.workflows.self_measurement.stats import Scale, _rate
from core.workflows.self_measurement.store import ProjectionFile

# ----------------------------------------------------------------------------------------------
# The photos measured


@dataclass
class PhotoSet:
    """Current member photos with their projections, sorted by gender, then member."""

    photo_ids: np.ndarray  # int64
    member_index: np.ndarray  # int32, into members
    members: list[str]
    gender: np.ndarray  # int8: index into GENDERS
    band: np.ndarray  # int8: index into AGE_BANDS, -1 unknown
    projections: np.ndarray | ProjectionFile  # float32, N x d (in memory, or in a file when loaded)
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted pair codes

    def __len__(self) -> int:
        return len(self.photo_ids)

    def gender_range(self, g: int) -> tuple[int, int]:
        return int(np.searchsorted(self.gender, g, "left")), int(np.searchsorted(self.gender, g, "right"))

    def pair_code(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
        return lo * len(self.members) + hi

    def close(self) -> None:
        """Let go of the projections' file, if they are in one."""
        if isinstance(self.projections, ProjectionFile):
            self.projections.close()

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(self.photo_ids.tobytes())
        h.update(self.member_index.tobytes())
        h.update(self.gender.tobytes())
        h.update(self.band.tobytes())
        h.update(self.excluded.tobytes())
        h.update(str(len(self)).encode())
        return h.hexdigest()


def build_photo_set(
    photo_ids,
    member_ids,
    genders,
    birth_years,
    projections,
    excluded_pairs=(),
    year: int | None = None,
    dim: int | None = None,
) -> PhotoSet:
    """A PhotoSet from parallel lists or arrays (photos of genders other than M/F are left out).
    Member ids may be str or UTF-8 bytes; birth years None or 0 when unknown.

    Built with numpy throughout: at two million photos, per-photo Python objects would cost more
    memory than the rest of the run. projections None: an empty ProjectionFile of `dim` columns in
    the set's order, for the caller to fill (the matrix never held in the process)."""
    year = year or utcnow().year
    photo_ids = np.asarray(photo_ids, np.int64)
    genders = np.asarray(genders, dtype=str)
    gender = np.full(len(photo_ids), -1, np.int8)
    for g, name in enumerate(GENDERS):
        gender[genders == name] = g
    del genders
    keep = np.flatnonzero(gender >= 0)
    # UTF-8 bytes sort as the strings do (code point order), at one byte a character.
    ids = member_ids if isinstance(member_ids, np.ndarray) and member_ids.dtype.kind == "S" else None
    if ids is None:
        ids = np.asarray([m.encode() if isinstance(m, str) else bytes(m) for m in member_ids], dtype=bytes)
    unique, member_code = np.unique(ids[keep], return_inverse=True)
    del ids
    order = np.lexsort((photo_ids[keep], member_code, gender[keep]))
    rows = keep[order]
    births = np.asarray(
        [int(b) if b else 0 for b in birth_years] if not isinstance(birth_years, np.ndarray) else birth_years,
        np.int64,
    )[rows]
    ages = year - births
    bands = np.full(len(rows), -1, np.int8)
    for b, (low, high, _name) in enumerate(AGE_BANDS):
        bands[(births > 0) & (ages >= low) & (ages < high)] = b
    if projections is None:
        ordered = ProjectionFile(len(rows), int(dim or 0))
    else:
        proj = np.asarray(projections, np.float32)
        ordered = np.ascontiguousarray(proj[rows]) if len(rows) else np.zeros((0, proj.shape[-1]), np.float32)
    photo_set = PhotoSet(
        photo_ids[rows],
        member_code[order].astype(np.int32),
        [m.decode() for m in unique],
        gender[rows],
        bands,
        ordered,
    )
    codes = []
    for a, b in excluded_pairs:
        pos = np.searchsorted(unique, [a.encode(), b.encode()])
        if (
            a != b
            and (pos < len(unique)).all()
            and unique[pos[0]] == a.encode()
            and unique[pos[1]] == b.encode()
        ):
            codes.append(photo_set.pair_code(pos[:1], pos[1:])[0])
    photo_set.excluded = np.unique(np.asarray(codes, np.int64))
    return photo_set


def _excluded_member_pairs(session: Session) -> set[tuple[str, str]]:
    """Flagged possible duplicates and pairs a reviewer said are one person (both orders equal)."""
    pairs: set[tuple[str, str]] = set()
    flagged = session.execute(
        select(VerificationResult.member_id, PossibleDuplicate.candidate_member_id).join(
            PossibleDuplicate, PossibleDuplicate.result_id == VerificationResult.id
        )
    ).all()
    same = session.execute(
        select(MemberPairVerdict.member_a_id, MemberPairVerdict.member_b_id).where(
            MemberPairVerdict.same_person.is_(True)
        )
    ).all()
    for a, b in list(flagged) + list(same):
        if a and b and a != b:
            pairs.add((min(a, b), max(a, b)))
    return pairs


def load_photo_set(session: Session, model, year: int | None = None) -> PhotoSet:
    """Every current gallery and verification photo with an embedding of the model's networks,
    projected through its tower (keyset pages: bounded memory per fetch)."""
    from core.verification.networks import networks_of
    from core.workflows.search import embedding_dim, pretrained_model_id

    networks = networks_of(model.metadata)
    model_id, dim = pretrained_model_id(networks), embedding_dim(networks)
    query = (
        select(Photo.id, Photo.member_id, Member.gender, Member.birth_year, Embedding.vector)
        .join(Member, Member.id == Photo.member_id)
        .join(Embedding, Embedding.photo_sha256 == Photo.sha256)
        .where(
            Photo.current.is_(True),
            Photo.kind.in_(photo_kinds()),
            Member.status != MEMBER_ERASED,
            Embedding.model_id == model_id,
            Embedding.dim == dim,
        )
    )
    # First the photos and members (no vectors), so the matrix is made once, in its final order;
    # kept as arrays page by page (per-photo Python objects would cost more than the scan).
    photo_ids, member_ids, genders, births = [], [], [], []
    meta = query.with_only_columns(Photo.id, Photo.member_id, Member.gender, Member.birth_year)
    last = 0
    while True:
        rows = session.execute(meta.where(Photo.id > last).order_by(Photo.id).limit(LOAD_CHUNK * 5)).all()
        if rows:
            photo_ids.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
            member_ids.append(np.asarray([r[1].encode() for r in rows], dtype=bytes))
            genders.append(np.asarray([(r[2] or "").upper() for r in rows], dtype=str))
            births.append(np.fromiter((r[3] or 0 for r in rows), np.int64, len(rows)))
        if len(rows) < LOAD_CHUNK * 5:
            break
        last = rows[-1][0]
    del rows
    photo_ids, genders, births = (
        np.concatenate(x) if x else np.zeros(0, t)
        for x, t in ((photo_ids, np.int64), (genders, "U1"), (births, np.int64))
    )
    member_ids = np.concatenate(member_ids) if member_ids else np.zeros(0, "S1")
    excluded = _excluded_member_pairs(session)
    out_dim = int(model.tower.output_shape[-1])
    photo_set = build_photo_set(photo_ids, member_ids, genders, births, None, excluded, year, dim=out_dim)
    del photo_ids, member_ids, genders, births
    # Then the vectors, projected chunk by chunk straight into their rows.
    by_id = np.argsort(photo_set.photo_ids, kind="stable")
    sorted_ids = photo_set.photo_ids[by_id]
    filled = np.zeros(len(photo_set), bool)
    last = 0
    vectors_query = query.with_only_columns(Photo.id, Embedding.vector)
    while len(sorted_ids):
        rows = session.execute(
            vectors_query.where(Photo.id > last, Photo.id <= int(sorted_ids[-1]))
            .order_by(Photo.id)
            .limit(LOAD_CHUNK)
        ).all()
        if not rows:
            break
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        known = sorted_ids[pos] == ids  # a photo added since the first pass waits for the next run
        raw = b"".join(r[1][: 4 * dim] for r, ok in zip(rows, known, strict=True) if ok)
        vectors = np.frombuffer(raw, "<f4").reshape(-1, dim).astype(np.float32)
        targets = by_id[pos[known]]
        photo_set.projections.write_rows(targets, project(model, vectors))
        filled[targets] = True
        last = int(ids[-1])
        if len(rows) < LOAD_CHUNK:
            break
    if not filled.all():  # a photo replaced between the two passes: left out of this run
        whole, photo_set = (
            photo_set,
            PhotoSet(
                photo_set.photo_ids[filled],
                photo_set.member_index[filled],
                photo_set.members,
                photo_set.gender[filled],
                photo_set.band[filled],
                photo_set.projections.take(filled),
                photo_set.excluded,
            ),
        )
        whole.close()
    return photo_set


PROJECT_CHUNK = 4096  # photos through the tower at a time: its working memory stays ~30 MB


def project(model, embeddings: np.ndarray) -> np.ndarray:
    """The tower's output for pretrained embeddings, in chunks (what the engine computes per photo)."""
    out = [
        np.asarray(
            model.tower(np.asarray(embeddings[i : i + PROJECT_CHUNK], np.float32), training=False), np.float32
        )
        for i in range(0, len(embeddings), PROJECT_CHUNK)
    ]
    return np.concatenate(out) if out else np.zeros((0, embeddings.shape[-1]), np.float32)


def model_scale(model) -> Scale:
    offset, scale = model.similarity_params()
    return Scale(offset, scale)


# ----------------------------------------------------------------------------------------------
# FNMR from reviewed decisions


def reviewed_fnmr(session: Session, model, reject_below: float) -> dict:
    """Genuine pairs (results whose ground truth is the same person: a reviewer's decision), scored
    again with this model from their stored embeddings: how many fall below reject_below (what the
    machine would have rejected).

    The genuine side is what reviewers saw, mostly pairs in the review band: automatic rejections
    are seldom reviewed, so this is a lower bound's sample, not a census; the count says so."""
    from core.verification.networks import networks_of
    from core.workflows.search import embedding_dim, pretrained_model_id

    networks = networks_of(model.metadata)
    model_id, dim = pretrained_model_id(networks), embedding_dim(networks)
    gallery = Photo.__table__.alias("g")
    verification = Photo.__table__.alias("v")
    emb_g = Embedding.__table__.alias("eg")
    emb_v = Embedding.__table__.alias("ev")
    rows = session.execute(
        select(emb_g.c.vector, emb_v.c.vector)
        .select_from(VerificationResult)
        .join(gallery, gallery.c.id == VerificationResult.gallery_photo_id)
        .join(verification, verification.c.id == VerificationResult.verification_photo_id)
        .join(emb_g, (emb_g.c.photo_sha256 == gallery.c.sha256) & (emb_g.c.model_id == model_id))
        .join(emb_v, (emb_v.c.photo_sha256 == verification.c.sha256) & (emb_v.c.model_id == model_id))
        .where(VerificationResult.ground_truth_same.is_(True), emb_g.c.dim == dim, emb_v.c.dim == dim)
    ).all()
    if not rows:
        return _rate(0, 0)
    a = project(model, np.stack([np.frombuffer(r[0], "<f4", dim) for r in rows]))
    b = project(model, np.stack([np.frombuffer(r[1], "<f4", dim) for r in rows]))
    diff = a.astype(np.float64) - b.astype(np.float64)
    similarity = model_scale(model).similarity(np.einsum("ij,ij->i", diff, diff))
    return _rate(int((similarity < reject_below).sum()), len(rows))
