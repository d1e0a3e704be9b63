"""The product at scale: a database filled to N members and a year of work, each page's service
functions timed as a page run calls them.

    python -m core bench scale --members N --url DATABASE_URL [--store DIR] [--json OUT]

The fill uses the product's schema (migrated by init_db) and its shapes: per member a gallery and
a verification photo (real sample photos from data/sample, each stored once in the photo store and
referred to by every member that uses it), three results a member spread over the last 366 days
in one batch a day, 15% flagged, most of those decided with a review, and the audit entries the
product writes (one per import and per decision, chained by core.storage.audit). Rows go in with
bulk inserts, in chunks; the audit entries through audit.log so the chain is the real one.

Then each page's functions run twice (first load, then a typical interaction) and three times in
all; `pages` keeps the worst of the runs in seconds. `api` holds p95 in ms of the member history
(GET /v1/members/{id}/verifications calls queries.member_history). `peak_rss_mb` is this
process's peak resident memory (it plays the dashboard's part).

The target is the product's: every first load <= 3 s, every interaction <= 1.5 s.
"""

from __future__ import annotations

import random
import resource
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

from core import config
from core.storage import audit, db
from core.storage.schema import (
    Batch,
    Member,
    Photo,
    Review,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow

FIRST_LOAD_S = 3.0
INTERACTION_S = 1.5
RESULTS_PER_MEMBER = 3
FLAGGED_SHARE = 0.15
REVIEWED_SHARE = 0.95  # of the flagged ones
CHUNK = 5000
MODEL_VERSIONS = ("sface-v1", "sface-v2")


def _analysis(rng: random.Random) -> dict:
    """A photo's analysis as the engine stores it: face box, landmarks, quality, timings."""
    return {
        "faces": 1,
        "box": [rng.randint(40, 90), rng.randint(40, 90), rng.randint(120, 180), rng.randint(120, 180)],
        "landmarks": [[round(rng.uniform(40, 200), 1), round(rng.uniform(40, 200), 1)] for _ in range(5)],
        "quality": {
            "sharpness": round(rng.uniform(50, 400), 2),
            "brightness": round(rng.uniform(80, 180), 2),
            "face_size": round(rng.uniform(0.2, 0.6), 3),
            "occlusion": round(rng.uniform(0, 0.3), 3),
            "pose": {"yaw": round(rng.uniform(-20, 20), 1), "pitch": round(rng.uniform(-15, 15), 1)},
        },
        "error": None,
        "timings": {"detect_ms": round(rng.uniform(8, 30), 2), "embed_ms": round(rng.uniform(10, 40), 2)},
    }


def fill(url: str, members: int, store_dir: Path, seed: int = 7) -> dict:
    """Fill an empty database; returns counts and seconds."""
    from core.storage.photostore import PhotoStore

    started = time.perf_counter()
    rng = random.Random(seed)
    engine = db.init_db(db.make_engine(url))
    factory = db.session_factory(engine)
    store = PhotoStore(store_dir, fsync=False)
    images = sorted((config.DATA_DIR / "sample" / "images").glob("*.jpg"))
    stored = []
    for path in images:
        data = path.read_bytes()
        photo = store.put(data)  # each real photo stored once
        stored.append((photo.sha256, photo.relative_path, len(data)))
    now = utcnow()
    year_ago = now - timedelta(days=366)
    with engine.begin() as conn:
        for start in range(0, members, CHUNK):
            ids = range(start, min(start + CHUNK, members))
            conn.execute(
                insert(Member),
                [
                    {
                        "id": f"M{i:07d}",
                        "gender": "MF"[i % 2],
                        "status": "verified",
                        "created_at": year_ago + timedelta(seconds=i * 366 * 86400 // max(members, 1)),
                        "updated_at": now,
                    }
                    for i in ids
                ],
            )
            photos = []
            for i in ids:
                g, v = rng.sample(stored, 2)
                for kind, (sha, rel, size) in (("gallery", g), ("verification", v)):
                    photos.append(
                        {
                            "member_id": f"M{i:07d}",
                            "kind": kind,
                            "sha256": sha,
                            "stored_path": rel,
                            "size_bytes": size,
                            "current": True,
                            "created_at": now,
                        }
                    )
            conn.execute(insert(Photo), photos)
        days = [year_ago + timedelta(days=d) for d in range(366)]
        conn.execute(
            insert(Batch),
            [
                {
                    "name": f"daily upload {d:%Y-%m-%d}",
                    "source": "upload",
                    "created_by": "ops",
                    "created_at": d,
                    "model_version": MODEL_VERSIONS[0 if d < now - timedelta(days=60) else 1],
                    "status": "completed",
                    "n_items": 0,
                }
                for d in days
            ],
        )
        batch_ids = list(conn.scalars(select(Batch.id).order_by(Batch.id)))
        photo_of = dict(
            ((m, k), pid)
            for pid, m, k in conn.execute(select(Photo.id, Photo.member_id, Photo.kind)).tuples()
        )
    n_results = members * RESULTS_PER_MEMBER
    decided = []
    with engine.begin() as conn:
        for start in range(0, n_results, CHUNK):
            rows = []
            for r in range(start, min(start + CHUNK, n_results)):
                member = f"M{rng.randrange(members):07d}"
                day = rng.randrange(366)
                flagged = rng.random() < FLAGGED_SHARE
                reviewed = flagged and rng.random() < REVIEWED_SHARE
                similarity = (
                    rng.uniform(0.4, 0.6)
                    if flagged
                    else rng.choice([rng.uniform(0.6, 1), rng.uniform(0, 0.4)])
                )
                status = "flagged" if flagged else ("auto_approved" if similarity >= 0.6 else "auto_rejected")
                truth = None
                if reviewed:
                    truth = rng.random() < 0.7
                    status = "approved" if truth else "rejected"
                created = days[day] + timedelta(seconds=rng.randrange(86400))
                rows.append(
                    {
                        "batch_id": batch_ids[day],
                        "member_id": member,
                        "gallery_photo_id": photo_of[(member, "gallery")],
                        "verification_photo_id": photo_of[(member, "verification")],
                        "same_person": similarity >= 0.5,
                        "similarity": similarity,
                        "threshold": 0.5,
                        "band_low": 0.4,
                        "band_high": 0.6,
                        "predicted_gender": rng.choice("MF"),
                        "gender_confidence": rng.uniform(0.5, 1),
                        "registered_gender": rng.choice("MF"),
                        "status": status,
                        "flags": [{"code": "uncertain", "message": "similarity in the review band"}]
                        if flagged
                        else [],
                        "gallery_analysis": _analysis(rng),
                        "verification_analysis": _analysis(rng),
                        "timings": {"total_ms": rng.uniform(80, 200)},
                        "latency_ms": rng.uniform(60, 220),
                        "model_version": MODEL_VERSIONS[0 if day < 306 else 1],
                        "ground_truth_same": truth,
                        "ground_truth_gender": rng.choice("MF") if reviewed else None,
                        "created_at": created,
                        "decided_at": created + timedelta(hours=2) if reviewed else None,
                        "decided_by": "reviewer" if reviewed else None,
                        "checks": {"reuse": [], "exif_date": None},
                    }
                )
                if reviewed:
                    decided.append(
                        (r + 1, "approve" if truth else "reject", truth, created + timedelta(hours=2))
                    )
            conn.execute(insert(ResultRow), rows)
        first_id = conn.scalar(select(func.min(ResultRow.id)))
        for start in range(0, len(decided), CHUNK):
            conn.execute(
                insert(Review),
                [
                    {
                        "result_id": first_id + rid - 1,
                        "reviewer": "reviewer",
                        "decision": decision,
                        "same_person": truth,
                        "decided_at": at,
                    }
                    for rid, decision, truth, at in decided[start : start + CHUNK]
                ],
            )
    # The audit entries through the product's chain: one per import and per decision.
    n_audit = 0
    entries = [("import", "member", f"M{i:07d}") for i in range(members)]
    entries += [("decide", "result", first_id + rid - 1) for rid, _d, _t, _a in decided]
    for start in range(0, len(entries), CHUNK):
        with factory() as session:
            for action, target_type, target_id in entries[start : start + CHUNK]:
                audit.log(session, "ops", action, target_type, target_id, {"source": "scale benchmark"})
            session.commit()
        n_audit += len(entries[start : start + CHUNK])
    engine.dispose()
    return {
        "members": members,
        "photos": 2 * members,
        "stored_photo_files": len(stored),
        "results": n_results,
        "reviews": len(decided),
        "audit_entries": n_audit,
        "fill_s": round(time.perf_counter() - started, 1),
    }


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def time_pages(url: str, page_runs, runs: int = 3) -> dict:
    """name -> worst seconds over `runs`. page_runs(session_factory) -> (pages, interactions,
    clear): each page's functions as one page run calls them (core.dashboard.page_runs), the
    runs that repeat a page with nothing new, and a call that empties the pages' caches."""
    from core.storage import queries

    engine = db.make_engine(url)
    factory = db.session_factory(engine)
    pages, interactions, clear_caches = page_runs(factory)

    def with_session(call):
        def run():
            with factory() as session:
                call(session)

        return run

    worst: dict[str, float] = {}
    for _ in range(runs):
        clear_caches()
        for name, run in pages.items():
            worst[name] = max(worst.get(name, 0.0), _timed(run))
        for name, run in interactions.items():
            worst[name] = max(worst.get(name, 0.0), _timed(run))
    history = []
    with factory() as session:
        ids = list(
            session.scalars(
                select(Member.id)
                .order_by(func.random() if engine.dialect.name == "sqlite" else func.rand())
                .limit(200)
            )
        )
    for member_id in ids:
        history.append(_timed(with_session(lambda s, m=member_id: queries.member_history(s, m))))
    history.sort()
    engine.dispose()
    api = {
        "member_history_p95_ms": round(1000 * history[int(0.95 * (len(history) - 1))], 1) if history else None
    }
    return {"pages": {k: round(v, 3) for k, v in worst.items()}, "api": api}


def run(members: int, url: str, page_runs, store: Path | None = None, runs: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        filled = fill(url, members, store or Path(tmp) / "photo_store")
        timed = time_pages(url, page_runs, runs)
    first = {k: v for k, v in timed["pages"].items() if not k.endswith(".interaction")}
    interactions = {k: v for k, v in timed["pages"].items() if k.endswith(".interaction")}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "fill": filled,
        "pages": timed["pages"],
        "api": timed["api"],
        "peak_rss_mb": {"dashboard (this process)": round(peak, 1)},
        "targets_met": all(v <= FIRST_LOAD_S for v in first.values())
        and all(v <= INTERACTION_S for v in interactions.values()),
    }


def print_report(report: dict) -> None:
    print(f"filled: {report['fill']}")
    for name, seconds in report["pages"].items():
        print(f"  {name:32s} {seconds:7.3f} s")
    print(f"api: {report['api']}")
    print(f"peak RSS: {report['peak_rss_mb']}")
    print("targets met" if report["targets_met"] else "targets NOT met")
