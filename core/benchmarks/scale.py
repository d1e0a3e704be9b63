"""The product at scale: a database filled to N members and a year of work, each page's service
functions timed as a page run calls them.

    python -m core bench scale --members N --url DATABASE_URL [--store DIR] [--json OUT]

The fill uses the product's schema (migrated by init_db) and its shapes: per member a gallery and
a verification photo (real sample photos from data/sample, each stored once in the photo store and
referred to by every member that uses it, with its pretrained embedding computed by the engine),
three results a member spread over the last 366 days in one batch a day (their analyses in the
side table), 15% flagged, most of those decided with a review, and the audit entries the product
writes (one per import and per decision, chained by core.storage.audit). Rows go in with bulk
inserts, in chunks; the audit entries through audit.log so the chain is the real one.
--no-fill times a database an earlier run filled (give the same --store).

Then, in one run:
- each page's functions as a page run calls them (first load, then a typical interaction),
  `--runs` times; `pages` keeps the worst in seconds;
- this process loads the engine and the 1:N index as the dashboard does on its first
  verification (`index_rows`);
- the API (`python -m core api serve` on a loopback port, this database and photo store):
  200 verifications of known members (a new selfie each, against the stored gallery photo),
  their histories and 200 1:N searches, one after another; `api` holds p50 / p95 / max in ms
  (member_history_p95_ms without the HTTP layer too);
- `peak_rss_mb`: this process's peak (it plays the dashboard) and the API process's, sampled
  from its start.

The targets are the product's: every first load <= 3 s, every interaction <= 1.5 s, a
verification p95 <= 250 ms and max <= 1 s, every process <= 1.5 GB.
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
    AuditEntry,
    Batch,
    Member,
    Photo,
    ResultAnalysis,
    Review,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow

FIRST_LOAD_S = 3.0
INTERACTION_S = 1.5
VERIFY_P95_MS, VERIFY_MAX_MS = 250.0, 1000.0  # a verification of a known member over the API
RSS_LIMIT_MB = 1500.0  # the dashboard and every API process
API_CALLS = 200
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
    # The photos' pretrained embeddings (the 1:N index's rows), computed by the engine once per file.
    from core.verification.engine import Engine
    from core.workflows.search.enrolment import enrol_missing

    enrolled = enrol_missing(factory, Engine.load(), store)
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
            # Each result's analyses in the side table, as store_result writes them.
            last = conn.scalar(select(func.max(ResultRow.id)))
            conn.execute(
                insert(ResultAnalysis),
                [
                    {
                        "result_id": last - len(rows) + 1 + k,
                        "gallery": _analysis(rng),
                        "verification": _analysis(rng),
                    }
                    for k in range(len(rows))
                ],
            )
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
        "embeddings": enrolled,
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
        "member_history_query_p95_ms": round(1000 * history[int(0.95 * (len(history) - 1))], 1)
        if history
        else None
    }
    return {"pages": {k: round(v, 3) for k, v in worst.items()}, "api": api}


def counts(url: str) -> dict:
    """What an earlier run filled (to time it again without filling)."""
    engine = db.init_db(db.make_engine(url))
    try:
        with db.session_factory(engine)() as session:

            def n(table) -> int:
                return session.scalar(select(func.count()).select_from(table))

            return {
                "members": n(Member),
                "photos": n(Photo),
                "results": n(ResultRow),
                "reviews": n(Review),
                "audit_entries": n(AuditEntry),
                "filled_before": True,
            }
    finally:
        engine.dispose()


def _selfies(n: int) -> list[bytes]:
    """n different selfies: the sample photos mirrored and cropped a little (none of them is a file
    the fill stored, so none is a replay)."""
    import io

    from PIL import Image, ImageOps

    images = sorted((config.DATA_DIR / "sample" / "images").glob("*.jpg"))
    out = []
    for i in range(n):
        with Image.open(images[i % len(images)]) as img:
            img = ImageOps.mirror(img.convert("RGB"))
            cut = 1 + i // len(images)
            img = img.crop((cut, cut, img.width - cut, img.height - cut))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=92)
            out.append(buf.getvalue())
    return out


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 1)


def time_api(url: str, store: Path, calls: int = API_CALLS) -> dict:
    """The API process on this database and photo store (core.benchmarks.load_test.Server): a
    verification of a known member (a new selfie against the stored gallery photo, stored as a
    result), the member's history, and a 1:N search, `calls` of each one after another; then
    p50 / p95 / max in ms, and the process's peak resident memory from its start."""
    import base64

    import httpx

    from core.benchmarks.api_memory import RssSampler
    from core.benchmarks.load_test import Server

    engine = db.make_engine(url)
    with db.session_factory(engine)() as session:
        ids = list(
            session.scalars(
                select(Member.id)
                .where(Member.id.in_(select(Photo.member_id).where(Photo.kind == "gallery", Photo.current)))
                .order_by(Member.id)
                .limit(calls)
            )
        )
    engine.dispose()
    selfies = [base64.b64encode(b).decode("ascii") for b in _selfies(calls)]
    server = Server(url, None)
    server.env["PHOTO_STORE_DIR"] = str(store)
    timings: dict[str, list[float]] = {"verification": [], "member_history": [], "search_1n": []}
    errors: dict[str, int] = {}
    try:
        started = time.perf_counter()
        backend, _reader = server.start()
        ready_s = time.perf_counter() - started
        headers = {"X-API-Key": backend}
        with RssSampler(server.proc.pid) as sampler, httpx.Client(base_url=server.url, timeout=60) as client:

            def timed(name: str, send) -> None:
                t0 = time.perf_counter()
                answer = send()
                if answer.status_code >= 300:
                    errors[f"{name} {answer.status_code}"] = errors.get(f"{name} {answer.status_code}", 0) + 1
                timings[name].append(time.perf_counter() - t0)

            for i in range(calls):
                member = ids[i % len(ids)]
                timed(
                    "verification",
                    lambda m=member, i=i: client.post(
                        "/v1/verifications",
                        json={"member_id": m, "verification_base64": selfies[i]},
                        headers=headers,
                    ),
                )
                timed(
                    "member_history",
                    lambda m=member: client.get(f"/v1/members/{m}/verifications", headers=headers),
                )
                timed(
                    "search_1n",
                    lambda i=i: client.post(
                        "/v1/search", json={"photo_base64": selfies[-1 - i], "k": 10}, headers=headers
                    ),
                )
        peak = sampler.peak
    finally:
        server.stop()
    api: dict = {"calls_each": calls, "server_ready_s": round(ready_s, 1), "errors": errors}
    for name, values in timings.items():
        api[f"{name}_p50_ms"] = _p(values, 0.5)
        api[f"{name}_p95_ms"] = _p(values, 0.95)
        api[f"{name}_max_ms"] = _p(values, 1.0)
    return {"api": api, "api_peak_rss_mb": round(peak, 1)}


