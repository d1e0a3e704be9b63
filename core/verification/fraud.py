"""Fraud checks on a verification photo: pure functions on pixels, EXIF, landmarks and embeddings.

    photo_hashes(rgb, box, chip) -> (str, str)  perceptual hashes of the face chip, photo, face region
    hash_distances(a, a_mirror, b) -> dict      bits that differ per hash, mirrored copies included
    exif_taken_at(data) -> datetime | None      EXIF DateTimeOriginal (else DateTimeDigitized)
    stale_reason(taken_at, uploaded_at, gallery_submitted_at, max_age) -> str | None
    head_pose(mesh) -> HeadPose                 yaw, pitch and roll in degrees from FaceMesh points
    challenge_outcome(kind, pose) -> ChallengeOutcome, needed_angle(kind) -> float
    reuse_limit(features_version) -> (numbers compared, distance) | None
    reuse_matches(photo, others, limit) -> list[ReuseMatch]

No database and no network here: core.verification.engine calls these for a pair, the storing
step (core.workflows.photo_checks) for every other photo of the member. The thresholds were
measured on lfw_dev's training people and are re-measured by `faceverify bench fraud`.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np

from core.verification.result import CHALLENGE_FAILED, REUSED_PHOTO, Flag

# -- copies of a photo -----------------------------------------------------------------------

# Three perceptual hashes per photo, each the 16 x 16 low DCT frequencies of a grey image above
# their median (255 bits, 64 hex): the aligned face chip, the whole photo, and a square around the
# detected face 1.6 times its size. A re-encoded, resized, recoloured or mirrored copy keeps the
# whole-photo hash; a crop or a screenshot keeps the face hashes. Each is compared as it is and
# mirrored. Limits chosen on lfw_dev's training people (faceverify bench fraud): every
# copy (same bytes, JPEG q60, 60% size, mirror, 10% crop, +15% brightness, screenshot) was within
# them or within REUSE_DISTANCE, while 0.055% of same-person pairs of distinct photos were, nearly
# all LFW's own re-crops of one press photo.
HASH_SIZE = 16
REUSE_BITS = {"chip": 48, "whole": 40, "region": 56}
HASH_PARTS = ("chip", "whole", "region")
REGION_SCALE = 1.6

# Pretrained embedding distance at or below which two photos are taken for one capture, per
# feature recipe (core.verification.features.features_version): (how many leading numbers of the
# embedding are compared, None for all; the limit). Each sits under the ceiling two separate
# captures of one person reach on lfw_dev's training people, measured with
# `faceverify bench fraud` for both measures (dlib's part, every network's part); see
# README, Fraud checks. A recipe not listed gets no identity limit (the hashes still apply).
DLIB_PART = 128  # dlib's numbers come first in every recipe's embedding
REUSE_DISTANCE: dict[str, tuple[int | None, float]] = {
    # dlib alone: 0.1% of training same-person distinct pairs closer than 0.191
    "dlib-rn-v1+cydral-gender-v1/boxfit/mirror": (DLIB_PART, 0.18),
    # dlib + SFace (the default): dlib's part still, measured against the whole 256 numbers. dlib's
    # part: training ceiling (0.1% quantile) 0.200, closest pair 0.176, every training copy the
    # hashes miss within 0.168; at 0.18, 1 of 5,462 training and 0 of 16,167 held-out distinct
    # pairs flagged. The whole embedding: ceiling 0.513, but SFace's int8 network moves more under
    # re-encoding, so held-out copies the hashes miss sit at 0.52-0.55, beyond any limit under the
    # ceiling (and 6 training / 4 held-out distinct pairs flagged at 0.51).
    "dlib-rn-v1+cydral-gender-v1/boxfit/mirror+sface-2021dec-int8bq/yunet5": (DLIB_PART, 0.18),
    # dlib + SFace in 8 bits: the same dlib part, so the same limit.
    "dlib-rn-v1+cydral-gender-v1/boxfit/mirror+sface-2021dec-int8bq-w8/yunet5": (DLIB_PART, 0.18),
}


def _dct_hash(gray: np.ndarray) -> str:
    import cv2

    small = cv2.resize(gray.astype(np.float32), (4 * HASH_SIZE, 4 * HASH_SIZE), interpolation=cv2.INTER_AREA)
    block = cv2.dct(small)[:HASH_SIZE, :HASH_SIZE].flatten()[1:]
    bits = np.append(block > np.median(block), False)  # pad to 256 bits
    return np.packbits(bits).tobytes().hex()


def _gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)


def _region(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    import cv2

    x, y, w, h = box
    side = max(int(REGION_SCALE * max(w, h)), 8)
    padded = cv2.copyMakeBorder(gray, side, side, side, side, cv2.BORDER_REPLICATE)
    x0, y0 = int(x + w / 2 - side / 2) + side, int(y + h / 2 - side / 2) + side
    return padded[y0 : y0 + side, x0 : x0 + side]


def photo_hashes(rgb: np.ndarray, box: tuple[int, int, int, int], chip: np.ndarray) -> tuple[str, str]:
    """("chip:whole:region" hashes of the photo, the same of its mirror image), hex."""
    images = (_gray(chip), _gray(rgb), _region(_gray(rgb), box))
    as_is = ":".join(_dct_hash(g) for g in images)
    mirrored = ":".join(_dct_hash(np.ascontiguousarray(g[:, ::-1])) for g in images)
    return as_is, mirrored


def _bits(hex_hash: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_hash), np.uint8))


def hash_distances(a: str, a_mirror: str | None, b: str) -> dict[str, int]:
    """Differing bits per part between photo a (as it is or mirrored) and photo b."""
    out = {}
    theirs = b.split(":")
    for i, part in enumerate(HASH_PARTS):
        if i >= len(theirs):
            break
        mine = [h.split(":")[i] for h in (a, a_mirror) if h]
        out[part] = min(int(np.count_nonzero(_bits(m) != _bits(theirs[i]))) for m in mine)
    return out


@dataclass
class Fingerprint:
    """What the reuse check needs of one photo."""

    label: str  # how the reviewer knows it: "gallery photo 12", "verification photo 40"
    sha256: str
    hashes: str | None = None  # photo_hashes()[0]
    hashes_mirror: str | None = None
    embedding: np.ndarray | None = None
    photo_id: int | None = None
    kind: str | None = None


@dataclass
class ReuseMatch:
    label: str
    photo_id: int | None
    kind: str | None
    how: str  # "same_file", "photo_hash" (chip, whole or region within its limit) or "identity"
    hash_bits: dict | None  # differing bits per hash part
    embedding_distance: float | None

    def as_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        if self.how == "same_file":
            return f"the same file as the {self.label}"
        parts = []
        if self.hash_bits:
            parts.append(
                f"{self.hash_bits.get('whole')}/{self.hash_bits.get('chip')} bits apart (photo/face)"
            )
        if self.embedding_distance is not None:
            parts.append(f"face distance {self.embedding_distance:.3f}")
        return f"a copy of the {self.label} ({', '.join(parts)})"


def reuse_limit(features_version: str) -> tuple[int | None, float] | None:
    """(numbers compared, identity limit) for a feature recipe; None: not measured, not applied."""
    return REUSE_DISTANCE.get(features_version)


def embedding_distance(a, b, dims: int | None = None) -> float | None:
    """Euclidean distance over the first `dims` numbers (all: None); None when either is missing
    or they come from different networks (their lengths differ)."""
    if a is None or b is None:
        return None
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        return None
    return float(np.linalg.norm(a[:dims] - b[:dims]))


def reuse_matches(
    photo: Fingerprint, others: list[Fingerprint], limit: tuple[int | None, float] | None
) -> list[ReuseMatch]:
    """The photos among `others` that `photo` is a copy of (limit: reuse_limit(), None for hashes only)."""
    matches = []
    for other in others:
        if other.sha256 and other.sha256 == photo.sha256:
            matches.append(ReuseMatch(other.label, other.photo_id, other.kind, "same_file", None, 0.0))
            continue
        bits = distance = None
        if photo.hashes and other.hashes:
            bits = hash_distances(photo.hashes, photo.hashes_mirror, other.hashes)
        if limit is not None:
            distance = embedding_distance(photo.embedding, other.embedding, limit[0])
        if bits and any(bits[part] <= REUSE_BITS[part] for part in bits):
            matches.append(ReuseMatch(other.label, other.photo_id, other.kind, "photo_hash", bits, distance))
        elif distance is not None and distance <= limit[1]:
            matches.append(ReuseMatch(other.label, other.photo_id, other.kind, "identity", bits, distance))
    return matches


# -- when the photo was taken --------------------------------------------------------------

STALE_AFTER_DAYS = 30  # default of the STALE_PHOTO_DAYS setting


def exif_taken_at(data: bytes) -> datetime | None:
    """EXIF DateTimeOriginal (else DateTimeDigitized) as a naive datetime, None when absent or unreadable.

    EXIF dates carry no time zone; they are compared as if UTC, which is good to a day.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "PNG" and "exif" not in im.info:
                return None  # getexif() would decode every pixel, unbudgeted, to look past them
            sub = im.getexif().get_ifd(0x8769)  # the Exif sub-IFD
            raw = sub.get(36867) or sub.get(36868)
    except Exception:  # EXIF that Pillow cannot parse counts as no date, never as an error
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.strptime(raw.strip().strip("\x00")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def stale_reason(
    taken_at: datetime | None,
    uploaded_at: datetime,
    gallery_submitted_at: datetime | None,
    max_age: timedelta,
) -> str | None:
    """Why the photo is stale, or None. No date: never stale (the caller says it was not checked)."""
    if taken_at is None:
        return None
    if uploaded_at - taken_at > max_age:
        return (
            f"EXIF says it was taken on {taken_at:%Y-%m-%d}, {(uploaded_at - taken_at).days} days before "
            f"the upload (limit {max_age.days} days)."
        )
    if gallery_submitted_at is not None and taken_at < gallery_submitted_at - timedelta(days=1):
        return (
            f"EXIF says it was taken on {taken_at:%Y-%m-%d}, before the gallery photo was submitted "
            f"({gallery_submitted_at:%Y-%m-%d})."
        )
    return None


# -- head pose and the pose challenge ------------------------------------------------------

# FaceMesh landmark indices: outer eye corners, top of the forehead, chin.
_RIGHT_EYE_OUTER, _LEFT_EYE_OUTER, _FOREHEAD, _CHIN = 33, 263, 10, 152
# The forehead-chin line leans back in a level face: FaceMesh's raw pitch of a level head, the
# median over lfw_dev's training people (their photos are mostly level, their median yaw 0.4).
PITCH_ZERO = 6.4
ROLL_ZERO = -1.2


@dataclass
class HeadPose:
    yaw: float  # degrees; + = turned to the person's own left (face towards the image's right)
    pitch: float  # + = chin up
    roll: float  # + = head tilted towards the person's own left shoulder... either way counts

    def as_dict(self) -> dict:
        return {"yaw": round(self.yaw, 1), "pitch": round(self.pitch, 1), "roll": round(self.roll, 1)}


def head_pose(mesh: np.ndarray) -> HeadPose:
    """Yaw, pitch, roll from MediaPipe FaceMesh points (N x 3 pixels: x right, y down, z depth).

    The face's own axes are taken from the outer eye corners (left-right) and the forehead-chin
    line (up-down); their rotation against the camera gives the three angles.
    """
    p = np.asarray(mesh, np.float64)
    x_axis = p[_LEFT_EYE_OUTER] - p[_RIGHT_EYE_OUTER]
    x_axis /= np.linalg.norm(x_axis)
    y_axis = p[_CHIN] - p[_FOREHEAD]
    y_axis -= x_axis * (y_axis @ x_axis)
    y_axis /= np.linalg.norm(y_axis)
    z_axis = np.cross(x_axis, y_axis)
    rot = np.stack([x_axis, y_axis, z_axis], axis=1)
    yaw = np.degrees(np.arctan2(-rot[2, 0], np.hypot(rot[0, 0], rot[1, 0])))
    pitch = np.degrees(np.arctan2(rot[2, 1], rot[2, 2]))
    roll = np.degrees(np.arctan2(rot[1, 0], rot[0, 0]))
    return HeadPose(yaw=float(-yaw), pitch=float(-(pitch - PITCH_ZERO)), roll=float(roll - ROLL_ZERO))


TURN_LEFT, TURN_RIGHT, TILT, CHIN_UP = "turn_left", "turn_right", "tilt", "chin_up"
CHALLENGES = (TURN_LEFT, TURN_RIGHT, TILT, CHIN_UP)
# Degrees a photo must show. lfw_dev photos judged by eye: turned faces measure 15-45 degrees of
# yaw; a clear chin-up 15+; a visible tilt 15+. Re-encoding moves the measure by about 1 degree.
MIN_TURN = 15.0
MIN_TILT = 15.0
MIN_CHIN_UP = 15.0


@dataclass
class ChallengeOutcome:
    kind: str
    met: bool
    angle: float  # the measured angle that decides this challenge
    pose: HeadPose
    reason: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "met": self.met, "angle": round(self.angle, 1), **self.pose.as_dict()}


