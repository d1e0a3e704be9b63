"""Counting: the pairs compared (counted, never enumerated) and the block scan that finds the pairs
above the floor with one matrix product per block and column chunk."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from core.workflows.self_measurement.photos import PhotoSet
from core.workflows.self_measurement.settings import (
    AGE_BANDS,
    COLUMN_CHUNK,
    EXACT_CHUNK,
    EXACT_MARGIN,
    GENDERS,
    HISTOGRAM_BINS,
    TAIL_THRESHOLDS,
)
from core.workflows.self_measurement.stats import Scale
from core.workflows.self_measurement.store import read_scan_rows, scan_width

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
    """(first row, end row, end of the gender's rows) of each block, in a fixed order: the genders'
    blocks taken in turn, so the first blocks of a run (the largest: their rows meet every later row
    of their gender) cover both genders."""
    per_gender = []
    for g in range(len(GENDERS)):
        start, end = photo_set.gender_range(g)
        per_gender.append(
            [(first, min(first + block_rows, end), end) for first in range(start, end, block_rows)]
        )
    longest = max((len(b) for b in per_gender), default=0)
    return [b[k] for k in range(longest) for b in per_gender if k < len(b)]


def block_pairs(block: tuple[int, int, int]) -> int:
    """Photo pairs a block multiplies: its rows against every later row of their gender."""
    first, end, gender_end = block
    n, later = end - first, gender_end - end
    return n * (n - 1) // 2 + n * later


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
    """Rows [first, end) against every later row of their gender: the pairs above the floor.

    Rows and column chunks are read into this block's own buffers (read_scan_rows): the projections
    may be a file much larger than the process (store.ProjectionFile)."""
    first, end, gender_end = block
    proj = photo_set.projections
    d = proj.shape[1]
    floor_sq = scale.sqdist(floor)
    near_sq, approve_sq = scale.sqdist(near_from), scale.sqdist(approve_at)
    exact_below = max(near_sq, approve_sq) + EXACT_MARGIN
    # Rows [a, 1, -|a|^2/2] against columns [b, -|b|^2/2, 1]: the product is -|a - b|^2 / 2.
    # Padded with zeros to a multiple of 8 columns: the BLAS kernels run a third faster.
    width = scan_width(d)
    a_aug = read_scan_rows(proj, first, np.empty((end - first, width), np.float32))
    a_aug[:, [d, d + 1]] = a_aug[:, [d + 1, d]]  # the rows' order of the two norm columns
    cut = np.float32(-0.5 * (floor_sq + EXACT_MARGIN))
    g = int(photo_set.gender[first]) if end > first else 0
    tally = _Tally(scale, approve_at, near_from, floor_sq)
    # One set of buffers per block, written in place: memory stays flat however many chunks.
    full = min(column_chunk, max(gender_end - first, 1))
    b_buffer = np.empty((full, width), np.float32)
    product_buffer = np.empty((len(a_aug), full), np.float32)
    mask_buffer = np.empty((len(a_aug), full), bool)
    for c0 in range(first, gender_end, column_chunk):
        c1 = min(c0 + column_chunk, gender_end)
        n = c1 - c0
        b_aug = read_scan_rows(proj, c0, b_buffer[:n])
        product = product_buffer if n == full else np.empty((len(a_aug), n), np.float32)
        np.matmul(a_aug, b_aug.T, out=product)
        mask = mask_buffer if n == full else np.empty((len(a_aug), n), bool)
        np.greater_equal(product, cut, out=mask)
        # One flat pass over the mask (np.nonzero on two axes costs ten times as much here).
        flat = np.flatnonzero(mask)
        if not len(flat):
            continue
        sq = -2.0 * product.reshape(-1)[flat].astype(np.float64)
        ii, jj = np.divmod(flat, n)
        ok = (jj + c0 > ii + first) & (photo_set.member_index[ii + first] != photo_set.member_index[jj + c0])
        ii, jj, sq = ii[ok], jj[ok], sq[ok]
        # Pairs in the near band or above, and pairs at the floor's edge: the exact distance, as the
        # engine computes it (the product's float32 rounding must not decide a count at approve_at),
        # from the rows and columns this chunk holds.
        where = np.flatnonzero((sq <= exact_below) | (np.abs(sq - floor_sq) <= EXACT_MARGIN))
        for start in range(0, len(where), EXACT_CHUNK):  # bounded memory however many pairs are near
            part = where[start : start + EXACT_CHUNK]
            diff = a_aug[ii[part], :d].astype(np.float64)
            diff -= b_aug[jj[part], :d]
            sq[part] = np.einsum("ij,ij->i", diff, diff)
        # Counted chunk by chunk: a block's pairs above the floor grow with the members (millions
        # in a block at a million members); only those at approve_at are kept.
        tally.add(photo_set, ii + first, jj + c0, sq)
    return tally.result(g, keep)


class _Tally:
    """A block's counts, added chunk by chunk, and its pairs at or above approve_at."""

    def __init__(self, scale: Scale, approve_at: float, near_from: float, floor_sq: float):
        self.scale, self.approve_at, self.near_from, self.floor_sq = scale, approve_at, near_from, floor_sq
        self.at = self.near = self.above_floor = 0
        self.tail = np.zeros(len(TAIL_THRESHOLDS), np.int64)
        self.histogram = np.zeros(HISTOGRAM_BINS, np.int64)
        self.band_at = np.zeros(len(AGE_BANDS), np.int64)
        self.band_near = np.zeros(len(AGE_BANDS), np.int64)
        self.band_seen = np.zeros(len(AGE_BANDS), bool)
        self.pairs_i, self.pairs_j, self.pairs_s = [], [], []

    def add(self, photo_set: PhotoSet, ii: np.ndarray, jj: np.ndarray, sq: np.ndarray) -> None:
        if len(ii) and len(photo_set.excluded):
            codes = photo_set.pair_code(photo_set.member_index[ii], photo_set.member_index[jj])
            pos = np.searchsorted(photo_set.excluded, codes)
            hit = (pos < len(photo_set.excluded)) & (
                photo_set.excluded[np.minimum(pos, len(photo_set.excluded) - 1)] == codes
            )
            ii, jj, sq = ii[~hit], jj[~hit], sq[~hit]
        above = sq <= self.floor_sq  # similarity at or above the floor (exactly, for those near it)
        ii, jj, sq = ii[above], jj[above], sq[above]
        if not len(ii):
            return
        similarity = self.scale.similarity(sq)
        at = similarity >= self.approve_at
        near = (similarity >= self.near_from) & ~at
        self.at += int(at.sum())
        self.near += int(near.sum())
        self.above_floor += len(ii)
        self.tail += [int((similarity >= t).sum()) for t in TAIL_THRESHOLDS]
        self.histogram += np.bincount(
            np.minimum(
                (np.sqrt(sq) / math.sqrt(self.floor_sq) * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1
            ),
            minlength=HISTOGRAM_BINS,
        )
        band_a, band_b = photo_set.band[ii], photo_set.band[jj]
        same_band = (band_a == band_b) & (band_a >= 0)
        for b in range(len(AGE_BANDS)):
            in_band = same_band & (band_a == b)
            if in_band.any():
                self.band_seen[b] = True
                self.band_at[b] += int((at & in_band).sum())
                self.band_near[b] += int((near & in_band).sum())
        if at.any():
            self.pairs_i.append(ii[at])
            self.pairs_j.append(jj[at])
            self.pairs_s.append(similarity[at])

    def result(self, g: int, keep: int) -> BlockResult:
        gname = GENDERS[g]
        counts = {
            "genders": {
                gname: {"at_approve": self.at, "near": self.near, "tail": [int(x) for x in self.tail]}
            },
            "bands": {
                f"{gname}|{name}": {"at_approve": int(self.band_at[b]), "near": int(self.band_near[b])}
                for b, name in enumerate(_band_names())
                if self.band_seen[b]
            },
            "histogram": {gname: self.histogram.tolist()},
            "above_floor": self.above_floor,
        }
        if not self.pairs_i:
            return BlockResult(counts, [])
        ii, jj = np.concatenate(self.pairs_i), np.concatenate(self.pairs_j)
        similarity = np.concatenate(self.pairs_s)
        order = np.argsort(-similarity, kind="stable")[:keep]
        pairs = [
            (int(a), int(b), float(s))
            for a, b, s in zip(ii[order], jj[order], similarity[order], strict=True)
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