def _dashboard_index(url: str) -> int:
    """What the dashboard process holds besides its pages: the engine and the 1:N index (loaded
    by its first verification or search); returns the index's rows."""
    from core.verification.engine import Engine
    from core.workflows import search

    engine = db.make_engine(url)
    try:
        loaded = Engine.load()
        search.register_engine(loaded)
        return len(search.index_for(engine, loaded.model_version))  # loaded from the database
    finally:
        engine.dispose()


def run(
    members: int,
    url: str,
    page_runs,
    store: Path | None = None,
    runs: int = 3,
    *,
    fill_first: bool = True,
    api_calls: int = API_CALLS,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = store or Path(tmp) / "photo_store"
        filled = fill(url, members, store) if fill_first else counts(url)
        timed = time_pages(url, page_runs, runs)
        index_rows = _dashboard_index(url)
        api = time_api(url, store, api_calls) if api_calls else {"api": {}, "api_peak_rss_mb": None}
    first = {k: v for k, v in timed["pages"].items() if not k.endswith(".interaction")}
    interactions = {k: v for k, v in timed["pages"].items() if k.endswith(".interaction")}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {**timed["api"], **api["api"]}
    return {
        "fill": filled,
        "pages": timed["pages"],
        "api": figures,
        "index_rows": index_rows,
        "peak_rss_mb": {"dashboard (this process)": round(peak, 1), "api": api["api_peak_rss_mb"]},
        "targets_met": all(v <= FIRST_LOAD_S for v in first.values())
        and all(v <= INTERACTION_S for v in interactions.values())
        and _api_met(figures, peak, api["api_peak_rss_mb"]),
    }


def _api_met(api: dict, dashboard_mb: float, api_mb: float | None) -> bool:
    if api.get("verification_p95_ms") is None:
        return dashboard_mb <= RSS_LIMIT_MB
    return (
        api["verification_p95_ms"] <= VERIFY_P95_MS
        and api["verification_max_ms"] <= VERIFY_MAX_MS
        and not api.get("errors")
        and dashboard_mb <= RSS_LIMIT_MB
        and (api_mb or 0) <= RSS_LIMIT_MB
    )


def print_report(report: dict) -> None:
    print(f"filled: {report['fill']}")
    for name, seconds in report["pages"].items():
        print(f"  {name:32s} {seconds:7.3f} s")
    for name, value in report["api"].items():
        print(f"  api {name:28s} {value}")
    print(f"peak RSS: {report['peak_rss_mb']}")
    print("targets met" if report["targets_met"] else "targets NOT met")