def challenge_outcome(kind: str, pose: HeadPose) -> ChallengeOutcome:
    """Whether the measured pose shows the challenge, with the angle and a sentence for the reviewer."""
    if kind == TURN_LEFT:
        angle, need, what = pose.yaw, MIN_TURN, "turned to the left"
    elif kind == TURN_RIGHT:
        angle, need, what = -pose.yaw, MIN_TURN, "turned to the right"
    elif kind == TILT:
        angle, need, what = abs(pose.roll), MIN_TILT, "tilted"
    elif kind == CHIN_UP:
        angle, need, what = pose.pitch, MIN_CHIN_UP, "raised (chin up)"
    else:
        raise ValueError(f"unknown challenge {kind!r}; one of {', '.join(CHALLENGES)}")
    met = angle >= need
    reason = (
        f"The head is {what} by {angle:.0f} degrees (at least {need:.0f} needed)."
        if met
        else f"Asked for the head {what}; the photo shows {angle:.0f} degrees, at least {need:.0f} needed "
        f"(yaw {pose.yaw:.0f}, pitch {pose.pitch:.0f}, roll {pose.roll:.0f})."
    )
    return ChallengeOutcome(kind, met, angle, pose, reason)


# -- the flags -----------------------------------------------------------------------------


def fingerprint(analysis, label: str, photo_id: int | None = None, kind: str | None = None) -> Fingerprint:
    """The reuse check's view of an analysed photo (core.verification.result.PhotoAnalysis)."""
    return Fingerprint(
        label=label,
        sha256=analysis.sha256,
        hashes=analysis.hashes,
        hashes_mirror=analysis.hashes_mirror,
        embedding=analysis.embedding,  # every network's part: REUSE_DISTANCE is keyed by the recipe
        photo_id=photo_id,
        kind=kind,
    )


