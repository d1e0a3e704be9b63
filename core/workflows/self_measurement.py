"""Self-measurement: the false-match rate at the approve point, counted on the members' own photos.

Every current photo of one member against every current photo of another member of the same
registered gender is a pair of two different people, except pairs already flagged as possible
duplicate accounts and pairs a reviewer marked as the same person. Only same-gender pairs are the
impostor population: a cross-gender pair is never compared (the gender check stops it first, and
it would make the rate look better than it is). With N members that is about N^2/4 pairs, from
the very population being verified, with no labelling.

How it scores: exactly as the engine and the 1:N index do. Each photo's pretrained embedding (the
`embeddings` table) goes through the model version's Siamese tower; the similarity of two photos is
PairSimilarity's sigmoid(scale * (offset - ||a - b||)) of their projections, the calibrated output
the policy's approve_at and reject_below are set on. It falls with the Euclidean distance, so a
similarity floor is a distance ceiling. Blocks of rows are multiplied against the later rows of
their gender (one float32 matrix product per block and column chunk, with each row's squared norm
carried in two extra columns, so the product is -||a - b||^2 / 2 directly); only pairs above the
floor leave the block, so N^2 pairs are never held. Pairs near or above approve_at are scored
again in float64 from the projections, so the count at approve_at is the engine's own decision.

A measurement is one row per model version and UTC day (run_key). Each block's counts and pairs
commit together with the number of blocks done, so a run killed half-way resumes at the next
block; if the photos or exclusions changed meanwhile it starts again from zero (never doubled).

    measure(session_factory, model, triggered_by="system", ...) -> dict   run or resume; the summary
    clopper_pearson_upper(k, n, confidence=0.95) -> float                 one-sided upper bound
    alert_state(session, model_version=None) -> AlertState                what the banner, KPI page and /health say
    latest(session, model_version=None) -> SelfMeasurement | None         newest completed measurement
    pairs_at_approve(session, run_id, limit) -> list[SelfMeasurementPair] what a reviewer opens
    record_verdict(session, member_a, member_b, same_person, reviewer)    a reviewer's word on two members
    write_refit_version(session, run_id, actor, ...) -> str               a new model version, approve_at re-fitted
    schedule_interval_s() -> float | None                                 SELF_MEASURE_EVERY_HOURS

Settings (environment, then secrets.toml):
    SELF_MEASURE_EVERY_HOURS   hours between scheduled measurements (default 24; 'off' to stop)
    SELF_MEASURE_FMR_TARGET    the false-match rate the 95% bound must stay under (default 0.001)
    SELF_MEASURE_FLOOR         similarity below which neighbours are not kept (default 0.1; at most
                               half of approve_at)
    SELF_MEASURE_PAIRS_KEPT    pairs at or above approve_at kept for review per run (default 2000)
    SELF_MEASURE_BLOCK_ROWS    rows per block (default 2048): memory ~ block x 8192 x 5 bytes
    SELF_MEASURE_PHOTOS        'all' (gallery and verification photos, default) or 'gallery'
    SELF_MEASURE_AFTER_PROMOTION  'on' (default) or 'off': measure a version when it is promoted
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import config
from core.errors import FaceVerifyError
from core.storage import audit
from core.storage.schema import (
    GALLERY,
    MEMBER_ERASED,
    VERIFICATION,
    Embedding,
    Member,
    MemberPairVerdict,
    Photo,
    PossibleDuplicate,
    SelfMeasurement,
    SelfMeasurementPair,
    VerificationResult,
    utcnow,
)

log = logging.getLogger(__name__)

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"
GENDERS = ("F", "M")
CONFIDENCE = 0.95
DEFAULT_EVERY_HOURS = 24.0
DEFAULT_FMR_TARGET = 0.001
DEFAULT_FLOOR = 0.1
DEFAULT_PAIRS_KEPT = 2000
DEFAULT_BLOCK_ROWS = 2048
COLUMN_CHUNK = 8192  # columns per matrix product: block x chunk float32 scores at a time
LOAD_CHUNK = 20000  # photos per database fetch
HISTOGRAM_BINS = 4000  # distance bins from 0 to the floor's distance (the re-fit reads them)
STALE_AFTER = timedelta(minutes=5)  # a running measurement silent this long is taken over
# The tail of the score distribution: pairs at or above each similarity (plus approve_at itself).
TAIL_THRESHOLDS = (0.1, 0.3, 0.5, 0.9, 0.99, 0.999)
# Age bands by age in the year measured; a pair belongs to a band when both members are in it.
AGE_BANDS = ((0, 40, "under 40"), (40, 50, "40s"), (50, 60, "50s"), (60, 70, "60s"), (70, 200, "70+"))
EXACT_CHUNK = 8192  # pairs rescored in float64 at a time
EXACT_MARGIN = 1e-3  # squared-distance slack: pairs this close to a cut are rescored in float64

# Audit actions
REFIT = "refit_approve_at"
PAIR_VERDICT = "member_pair_verdict"
SELF_MEASURE = "self_measure"


class SelfMeasurementError(FaceVerifyError):
    code = "self_measurement_error"


class MeasurementRunning(SelfMeasurementError):
    """Another worker is measuring the same model version today and is alive."""

    code = "self_measurement_running"


# ----------------------------------------------------------------------------------------------
# Settings


def _float_setting(name: str, default: float) -> float:
    raw = config.setting(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SelfMeasurementError(f"{name} must be a number, not {raw!r}.") from None


def schedule_interval_s() -> float | None:
    """SELF_MEASURE_EVERY_HOURS (default 24; 'off': never scheduled, still run after a promotion)."""
    raw = (config.setting("SELF_MEASURE_EVERY_HOURS") or str(DEFAULT_EVERY_HOURS)).strip().lower()
    if raw in ("off", "never", "0"):
        return None
    hours = float(raw)
    if hours <= 0:
        raise SelfMeasurementError(f"SELF_MEASURE_EVERY_HOURS must be positive or 'off', not {raw!r}.")
    return hours * 3600.0


def photo_kinds() -> tuple[str, ...]:
    """SELF_MEASURE_PHOTOS: "all" (gallery and verification photos, the default) or "gallery"
    (one photo per member: a quarter of the pairs, for a million members on two cores)."""
    raw = (config.setting("SELF_MEASURE_PHOTOS") or "all").strip().lower()
    if raw == "all":
        return (GALLERY, VERIFICATION)
    if raw == GALLERY:
        return (GALLERY,)
    raise SelfMeasurementError(f"SELF_MEASURE_PHOTOS must be 'all' or 'gallery', not {raw!r}.")


def fmr_target() -> float:
    value = _float_setting("SELF_MEASURE_FMR_TARGET", DEFAULT_FMR_TARGET)
    if not 0.0 < value < 1.0:
        raise SelfMeasurementError(f"SELF_MEASURE_FMR_TARGET must be between 0 and 1, not {value}.")
    return value


def similarity_floor(approve_at: float) -> float:
    value = _float_setting("SELF_MEASURE_FLOOR", DEFAULT_FLOOR)
    if not 0.0 < value < 1.0:
        raise SelfMeasurementError(f"SELF_MEASURE_FLOOR must be between 0 and 1, not {value}.")
    return min(value, approve_at / 2)  # always well below the approve point


# ----------------------------------------------------------------------------------------------
# Statistics


def clopper_pearson_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float | None:
    """One-sided Clopper-Pearson upper bound of a rate seen k times in n: the rate is at most this
    with the given confidence. None when nothing was compared (n = 0)."""
    if n <= 0:
        return None
    if k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, k + 1, n - k))


def pairs_needed(target: float, confidence: float = CONFIDENCE) -> int:
    """Pairs that must be compared (with none matching) before the bound can reach the target."""
    return int(math.ceil(math.log(1 - confidence) / math.log(1 - target)))


def _rate(k: int, n: int) -> dict:
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else None, "upper": clopper_pearson_upper(k, n)}


# ----------------------------------------------------------------------------------------------
# Similarity on the model's scale


@dataclass(frozen=True)
class Scale:
    """PairSimilarity's offset and scale: similarity = sigmoid(scale * (offset - distance))."""

    offset: float
    scale: float

    def similarity(self, sqdist: np.ndarray) -> np.ndarray:
        distance = np.sqrt(np.maximum(np.asarray(sqdist, np.float64), 0.0) + 1e-12)
        return 1.0 / (1.0 + np.exp(-self.scale * (self.offset - distance)))

    def sqdist(self, similarity: float) -> float:
        """The squared distance at which the similarity equals `similarity`."""
        s = min(max(similarity, 1e-12), 1 - 1e-12)
        distance = self.offset - math.log(s / (1 - s)) / self.scale
        return max(distance, 0.0) ** 2


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
    projections: np.ndarray  # float32, N x d
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted pair codes

    def __len__(self) -> int:
        return len(self.photo_ids)

    def gender_range(self, g: int) -> tuple[int, int]:
        return int(np.searchsorted(self.gender, g, "left")), int(np.searchsorted(self.gender, g, "right"))

    def pair_code(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
        return lo * len(self.members) + hi

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
    """A PhotoSet from parallel lists (photos of genders other than M/F are left out).

    projections None: a zero matrix of `dim` columns in the set's order, for the caller to fill
    (no second copy of a large matrix)."""
    year = year or utcnow().year
    gender_code = {g: i for i, g in enumerate(GENDERS)}
    keep = [i for i, g in enumerate(genders) if g in gender_code]
    members = sorted({member_ids[i] for i in keep})
    member_code = {m: i for i, m in enumerate(members)}
    order = sorted(keep, key=lambda i: (gender_code[genders[i]], member_code[member_ids[i]], photo_ids[i]))
    bands = np.full(len(order), -1, np.int8)
    for row, i in enumerate(order):
        birth = birth_years[i]
        if birth:
            age = year - int(birth)
            for b, (low, high, _name) in enumerate(AGE_BANDS):
                if low <= age < high:
                    bands[row] = b
    if projections is None:
        ordered = np.zeros((len(order), int(dim or 0)), np.float32)
    else:
        proj = np.asarray(projections, np.float32)
        ordered = (
            np.ascontiguousarray(proj[order]) if len(order) else np.zeros((0, proj.shape[-1]), np.float32)
        )
    photo_set = PhotoSet(
        np.asarray([photo_ids[i] for i in order], np.int64),
        np.asarray([member_code[member_ids[i]] for i in order], np.int32),
        members,
        np.asarray([gender_code[genders[i]] for i in order], np.int8),
        bands,
        ordered,
    )
    codes = [
        photo_set.pair_code(np.array([member_code[a]]), np.array([member_code[b]]))[0]
        for a, b in excluded_pairs
        if a in member_code and b in member_code and a != b
    ]
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
    # First the photos and members (no vectors), so the matrix is made once, in its final order.
    photo_ids, member_ids, genders, births = [], [], [], []
    meta = query.with_only_columns(Photo.id, Photo.member_id, Member.gender, Member.birth_year)
    last = 0
    while True:
        rows = session.execute(meta.where(Photo.id > last).order_by(Photo.id).limit(LOAD_CHUNK * 5)).all()
        for photo_id, member_id, gender, birth in rows:
            photo_ids.append(photo_id)
            member_ids.append(member_id)
            genders.append((gender or "").upper())
            births.append(birth)
        if len(rows) < LOAD_CHUNK * 5:
            break
        last = rows[-1][0]
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
        vectors = np.empty((int(known.sum()), dim), np.float32)
        for k, row in enumerate(r for r, ok in zip(rows, known, strict=True) if ok):
            vectors[k] = np.frombuffer(row[1], "<f4", dim)
        targets = by_id[pos[known]]
        photo_set.projections[targets] = project(model, vectors)
        filled[targets] = True
        last = int(ids[-1])
        if len(rows) < LOAD_CHUNK:
            break
    if not filled.all():  # a photo replaced between the two passes: left out of this run
        photo_set = PhotoSet(
            photo_set.photo_ids[filled],
            photo_set.member_index[filled],
            photo_set.members,
            photo_set.gender[filled],
            photo_set.band[filled],
            photo_set.projections[filled],
            photo_set.excluded,
        )
    return photo_set


def project(model, embeddings: np.ndarray) -> np.ndarray:
    """The tower's output for pretrained embeddings, in chunks (what the engine computes per photo)."""
    out = [
        np.asarray(model.tower(np.asarray(embeddings[i : i + 16384], np.float32), training=False), np.float32)
        for i in range(0, len(embeddings), 16384)
    ]
    return np.concatenate(out) if out else np.zeros((0, embeddings.shape[-1]), np.float32)


def model_scale(model) -> Scale:
    offset, scale = model.similarity_params()
    return Scale(offset, scale)


# ----------------------------------------------------------------------------------------------
# Counting


def _band_names() -> list[str]:
    return [name for _low, _high, name in AGE_BANDS]


def compared_pairs(photo_set: PhotoSet) -> dict:
    """Pairs compared, per gender and per (gender, age band): all same-gender photo pairs of two
    different members, less the excluded member pairs. Counted, never enumerated."""
    members_photos = np.bincount(photo_set.member_index, minlength=len(photo_set.members)).astype(np.int64)
    member_gender = np.full(len(photo_set.members), -1, np.int8)
    member_gender[photo_set.member_index] = photo_set.gender
    member_band = np.full(len(photo_set.members), -1, np.int8)
    member_band[photo_set.member_index] = photo_set.band
    excl_a = photo_set.excluded // max(len(photo_set.members), 1)
    excl_b = photo_set.excluded % max(len(photo_set.members), 1)
    out = {"genders": {}, "bands": {}}
    for g, name in enumerate(GENDERS):
        in_g = member_gender == g
        n = int(members_photos[in_g].sum())
        same_member = int((members_photos[in_g] * (members_photos[in_g] - 1) // 2).sum())
        ex = (member_gender[excl_a] == g) & (member_gender[excl_b] == g) if len(excl_a) else np.zeros(0, bool)
        excluded = int((members_photos[excl_a[ex]] * members_photos[excl_b[ex]]).sum()) if len(ex) else 0
        out["genders"][name] = n * (n - 1) // 2 - same_member - excluded
        for b, band in enumerate(_band_names()):
            in_gb = in_g & (member_band == b)
            n = int(members_photos[in_gb].sum())
            if not n:
                continue
            same_member = int((members_photos[in_gb] * (members_photos[in_gb] - 1) // 2).sum())
            exb = ex & (member_band[excl_a] == b) & (member_band[excl_b] == b) if len(ex) else ex
            excluded = (
                int((members_photos[excl_a[exb]] * members_photos[excl_b[exb]]).sum()) if len(exb) else 0
            )
            out["bands"][f"{name}|{band}"] = n * (n - 1) // 2 - same_member - excluded
    return out


def empty_counts(photo_set: PhotoSet) -> dict:
    compared = compared_pairs(photo_set)
    zero = {"at_approve": 0, "near": 0, "tail": [0] * len(TAIL_THRESHOLDS)}
    return {
        "compared": compared,
        "genders": {g: json.loads(json.dumps(zero)) for g in GENDERS},
        "bands": {key: {"at_approve": 0, "near": 0} for key in compared["bands"]},
        "histogram": {g: [0] * HISTOGRAM_BINS for g in GENDERS},
        "above_floor": 0,
    }


@dataclass
class BlockResult:
    counts: dict  # increments, same shape as empty_counts' variable parts
    pairs: list[tuple[int, int, float]]  # (row a, row b, exact similarity) at or above approve_at


def blocks(photo_set: PhotoSet, block_rows: int) -> list[tuple[int, int, int]]:
    """(first row, end row, end of the gender's rows) of each block, in a fixed order."""
    out = []
    for g in range(len(GENDERS)):
        start, end = photo_set.gender_range(g)
        for first in range(start, end, block_rows):
            out.append((first, min(first + block_rows, end), end))
    return out


def scan_block(
    photo_set: PhotoSet,
    block: tuple[int, int, int],
    scale: Scale,
    approve_at: float,
    near_from: float,
    floor: float,
    keep: int,
    column_chunk: int = COLUMN_CHUNK,
) -> BlockResult:
    """Rows [first, end) against every later row of their gender: the pairs above the floor."""
    first, end, gender_end = block
    proj = photo_set.projections
    d = proj.shape[1]
    floor_sq = scale.sqdist(floor)
    near_sq, approve_sq = scale.sqdist(near_from), scale.sqdist(approve_at)
    # Rows [a, -|a|^2/2, 1] against columns [b, 1, -|b|^2/2]: the product is -|a - b|^2 / 2.
    # Padded with zeros to a multiple of 8 columns: the BLAS kernels run a third faster.
    width = (d + 2 + 7) // 8 * 8
    rows = proj[first:end]
    a_aug = np.zeros((len(rows), width), np.float32)
    a_aug[:, :d] = rows
    a_aug[:, d] = -0.5 * np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    a_aug[:, d + 1] = 1.0
    cut = np.float32(-0.5 * (floor_sq + EXACT_MARGIN))
    found_i, found_j, found_sq = [], [], []
    # One set of buffers per block, written in place: memory stays flat however many chunks.
    full = min(column_chunk, max(gender_end - first, 1))
    b_buffer = np.zeros((full, width), np.float32)
    product_buffer = np.empty((len(rows), full), np.float32)
    mask_buffer = np.empty((len(rows), full), bool)
    for c0 in range(first, gender_end, column_chunk):
        c1 = min(c0 + column_chunk, gender_end)
        n = c1 - c0
        cols = proj[c0:c1]
        b_aug = b_buffer[:n]
        b_aug[:, :d] = cols
        b_aug[:, d] = 1.0
        b_aug[:, d + 1] = -0.5 * np.einsum("ij,ij->i", cols, cols, dtype=np.float64)
        product = product_buffer if n == full else np.empty((len(rows), n), np.float32)
        np.matmul(a_aug, b_aug.T, out=product)
        mask = mask_buffer if n == full else np.empty((len(rows), n), bool)
        np.greater_equal(product, cut, out=mask)
        ii, jj = np.nonzero(mask)
        if not len(ii):
            continue
        sq = -2.0 * product[ii, jj].astype(np.float64)
        ii = ii + first
        jj = jj + c0
        ok = (jj > ii) & (photo_set.member_index[ii] != photo_set.member_index[jj])
        found_i.append(ii[ok])
        found_j.append(jj[ok])
        found_sq.append(sq[ok])
    ii = np.concatenate(found_i) if found_i else np.zeros(0, np.int64)
    jj = np.concatenate(found_j) if found_j else np.zeros(0, np.int64)
    sq = np.concatenate(found_sq) if found_sq else np.zeros(0, np.float64)
    if len(ii) and len(photo_set.excluded):
        codes = photo_set.pair_code(photo_set.member_index[ii], photo_set.member_index[jj])
        pos = np.searchsorted(photo_set.excluded, codes)
        hit = (pos < len(photo_set.excluded)) & (
            photo_set.excluded[np.minimum(pos, len(photo_set.excluded) - 1)] == codes
        )
        ii, jj, sq = ii[~hit], jj[~hit], sq[~hit]
    # Pairs in the near band or above, and pairs at the floor's edge: the exact distance, as the
    # engine computes it (the product's float32 rounding must not decide a count at approve_at).
    exact = (sq <= max(near_sq, approve_sq) + EXACT_MARGIN) | (np.abs(sq - floor_sq) <= EXACT_MARGIN)
    where = np.flatnonzero(exact)
    for start in range(0, len(where), EXACT_CHUNK):  # bounded memory however many pairs are near
        part = where[start : start + EXACT_CHUNK]
        diff = proj[ii[part]].astype(np.float64)
        diff -= proj[jj[part]]
        sq[part] = np.einsum("ij,ij->i", diff, diff)
    above = sq <= floor_sq  # similarity at or above the floor (exactly, for those near it)
    ii, jj, sq = ii[above], jj[above], sq[above]
    similarity = scale.similarity(sq)
    g = int(photo_set.gender[first]) if end > first else 0
    gname = GENDERS[g]
    at = similarity >= approve_at
    near = (similarity >= near_from) & ~at
    tail = [int((similarity >= t).sum()) for t in TAIL_THRESHOLDS]
    histogram = np.bincount(
        np.minimum((np.sqrt(sq) / math.sqrt(floor_sq) * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1),
        minlength=HISTOGRAM_BINS,
    )
    counts = {
        "genders": {gname: {"at_approve": int(at.sum()), "near": int(near.sum()), "tail": tail}},
        "bands": {},
        "histogram": {gname: histogram.tolist()},
        "above_floor": len(ii),
    }
    band_a, band_b = photo_set.band[ii], photo_set.band[jj]
    same_band = (band_a == band_b) & (band_a >= 0)
    for b, name in enumerate(_band_names()):
        in_band = same_band & (band_a == b)
        if in_band.any():
            counts["bands"][f"{gname}|{name}"] = {
                "at_approve": int((at & in_band).sum()),
                "near": int((near & in_band).sum()),
            }
    order = np.argsort(-similarity[at], kind="stable")[:keep]
    pairs = [
        (int(a), int(b), float(s))
        for a, b, s in zip(ii[at][order], jj[at][order], similarity[at][order], strict=True)
    ]
    return BlockResult(counts, pairs)


def add_counts(total: dict, more: dict) -> dict:
    """Add a block's counts into the running totals (in place; returns total)."""
    for g, values in more["genders"].items():
        target = total["genders"][g]
        target["at_approve"] += values["at_approve"]
        target["near"] += values["near"]
        target["tail"] = [x + y for x, y in zip(target["tail"], values["tail"], strict=True)]
    for key, values in more["bands"].items():
        target = total["bands"].setdefault(key, {"at_approve": 0, "near": 0})
        target["at_approve"] += values["at_approve"]
        target["near"] += values["near"]
    for g, hist in more["histogram"].items():
        total["histogram"][g] = [x + y for x, y in zip(total["histogram"][g], hist, strict=True)]
    total["above_floor"] += more["above_floor"]
    return total


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


# ----------------------------------------------------------------------------------------------
# The run


def _run_key(version: str, day: str) -> str:
    return f"{version}:{day}"


def _claim(session_factory, version: str, day: str, points, floor: float, block_rows: int, actor: str):
    """The day's row for this version, claimed for this process: (row id, token, completed?)."""
    token = str(uuid.uuid4())
    key = _run_key(version, day)
    for _attempt in range(3):
        with session_factory() as session:
            row = session.scalar(select(SelfMeasurement).where(SelfMeasurement.run_key == key))
            now = utcnow()
            if row is None:
                row = SelfMeasurement(
                    run_key=key,
                    model_version=version,
                    measured_on=day,
                    status=RUNNING,
                    triggered_by=actor,
                    started_at=now,
                    heartbeat_at=now,
                    run_token=token,
                    approve_at=points.approve_at,
                    reject_below=points.reject_below,
                    floor=floor,
                    block_rows=block_rows,
                )
                session.add(row)
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()
                    continue  # another worker created it a moment ago: look again
                return row.id, token, False
            if row.status == COMPLETED:
                return row.id, None, True
            if row.status == RUNNING and row.heartbeat_at and now - row.heartbeat_at < STALE_AFTER:
                raise MeasurementRunning(
                    f"The measurement of {version} for {day} is running in another worker "
                    f"(last sign of life {row.heartbeat_at:%H:%M:%S} UTC)."
                )
            # Compare-and-set on the token: of two workers taking over a dead run, one wins.
            same_token = (
                SelfMeasurement.run_token.is_(None)
                if row.run_token is None
                else SelfMeasurement.run_token == row.run_token
            )
            taken = session.execute(
                update(SelfMeasurement)
                .where(SelfMeasurement.id == row.id, same_token)
                .values(run_token=token, status=RUNNING, heartbeat_at=now, error=None)
                .execution_options(synchronize_session=False)
            ).rowcount
            session.commit()
            if taken == 1:
                return row.id, token, False
    raise MeasurementRunning(f"The measurement of {version} for {day} was taken by another worker.")


def _points(model):
    return model.operating_points


def measure(
    session_factory,
    model,
    triggered_by: str = "system",
    *,
    day: str | None = None,
    block_rows: int | None = None,
    stop_after_blocks: int | None = None,
    year: int | None = None,
    pairs_kept: int | None = None,
) -> dict:
    """Measure (or finish measuring) the model version on today's members. Returns the summary.

    Idempotent: a completed measurement of the same version and day is returned as it is.
    stop_after_blocks: stop after that many blocks of this call, as a killed worker would (tests,
    and a caller that wants to spread the work); the next call resumes.
    """
    started = time.perf_counter()
    points = _points(model)
    approve_at, reject_below = float(points.approve_at), float(points.reject_below)
    floor = similarity_floor(approve_at)
    near_from = approve_at / 2
    keep = int(pairs_kept or _float_setting("SELF_MEASURE_PAIRS_KEPT", DEFAULT_PAIRS_KEPT))
    block_rows = int(block_rows or _float_setting("SELF_MEASURE_BLOCK_ROWS", DEFAULT_BLOCK_ROWS))
    day = day or utcnow().strftime("%Y-%m-%d")
    run_id, token, done = _claim(session_factory, model.version, day, points, floor, block_rows, triggered_by)
    if done:
        with session_factory() as session:
            return dict(session.get(SelfMeasurement, run_id).summary or {})
    try:
        scale = model_scale(model)
        with session_factory() as session:
            photo_set = load_photo_set(session, model, year)
            fnmr = reviewed_fnmr(session, model, reject_below)
            session.rollback()
        all_blocks = blocks(photo_set, block_rows)
        snapshot = f"{photo_set.fingerprint()[:40]}:{approve_at!r}:{floor!r}:{block_rows}"
        with session_factory() as session:
            row = session.get(SelfMeasurement, run_id)
            if row.snapshot != snapshot or row.counts is None or row.block_rows != block_rows:
                # What was measured before is not this photo set: start again, never add to it.
                session.execute(delete(SelfMeasurementPair).where(SelfMeasurementPair.run_id == run_id))
                row.snapshot, row.counts, row.blocks_done = snapshot, empty_counts(photo_set), 0
                row.blocks_total, row.block_rows = len(all_blocks), block_rows
                row.approve_at, row.reject_below, row.floor = approve_at, reject_below, floor
                session.commit()
            counts, first_block = row.counts, row.blocks_done
        done_here = 0
        for number in range(first_block, len(all_blocks)):
            if stop_after_blocks is not None and done_here >= stop_after_blocks:
                return {"status": RUNNING, "blocks_done": number, "blocks_total": len(all_blocks)}
            result = scan_block(photo_set, all_blocks[number], scale, approve_at, near_from, floor, keep)
            counts = add_counts(json.loads(json.dumps(counts)), result.counts)
            with session_factory() as session:
                moved = session.execute(
                    update(SelfMeasurement)
                    .where(
                        SelfMeasurement.id == run_id,
                        SelfMeasurement.run_token == token,
                        SelfMeasurement.blocks_done == number,
                    )
                    .values(counts=counts, blocks_done=number + 1, heartbeat_at=utcnow())
                    .execution_options(synchronize_session=False)
                ).rowcount
                if moved != 1:
                    session.rollback()
                    raise MeasurementRunning(
                        f"Measurement {run_id} was taken over by another worker; this one stops."
                    )
                if result.pairs:
                    session.execute(
                        SelfMeasurementPair.__table__.insert(),
                        [_pair_row(run_id, photo_set, a, b, s) for a, b, s in result.pairs],
                    )
                session.commit()
            if result.pairs:
                _prune_pairs(session_factory, run_id, keep, when_over=2 * keep)
            done_here += 1
        _prune_pairs(session_factory, run_id, keep, when_over=keep)
        summary = summarise(
            counts, photo_set, approve_at, reject_below, floor, near_from, fnmr, model.version
        )
        summary["seconds"] = round(time.perf_counter() - started, 3)
        summary["measured_on"] = day
        summary["run_id"] = run_id
        with session_factory() as session:
            summary["pairs_kept"] = int(
                session.scalar(select(func.count()).where(SelfMeasurementPair.run_id == run_id)) or 0
            )
            session.execute(
                update(SelfMeasurement)
                .where(SelfMeasurement.id == run_id, SelfMeasurement.run_token == token)
                .values(status=COMPLETED, summary=summary, finished_at=utcnow(), heartbeat_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            audit.log(
                session,
                triggered_by,
                SELF_MEASURE,
                "model_version",
                model.version,
                {
                    "run_id": run_id,
                    "status": summary["alert"],
                    "at_approve": summary["all"]["at_approve"]["k"],
                },
            )
            session.commit()
        return summary
    except MeasurementRunning:
        raise
    except BaseException as exc:
        # Let the next run take over at once (a retry of the job, or the schedule).
        _release(session_factory, run_id, token, f"{type(exc).__name__}: {exc}")
        raise


def _release(session_factory, run_id: int, token: str, error: str) -> None:
    try:
        with session_factory() as session:
            session.execute(
                update(SelfMeasurement)
                .where(SelfMeasurement.id == run_id, SelfMeasurement.run_token == token)
                .values(status=INTERRUPTED, heartbeat_at=None, error=error[:2000])
                .execution_options(synchronize_session=False)
            )
            session.commit()
    except Exception:  # the database itself is away: the run is taken over when it goes stale
        log.exception("self-measurement %s could not be released", run_id)


def _pair_row(run_id: int, photo_set: PhotoSet, a: int, b: int, similarity: float) -> dict:
    return {
        "run_id": run_id,
        "member_a_id": photo_set.members[int(photo_set.member_index[a])],
        "member_b_id": photo_set.members[int(photo_set.member_index[b])],
        "photo_a_id": int(photo_set.photo_ids[a]),
        "photo_b_id": int(photo_set.photo_ids[b]),
        "gender": GENDERS[int(photo_set.gender[a])],
        "similarity": float(similarity),
    }


def _prune_pairs(session_factory, run_id: int, keep: int, when_over: int) -> None:
    """Keep the run's `keep` most similar pairs (counts keep every pair; only the list is capped)."""
    with session_factory() as session:
        total = session.scalar(select(func.count()).where(SelfMeasurementPair.run_id == run_id)) or 0
        if total <= when_over:
            return
        cut = session.scalar(
            select(SelfMeasurementPair.similarity)
            .where(SelfMeasurementPair.run_id == run_id)
            .order_by(SelfMeasurementPair.similarity.desc(), SelfMeasurementPair.id)
            .offset(keep - 1)
            .limit(1)
        )
        if cut is not None:
            session.execute(
                delete(SelfMeasurementPair).where(
                    SelfMeasurementPair.run_id == run_id, SelfMeasurementPair.similarity < cut
                )
            )
            session.commit()


def summarise(counts, photo_set, approve_at, reject_below, floor, near_from, fnmr, version) -> dict:
    """The figures of a finished measurement (JSON-able), with the alert they raise."""
    target = fmr_target()
    genders = {}
    total_k = total_n = total_near = 0
    for g in GENDERS:
        n = int(counts["compared"]["genders"][g])
        k = int(counts["genders"][g]["at_approve"])
        genders[g] = {
            "compared": n,
            "at_approve": _rate(k, n),
            "near": int(counts["genders"][g]["near"]),
            "tail": dict(zip([f"{t:g}" for t in TAIL_THRESHOLDS], counts["genders"][g]["tail"], strict=True)),
            "members": int(len(np.unique(photo_set.member_index[photo_set.gender == GENDERS.index(g)]))),
            "photos": int((photo_set.gender == GENDERS.index(g)).sum()),
        }
        total_k, total_n, total_near = (
            total_k + k,
            total_n + n,
            total_near + int(counts["genders"][g]["near"]),
        )
    bands = {}
    for key, n in counts["compared"]["bands"].items():
        got = counts["bands"].get(key, {"at_approve": 0, "near": 0})
        bands[key] = {"compared": int(n), "at_approve": _rate(got["at_approve"], n), "near": int(got["near"])}
    overall = _rate(total_k, total_n)
    summary = {
        "model_version": version,
        "approve_at": approve_at,
        "reject_below": reject_below,
        "floor": floor,
        "near_from": near_from,
        "target": target,
        "pairs_needed": pairs_needed(target),
        "photos": len(photo_set),
        "members": len(photo_set.members),
        "excluded_member_pairs": int(len(photo_set.excluded)),
        "above_floor": int(counts["above_floor"]),
        "all": {"compared": total_n, "at_approve": overall, "near": total_near},
        "genders": genders,
        "age_bands": bands,
        "fnmr": {**fnmr, "reject_below": reject_below},
    }
    summary["alert"] = _alert_status(overall, genders, target)
    return summary


OK, ABOVE_TARGET, TOO_FEW, NOT_MEASURED = "ok", "above_target", "too_few_pairs", "not_measured"


def _alert_status(overall: dict, genders: dict, target: float) -> str:
    """above_target when a gender with enough pairs has its 95% bound above the target; else
    too_few_pairs when a gender has fewer pairs than any bound under the target needs; else ok."""
    needed = pairs_needed(target)
    measured = [g for g in genders.values() if g["compared"]]
    if any(g["compared"] >= needed and g["at_approve"]["upper"] > target for g in measured):
        return ABOVE_TARGET
    if not measured or len(measured) < len(genders) or any(g["compared"] < needed for g in measured):
        return TOO_FEW
    return OK


# ----------------------------------------------------------------------------------------------
# Reading results


def latest(session: Session, model_version: str | None = None) -> SelfMeasurement | None:
    stmt = select(SelfMeasurement).where(SelfMeasurement.status == COMPLETED)
    if model_version:
        stmt = stmt.where(SelfMeasurement.model_version == model_version)
    return session.scalar(
        stmt.order_by(SelfMeasurement.finished_at.desc(), SelfMeasurement.id.desc()).limit(1)
    )


def history(session: Session, limit: int = 60) -> list[SelfMeasurement]:
    """Completed measurements, oldest first (the trend)."""
    rows = session.scalars(
        select(SelfMeasurement)
        .where(SelfMeasurement.status == COMPLETED)
        .order_by(SelfMeasurement.finished_at.desc(), SelfMeasurement.id.desc())
        .limit(limit)
    ).all()
    return list(reversed(rows))


def pairs_at_approve(session: Session, run_id: int, limit: int = 200) -> list[SelfMeasurementPair]:
    return list(
        session.scalars(
            select(SelfMeasurementPair)
            .where(SelfMeasurementPair.run_id == run_id)
            .order_by(SelfMeasurementPair.similarity.desc(), SelfMeasurementPair.id)
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class AlertState:
    status: str  # ok / above_target / too_few_pairs / not_measured
    model_version: str | None
    measured_on: str | None
    target: float
    upper: float | None  # the overall 95% bound
    worst_gender: str | None  # the gender whose bound is highest
    worst_upper: float | None
    compared: int
    at_approve: int

    @property
    def alerting(self) -> bool:
        return self.status != OK

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def active_version(session: Session) -> str | None:
    """The registry's active version as the table says (read only), else the shipped default."""
    from core.storage.schema import ModelVersion as VersionRow
    from core.verification.heads import default_version

    version = session.scalar(
        select(VersionRow.version)
        .where(VersionRow.active.is_(True))
        .order_by(VersionRow.promoted_at.desc(), VersionRow.id.desc())
        .limit(1)
    )
    if version:
        return version
    try:
        return default_version()
    except FaceVerifyError:
        return None


def alert_state(session: Session, model_version: str | None = None) -> AlertState:
    """What the measurement says about the active (or given) model version, for the banner, the
    KPI page and /health: ok, above_target (the bound passes the target), too_few_pairs (not
    enough members to bound anything), not_measured (no measurement of this version yet)."""
    target = fmr_target()
    if model_version is None:
        model_version = active_version(session)
    row = latest(session, model_version) if model_version else None
    if row is None or not row.summary:
        return AlertState(NOT_MEASURED, model_version, None, target, None, None, None, 0, 0)
    summary = row.summary
    worst = max(
        (
            (g, v["at_approve"]["upper"])
            for g, v in summary["genders"].items()
            if v["at_approve"]["upper"] is not None
        ),
        key=lambda t: t[1],
        default=(None, None),
    )
    status = _alert_status(summary["all"]["at_approve"], summary["genders"], target)
    return AlertState(
        status,
        row.model_version,
        row.measured_on,
        target,
        summary["all"]["at_approve"]["upper"],
        worst[0],
        worst[1],
        int(summary["all"]["compared"]),
        int(summary["all"]["at_approve"]["k"]),
    )


def health_field(session_factory) -> str:
    """The /health field: the alert status of the active model version ('unknown' on a DB error)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with session_factory() as session:
            return alert_state(session).status
    except (SQLAlchemyError, FaceVerifyError):
        return "unknown"


def record_verdict(
    session: Session, member_a: str, member_b: str, same_person: bool, reviewer: str, note: str | None = None
) -> MemberPairVerdict:
    """A reviewer's word on two members (commits, audited). Same person: a duplicate account, left
    out of later measurements; different people: a look-alike, still counted as an impostor pair."""
    if member_a == member_b:
        raise SelfMeasurementError("A verdict needs two different members.")
    a, b = sorted((member_a, member_b))
    row = session.scalar(
        select(MemberPairVerdict).where(
            MemberPairVerdict.member_a_id == a, MemberPairVerdict.member_b_id == b
        )
    )
    if row is None:
        row = MemberPairVerdict(
            member_a_id=a, member_b_id=b, same_person=bool(same_person), decided_by=reviewer
        )
        session.add(row)
    row.same_person, row.decided_by, row.decided_at, row.note = bool(same_person), reviewer, utcnow(), note
    audit.log(session, reviewer, PAIR_VERDICT, "member", a, {"other": b, "same_person": bool(same_person)})
    session.commit()
    return row


# ----------------------------------------------------------------------------------------------
# Re-fit of approve_at on the members' own impostors


def refit_point(
    summary_counts: dict, floor: float, scale: Scale, target: float, compared: int
) -> float | None:
    """The lowest similarity (a histogram edge) at which the 95% bound of the measured rate, over
    both genders' pairs, stays at or under the target; None when no edge does (too few pairs)."""
    floor_distance = math.sqrt(scale.sqdist(floor))
    hist = np.sum([np.asarray(h, np.int64) for h in summary_counts["histogram"].values()], axis=0)
    at_or_closer = np.cumsum(hist)  # pairs with distance below each bin's upper edge
    best = None
    for b in range(HISTOGRAM_BINS):
        upper = clopper_pearson_upper(int(at_or_closer[b]), compared)
        if upper is None or upper > target:
            break
        # Pairs up to bin b's upper edge are allowed: approve from the edge's similarity on.
        best = b
    if best is None:
        return None
    edge_distance = (best + 1) / HISTOGRAM_BINS * floor_distance
    # Just above the edge's similarity: a pair exactly at the edge (the next bin) is not approved.
    return float(np.nextafter(scale.similarity(np.array([edge_distance**2]))[0], 1.0))


def write_refit_version(
    session: Session,
    run_id: int,
    actor: str,
    models_dir: Path | None = None,
    new_version: str | None = None,
) -> str:
    """Write a new model version folder: its parent's files and every figure of its parent, with
    approve_at re-fitted to the measured impostor distribution (audited). The caller registers it
    (core.dashboard.self_measurement.refit_approve_at); promotion and rollback go through the
    registry like any version. Returns the new version's name."""
    row = session.get(SelfMeasurement, run_id)
    if row is None or row.status != COMPLETED:
        raise SelfMeasurementError(f"There is no completed measurement {run_id}.")
    models_dir = Path(models_dir or config.models_dir())
    parent = row.model_version
    meta_path = models_dir / parent / "metadata.json"
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise SelfMeasurementError(f"Model version {parent} cannot be read from {meta_path}: {exc}") from exc
    from core.verification.heads import load_version

    scale = model_scale(load_version(parent, models_dir))
    target = fmr_target()
    compared = int(row.summary["all"]["compared"])
    point = refit_point(row.counts, row.floor, scale, target, compared)
    if point is None:
        raise SelfMeasurementError(
            f"{compared:,} cross-member pairs are too few to re-fit the approve point to a false-match "
            f"rate of {target:g} (at least {pairs_needed(target):,} are needed)."
        )
    policy = dict(metadata.get("policy") or {})
    reject_below = float(policy.get("reject_below", (metadata.get("uncertain_band") or [0, 0])[0]))
    point = max(point, reject_below)
    old = float(policy.get("approve_at", (metadata.get("uncertain_band") or [0, 1])[1]))
    name = new_version or f"{parent[:40]}-refit{utcnow():%Y%m%d%H%M%S}"
    target_dir = models_dir / name
    if target_dir.exists():
        raise SelfMeasurementError(f"Model version {name} exists already.")
    shutil.copytree(models_dir / parent, target_dir)
    policy["approve_at"] = point
    metadata["policy"] = policy
    band = list(metadata.get("uncertain_band") or [reject_below, old])
    band[1] = point
    metadata["uncertain_band"] = band
    metadata["version"] = name
    metadata["refit"] = {
        "parent": parent,
        "measurement_id": run_id,
        "measured_on": row.measured_on,
        "approve_at_before": old,
        "approve_at_after": point,
        "target": target,
        "compared_pairs": compared,
        "at_approve_before": row.summary["all"]["at_approve"]["k"],
        "by": actor,
        "at": utcnow().isoformat(),
    }
    (target_dir / "metadata.json").write_text(json.dumps(metadata, indent=2))
    audit.log(
        session,
        actor,
        REFIT,
        "model_version",
        name,
        {k: v for k, v in metadata["refit"].items() if k != "at"},
    )
    session.commit()
    return name


# ----------------------------------------------------------------------------------------------
# Running it: the job, after a promotion, and on a schedule

JOB_NAME = "self_measure"  # its job in core.jobs.tasks.JOBS


def run_job(actor: str = "queue", version: str | None = None, database_url: str | None = None) -> dict:
    """The job body: measure the given (default: active) model version on the members of the
    configured database (or database_url). A run of the same version and day resumes or returns."""
    from core.jobs import resources
    from core.verification.heads import load_version

    if database_url:
        from core.storage.db import init_db, make_engine
        from core.storage.db import session_factory as make_factory

        factory = make_factory(init_db(make_engine(database_url)))
    else:
        factory = resources.session_factory()
    if version is None:
        with factory() as session:
            version = active_version(session)
    # The heads alone: the measurement needs the tower and the similarity, not the networks.
    model = load_version(version, config.models_dir())
    summary = measure(factory, model, actor)
    log.info(
        "self-measurement of %s: %s of %s pairs at approve_at, bound %s (%s)",
        version,
        summary["all"]["at_approve"]["k"],
        summary["all"]["compared"],
        summary["all"]["at_approve"]["upper"],
        summary["alert"],
    )
    return summary


def due(session: Session, every_s: float, version: str) -> bool:
    """No measurement of this version finished within the interval, and none is running now."""
    since = utcnow() - timedelta(seconds=every_s)
    finished = session.scalar(
        select(func.count()).where(
            SelfMeasurement.model_version == version,
            SelfMeasurement.status == COMPLETED,
            SelfMeasurement.finished_at >= since,
        )
    )
    running = session.scalar(
        select(func.count()).where(
            SelfMeasurement.model_version == version,
            SelfMeasurement.status == RUNNING,
            SelfMeasurement.heartbeat_at >= utcnow() - STALE_AFTER,
        )
    )
    return not finished and not running
