"""Benchmark of the self-measurement (core.workflows.self_measurement) on synthetic members.

Synthetic members look like real ones: their pretrained embeddings (the tower's input, dlib and
SFace side by side) are drawn from a Gaussian fitted to the real sample photos' embeddings, computed
with the product's own feature path (data/sample, 120 photos of 24 people): each member's face is
the sample mean plus half of a random mix of the between-person differences plus per-dimension
noise (the rest of the between-person variance); each photo adds a random mix of the within-person differences of one person's photos.
SFace's half is unit length again, as the network gives it. Planted look-alike pairs are two
member ids holding photos of one synthetic face; those whose photos reach approve_at are the
ones the measurement must find.

Everything goes through the real path: members, photos and embeddings rows in a fresh SQLite
database, the shipped model's tower and similarity, the stored runs and pairs.

    run_benchmark(members, planted=20, seed=0, work_dir=None, block_rows=None) -> dict
        seconds (the measurement), populate_seconds, peak_mb, planted, planted_found, ...
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from core import config

SAMPLE_CACHE = "self_measure_sample_embeddings.npz"
INSERT_CHUNK = 5000


def peak_mb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_embeddings(networks: tuple[str, ...] = ("dlib", "sface8")) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, person index) of the sample photos through the product's feature path, cached
    in the cache folder under the embedding id (another network version computes them again)."""
    from core.training import embedding_cache
    from core.training.pipeline import lfw_photos
    from core.workflows.search import pretrained_model_id

    cache = config.cache_dir() / SAMPLE_CACHE
    key = pretrained_model_id(networks)
    if cache.exists():
        stored = np.load(cache, allow_pickle=False)
        if str(stored["key"]) == key:
            return stored["embeddings"], stored["person"]
    photos = lfw_photos(config.SAMPLE_DIR / "images", config.SAMPLE_DIR / "people.csv")
    found = embedding_cache.featurise([p.ref for p in photos], networks=networks)
    people = sorted({p.person for p in photos})
    rows, person = [], []
    for p in photos:
        sha = p.ref.sha256
        if sha not in found.vectors[""]:
            continue
        parts = [found.vectors[""][sha][:128]] + [found.extra[n][sha] for n in networks if n != "dlib"]
        rows.append(np.concatenate(parts).astype(np.float32))
        person.append(people.index(p.person))
    embeddings, person = np.stack(rows), np.asarray(person, np.int32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, embeddings=embeddings, person=person, key=np.array(key))
    return embeddings, person


class FaceGenerator:
    """Draws synthetic faces and photos from the sample photos' embedding distribution."""

    def __init__(self, embeddings: np.ndarray, person: np.ndarray, seed: int = 0, dlib_dim: int = 128):
        self.rng = np.random.default_rng(seed)
        self.dlib_dim = dlib_dim
        people = np.unique(person)
        means = np.stack([embeddings[person == p].mean(axis=0) for p in people])
        self.mean = means.mean(axis=0)
        self.between = (means - self.mean) / np.sqrt(max(len(people) - 1, 1))
        within = embeddings - means[np.searchsorted(people, person)]
        self.within = within / np.sqrt(max(len(embeddings) - len(people), 1))
        self.per_dimension = means.std(axis=0, ddof=1)

    def faces(self, n: int) -> np.ndarray:
        # Half the between-person spread along the sample's own differences, the rest per dimension:
        # 24 people span only 23 directions, and faces drawn in them alone are far too alike
        # (2% of synthetic impostors at approve_at against 0.06% of the sample's real ones); this
        # mix gives 3.3% of impostor pairs above similarity 0.01 (real: 3.4%), 0.4% above 0.1
        # (real: 0.6%) and 0.01% at approve_at.
        mix = self.rng.standard_normal((n, len(self.between)))
        noise = self.rng.standard_normal((n, self.mean.shape[0])) * self.per_dimension
        return (self.mean + 0.5 * (mix @ self.between) + np.sqrt(0.75) * noise).astype(np.float32)

    def photos(self, faces: np.ndarray, spread: float = 1.0) -> np.ndarray:
        mix = self.rng.standard_normal((len(faces), len(self.within)))
        out = faces + spread * (mix @ self.within)
        d = self.dlib_dim
        if out.shape[1] > d:  # SFace's part is unit length, as the network gives it
            out[:, d:] /= np.linalg.norm(out[:, d:], axis=1, keepdims=True)
        return out.astype(np.float32)