def reuse_flag(matches: list[ReuseMatch]) -> Flag | None:
    """One reused_photo flag naming every stored photo the verification photo copies."""
    if not matches:
        return None
    first = matches[0]
    return Flag(
        REUSED_PHOTO,
        "The verification photo is " + "; ".join(m.sentence() for m in matches) + ".",
        "verification",
        params={
            "kind": first.kind or "gallery",
            "photo_id": first.photo_id,
            "how": first.how,
            "distance": first.embedding_distance,
            "count": len(matches),
        },
    )


def reuse_evidence(matches: list[ReuseMatch], limit: tuple[int | None, float] | None) -> dict:
    return {
        "matches": [m.as_dict() for m in matches],
        "max_bits": REUSE_BITS,
        "max_distance": None if limit is None else limit[1],
        "distance_numbers": None if limit is None else limit[0],  # leading numbers compared; None: all
    }


def challenge_flag(kind: str, pose: dict | None) -> tuple[Flag | None, dict]:
    """(challenge_failed flag or None, evidence) for the pose measured on the verification photo."""
    if pose is None:
        reason = "The head pose could not be measured on the verification photo, so the challenge is not met."
        flag = Flag(CHALLENGE_FAILED, reason, "verification", params={"challenge": kind, "angle": None})
        return flag, {"kind": kind, "met": False, "angle": None}
    outcome = challenge_outcome(kind, HeadPose(**pose))
    evidence = outcome.as_dict()
    if outcome.met:
        return None, evidence
    params = {"challenge": kind, "angle": round(outcome.angle, 1), "needed": needed_angle(kind)}
    return Flag(CHALLENGE_FAILED, outcome.reason, "verification", params=params), evidence


def needed_angle(kind: str) -> float:
    """Degrees of the asked movement a photo must show for the challenge."""
    return {TURN_LEFT: MIN_TURN, TURN_RIGHT: MIN_TURN, TILT: MIN_TILT, CHIN_UP: MIN_CHIN_UP}[kind]
