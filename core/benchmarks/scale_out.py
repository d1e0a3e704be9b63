"""Scale-out benchmark: verifications per second of one API worker process held to one core, then of
two held to one core each, measured in one run on the same database and photo store.

    python -m core.benchmarks.scale_out [--seconds 40] [--concurrency 6] [--db-url URL] [--json OUT]

Each worker is a `python -m core.api` process started under `taskset -c CORE` on its own loopback
port; the client spreads its connections over them (what a proxy in front does). Closed loop:
`concurrency` clients send POST /v1/verifications/upload (a new member with a real sample pair each
time: checks, engine, 1:N search, storage) back to back for `seconds`. Afterwards every result is
read back through the API and counted in the database: each verification must be stored exactly
once. The photo store is PHOTO_STORE_URL when set (e.g. an S3 bucket), else a temporary folder; the
database --db-url (MariaDB for a fair figure), else a temporary SQLite file.

Prints and writes: verifications/s, latency p50/p95, errors, stored-once check per setup, and the
ratio (target >= 1.6). The client itself needs CPU too: on a 2-core machine it shares the cores
with the workers, which understates the ratio; the figure is what this machine gives.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from core import config
from core.benchmarks.load_test import _free_port, sample_pairs


class Workers:
    """N API processes on one database and store, each pinned to one core when taskset exists."""

    def __init__(self, n: int, db_url: str, store_url: str, log_dir: Path, pin: bool = True):
        self.n, self.db_url, self.store_url, self.log_dir = n, db_url, store_url, log_dir
        self.pin = pin and shutil.which("taskset") is not None
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "PHOTO_STORE_URL": store_url,
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        self.env.pop("JOB_BROKER_URL", None)
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def start(self, timeout_s: float = 600.0) -> None:
        import httpx

        cores = os.cpu_count() or 1
        for i in range(self.n):
            port = _free_port()
            cmd = [sys.executable, "-m", "core.api", "--port", str(port), "--log-level", "warning"]
            if self.pin:
                cmd = ["taskset", "-c", str(i % cores), *cmd]
            log = open(self.log_dir / f"api-{self.n}-{i}.log", "w")
            self.procs.append(
                subprocess.Popen(
                    cmd, cwd=config.PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
                )
            )
            self.urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + timeout_s
        for url, proc in zip(self.urls, self.procs, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"an API worker exited; see {self.log_dir}")
                try:
                    if httpx.get(f"{url}/health", timeout=5).json().get("status") == "ok":
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"API worker {url} not ready after {timeout_s:.0f} s")
                time.sleep(1)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def saturate(urls: list[str], key: str, seconds: float, concurrency: int, tag: str) -> dict:
    """Closed loop over the workers; every result read back."""
    import httpx

    pairs = sample_pairs()
    counter = itertools.count()
    lock = threading.Lock()
    ok: list[tuple[int, str, float]] = []  # (result id, worker url, latency ms)
    errors: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds

    def client_loop(n: int):
        url = urls[n % len(urls)]
        with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": key}) as client:
            while time.perf_counter() < stop_at:
                i = next(counter)
                gallery, verification, gender = pairs[i % len(pairs)]
                started = time.perf_counter()
                try:
                    r = client.post(
                        "/v1/verifications/upload",
                        data={
                            "member_id": f"scale-{tag}-{i:06d}",
                            "registered_gender": gender,
                            "enrol": "true",
                        },
                        files={
                            "gallery": ("g.jpg", gallery, "image/jpeg"),
                            "verification": ("v.jpg", verification, "image/jpeg"),
                        },
                    )
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    if status == 201:
                        ok.append((r.json()["id"], url, (time.perf_counter() - started) * 1000))
                    else:
                        errors[str(status)] = errors.get(str(status), 0) + 1

    # One warm-up request per worker (index, connections), not counted.
    for url in urls:
        saturate_one = httpx.post(
            f"{url}/v1/verifications/upload",
            data={"member_id": f"scale-{tag}-warm-{url[-5:]}", "registered_gender": "M", "enrol": "true"},
            files={
                "gallery": ("g.jpg", pairs[0][0], "image/jpeg"),
                "verification": ("v.jpg", pairs[0][1], "image/jpeg"),
            },
            headers={"X-API-Key": key},
            timeout=120,
        )
        if saturate_one.status_code != 201:
            raise RuntimeError(
                f"warm-up failed on {url}: {saturate_one.status_code} {saturate_one.text[:200]}"
            )
    started = time.perf_counter()
    stop_at = started + seconds
    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    read_back = 0
    with httpx.Client(timeout=30, headers={"X-API-Key": key}) as client:
        for result_id, url, _ in ok:
            r = client.get(f"{url}/v1/verifications/{result_id}")
            read_back += r.status_code == 200 and r.json()["id"] == result_id
    latency = np.array([ms for _, _, ms in ok]) if ok else np.array([np.nan])
    return {
        "workers": len(urls),
        "verifications": len(ok),
        "seconds": round(elapsed, 2),
        "per_second": round(len(ok) / elapsed, 2),
        "per_worker": {u: sum(1 for _, w, _ in ok if w == u) for u in urls},
        "latency_p50_ms": round(float(np.nanpercentile(latency, 50)), 1),
        "latency_p95_ms": round(float(np.nanpercentile(latency, 95)), 1),
        "errors": errors,
        "read_back": read_back,
    }


def _stored_once(db_url: str, tag: str) -> tuple[int, int]:
    """(results stored for this run's members, distinct members): equal when nothing is stored twice."""
    from sqlalchemy import func, select

    from core.storage.db import make_engine
    from core.storage.schema import VerificationResult

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            where = VerificationResult.member_id.like(f"scale-{tag}-%")
            n = conn.scalar(select(func.count()).select_from(VerificationResult).where(where))
            members = conn.scalar(
                select(func.count(func.distinct(VerificationResult.member_id))).where(where)
            )
        return int(n), int(members)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.benchmarks.scale_out", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument(
        "--concurrency", type=int, default=6, help="client connections (spread over the workers)"
    )
    parser.add_argument("--db-url", help="database (default: a temporary SQLite file)")
    parser.add_argument("--no-pin", action="store_true", help="do not hold each worker to one core")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from core.api.keys import create_key
    from core.storage.db import init_db
    from core.storage.db import session_factory as make_factory

    with tempfile.TemporaryDirectory(prefix="faceverify-scale-") as tmp:
        root = Path(tmp)
        db_url = args.db_url or f"sqlite:///{root / 'scale.sqlite3'}"
        store_url = config.setting("PHOTO_STORE_URL") or str(root / "photos")
        engine = init_db(db_url)
        with make_factory(engine)() as session:
            key, _ = create_key(session, f"scale-{time.strftime('%H%M%S')}", "backend")
        engine.dispose()
        runs = []
        for n in (1, 2):
            workers = Workers(n, db_url, store_url, root, pin=not args.no_pin)
            print(
                f"starting {n} API worker(s){' pinned to one core each' if workers.pin else ''} ...",
                flush=True,
            )
            try:
                workers.start()
                tag = f"{time.strftime('%H%M%S')}-{n}"
                figures = saturate(workers.urls, key, args.seconds, args.concurrency, tag)
            finally:
                workers.stop()
            figures["stored"], figures["distinct_members"] = _stored_once(db_url, tag)
            figures["stored_exactly_once"] = (
                figures["stored"] == figures["distinct_members"] == figures["verifications"] + n
            )  # + the warm-up request of each worker
            runs.append(figures)
            print(
                f"{n} worker(s): {figures['per_second']:.2f} verifications/s, p50 {figures['latency_p50_ms']:.0f} ms, "
                f"p95 {figures['latency_p95_ms']:.0f} ms, errors {figures['errors'] or 0}, read back "
                f"{figures['read_back']}/{figures['verifications']}, stored exactly once: {figures['stored_exactly_once']}",
                flush=True,
            )
    ratio = runs[1]["per_second"] / runs[0]["per_second"] if runs[0]["per_second"] else float("nan")
    report = {"runs": runs, "ratio_2_vs_1": round(ratio, 2), "target": 1.6, "cores": os.cpu_count()}
    print(f"two workers / one worker: {ratio:.2f}x (target >= 1.6x) on {os.cpu_count()} cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    ok = all(r["stored_exactly_once"] and not r["errors"] for r in runs)
    return 0 if ok and ratio >= 1.6 else 1


if __name__ == "__main__":
    sys.exit(main())