def populate(
    session_factory, members: int, planted: int, seed: int, model, *, photos_per_member: int = 2
) -> dict:
    """Insert synthetic members (half women), their photos and embeddings; plant look-alikes.

    Returns {"planted_pairs": [(member a, member b)], "planted_above": [...]} where planted_above are
    the planted pairs with a photo pair at or above approve_at by the engine's own formula.
    """
    from core.storage.schema import GALLERY, VERIFICATION, Embedding, Member, Photo, utcnow
    from core.verification.networks import networks_of
    from core.workflows import self_measurement as sm
    from core.workflows.search import embedding_dim, pretrained_model_id

    networks = networks_of(model.metadata)
    model_id, dim = pretrained_model_id(networks), embedding_dim(networks)
    embeddings, person = sample_embeddings(networks)
    generator = FaceGenerator(embeddings, person, seed)
    kinds = (GALLERY, VERIFICATION)[:photos_per_member]
    now = utcnow()
    rng = np.random.default_rng(seed + 1)
    # The planted pairs: member 2i+1 of the pair repeats member 2i's face (the same person twice).
    planted_ids = [(f"S{2 * i:07d}", f"S{2 * i + 1:07d}") for i in range(planted)]
    twin_of = {b: a for a, b in planted_ids}
    face_of: dict[str, np.ndarray] = {}
    photo_vectors: dict[str, list[np.ndarray]] = {}
    photo_id = 0
    engine = session_factory.kw["bind"]
    for first in range(0, members, INSERT_CHUNK):
        ids = [f"S{i:07d}" for i in range(first, min(first + INSERT_CHUNK, members))]
        faces = generator.faces(len(ids))
        for k, member_id in enumerate(ids):
            if member_id in twin_of:
                faces[k] = face_of[twin_of[member_id]]
            elif member_id in {a for a, _ in planted_ids}:
                face_of[member_id] = faces[k]
        member_rows, photo_rows, embedding_rows = [], [], []
        for member_id in ids:
            gender = "F" if (int(member_id[1:]) // 2) % 2 == 0 else "M"  # a planted pair shares one
            member_rows.append(
                {
                    "id": member_id,
                    "gender": gender,
                    "status": "verified",
                    "created_at": now,
                    "updated_at": now,
                    "birth_year": int(rng.integers(1956, 1977)),
                }
            )
        for kind in kinds:
            vectors = generator.photos(faces, 1.0)
            for k, member_id in enumerate(ids):
                photo_id += 1
                sha = f"{photo_id:064x}"
                photo_rows.append(
                    {
                        "id": photo_id,
                        "member_id": member_id,
                        "kind": kind,
                        "sha256": sha,
                        "stored_path": f"synthetic/{sha}.jpg",
                        "size_bytes": 0,
                        "current": True,
                        "created_at": now,
                    }
                )
                embedding_rows.append(
                    {
                        "photo_sha256": sha,
                        "model_id": model_id,
                        "dim": dim,
                        "vector": np.asarray(vectors[k], "<f4").tobytes(),
                        "created_at": now,
                    }
                )
                if member_id in twin_of or member_id in face_of:
                    photo_vectors.setdefault(member_id, []).append(vectors[k])
        with engine.begin() as conn:
            conn.execute(Member.__table__.insert(), member_rows)
            conn.execute(Photo.__table__.insert(), photo_rows)
            conn.execute(Embedding.__table__.insert(), embedding_rows)
    scale = sm.model_scale(model)
    approve_at = float(model.operating_points.approve_at)
    above = []
    for a, b in planted_ids:
        if a not in photo_vectors or b not in photo_vectors:
            continue
        pa = sm.project(model, np.stack(photo_vectors[a])).astype(np.float64)
        pb = sm.project(model, np.stack(photo_vectors[b])).astype(np.float64)
        sq = ((pa[:, None, :] - pb[None, :, :]) ** 2).sum(axis=2)
        if (scale.similarity(sq) >= approve_at).any():
            above.append((a, b))
    return {"planted_pairs": planted_ids, "planted_above": above}


class _GenderRows:
    """The benchmark's photo rows by gender, as the measurement sorts them (for counting blocks)."""

    def __init__(self, members: int, photos_per_member: int):
        women = sum(1 for i in range(members) if (i // 2) % 2 == 0)
        self.sizes = (women * photos_per_member, (members - women) * photos_per_member)

    def gender_range(self, g: int) -> tuple[int, int]:
        return (0, self.sizes[0]) if g == 0 else (self.sizes[0], self.sizes[0] + self.sizes[1])


def _planted_in_blocks(pairs, scanned, photos_per_member: int) -> list[tuple[str, str]]:
    """The planted pairs whose first member's photos are all rows of the scanned blocks (so the
    pair is multiplied). Member i is the (i // 4 * 2 + i % 2)-th of its gender, in id order."""
    out = []
    for a, b in pairs:
        i = int(a[1:])
        gender = 0 if (i // 2) % 2 == 0 else 1
        rows = (i // 4 * 2 + i % 2) * photos_per_member
        if rows + photos_per_member <= scanned[gender]:
            out.append((a, b))
    return out


def run_benchmark(
    members: int,
    planted: int = 20,
    seed: int = 0,
    work_dir: Path | None = None,
    block_rows: int | None = None,
    photos_per_member: int = 2,
    blocks: int | None = None,
) -> dict:
    """Populate a fresh SQLite database with synthetic members, measure, and report.

    blocks: measure only the run's first `blocks` blocks (the genders in turn, the largest blocks
    first), with every photo loaded as in a whole run: the memory is the whole run's, the time is
    measured on that share of the pairs and extrapolated to all of them in proportion."""
    from sqlalchemy import select

    from core.storage.db import init_db, make_engine, session_factory
    from core.storage.schema import SelfMeasurementPair
    from core.verification.heads import load_version
    from core.workflows import self_measurement as sm
    from core.workflows.self_measurement.scan import block_pairs
    from core.workflows.self_measurement.scan import blocks as all_blocks

    planted = min(planted, members // 2)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        engine = make_engine(url)
        init_db(engine)
        factory = session_factory(engine)
        model = load_version(None, config.models_dir())
        started = time.perf_counter()
        truth = populate(factory, members, planted, seed, model, photos_per_member=photos_per_member)
        populate_s = time.perf_counter() - started
        started, cpu_started = time.perf_counter(), time.process_time()
        # Enough pairs kept that a planted one is never crowded out of the stored list by chance.
        keep = max(sm.DEFAULT_PAIRS_KEPT, 50 * planted)
        summary = sm.measure(
            factory, model, "benchmark", block_rows=block_rows, pairs_kept=keep, stop_after_blocks=blocks
        )
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started  # every thread's; wall ~ this / cores when idle
        with factory() as session:
            found = {
                (min(a, b), max(a, b))
                for a, b in session.execute(
                    select(SelfMeasurementPair.member_a_id, SelfMeasurementPair.member_b_id).where(
                        SelfMeasurementPair.run_id == summary["run_id"]
                    )
                ).all()
            }
        engine.dispose()
    planted_above = [(min(a, b), max(a, b)) for a, b in truth["planted_above"]]
    report = {
        "members": members,
        "photos": summary.get("photos", members * photos_per_member),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "load_seconds": summary["load_seconds"],
        "load_average": round(os.getloadavg()[0], 1),  # the machine's other work while it ran
        "populate_seconds": round(populate_s, 2),
        # One process: the tower's and the scan's (the projections are in a file, not in memory).
        "peak_mb": round(peak_mb(), 1),
        "processes": 1,
    }
    rows = _GenderRows(members, photos_per_member)
    every_block = all_blocks(rows, int(block_rows or sm.DEFAULT_BLOCK_ROWS))
    total_pairs = sum(block_pairs(b) for b in every_block)
    if summary.get("status") == sm.RUNNING:  # a share of the blocks: measured, then extrapolated
        done = every_block[: summary["blocks_done"]]
        share = sum(block_pairs(b) for b in done) / max(total_pairs, 1)
        scanned = [sum(e - f for f, e, _g in done if f < rows.sizes[0]), 0]
        scanned[1] = sum(e - f for f, e, _g in done) - scanned[0]
        planted_above = _planted_in_blocks(planted_above, scanned, photos_per_member)
        scan_s, scan_cpu = seconds - summary["load_seconds"], cpu_seconds - summary["load_cpu_seconds"]
        report.update(
            {
                "blocks": f"{summary['blocks_done']} of {summary['blocks_total']}",
                "pairs_share": round(share, 5),
                "scan_seconds_measured": round(scan_s, 2),
                "scan_cpu_seconds_measured": round(scan_cpu, 2),
                "seconds_extrapolated": round(summary["load_seconds"] + scan_s / share, 1),
                "cpu_seconds_extrapolated": round(summary["load_cpu_seconds"] + scan_cpu / share, 1),
            }
        )
    report.update(
        {
            "planted": len(planted_above),
            "planted_made": len(truth["planted_pairs"]),
            "planted_found": sum(1 for pair in planted_above if pair in found),
            "compared_pairs": summary["all"]["compared"] if "all" in summary else total_pairs,
        }
    )
    if "all" in summary:
        report.update(
            {
                "at_approve": summary["all"]["at_approve"]["k"],
                "fmr_upper": summary["all"]["at_approve"]["upper"],
                "above_floor": summary["above_floor"],
                "alert": summary["alert"],
                "model_version": summary["model_version"],
                "approve_at": summary["approve_at"],
            }
        )
    return report
