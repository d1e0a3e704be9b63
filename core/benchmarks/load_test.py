"""Load test of the service API on loopback: verifications at a fixed rate for a bounded time.

    faceverify bench load --seconds 60 --rate 10 --json OUT.json
    faceverify bench load --url http://127.0.0.1:8000 --key KEY --reader-key KEY2 ...   (a running server)

The combined load test (two API workers, a queue worker and a dashboard batch at once on MariaDB +
SeaweedFS + a broker, with faults) is core.benchmarks.load_combined, built on run() below.

Without --url it starts `faceverify api serve` itself on a free port of 127.0.0.1 with a fresh
SQLite database and photo store in a temporary folder (or --db-url, e.g. a MariaDB database made
for the test), creates its keys, and stops the server at the end. Only loopback addresses are
accepted as targets.

Every request enrols a new member with a real sample pair (data/sample/pairs.csv, photos from
data/sample/images) through POST /v1/verifications/upload: photo checks, engine, duplicate search
over everyone enrolled so far, and storage, the whole path. Requests start on a fixed schedule
(open loop: request i at i / rate seconds), at most rate * seconds of them, each with a 30 s
timeout, and the run stops by itself. Afterwards every returned verification is read back with
GET /v1/verifications/{id} to check it was stored.

Prints and writes: achieved rate, the lowest rate over any 10-second window, errors by status,
client latency p50/p95/p99, the stored results, and the server-side latency from the results.
Exit code 0 when there was no error, every result was stored and the rate was held.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from core import config

MAX_SECONDS = 600
MAX_RATE = 100
REQUEST_TIMEOUT_S = 30.0
DRAIN_S = 60.0  # after the schedule ends, requests still running get at most this long
WINDOW_S = 10.0


@dataclass
class Outcome:
    index: int
    scheduled: float
    started: float
    finished: float
    status: int  # 0: no HTTP answer
    result_id: int | None = None
    error: str | None = None
    flagged: bool = False
    duplicate: bool = False


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def member_id(run_id: str, i: int) -> str:
    """The member ID request i of a run enrols (warm-up requests have negative i)."""
    return f"load-{run_id}-{i:05d}" if i >= 0 else f"load-{run_id}-warm{-i}"


def sample_pairs() -> list[tuple[bytes, bytes, str]]:
    """(gallery bytes, verification bytes, registered gender) for every sample pair."""
    images = config.SAMPLE_DIR / "images"
    genders = {}
    with open(config.SAMPLE_DIR / "people.csv", newline="") as f:
        for row in csv.DictReader(f):
            genders[row["person"]] = row["gender"]
    pairs = []
    with open(config.SAMPLE_DIR / "pairs.csv", newline="") as f:
        for row in csv.DictReader(f):
            person = Path(row["file_y"]).stem.rsplit("_", 1)[0]
            pairs.append(
                (
                    (images / row["file_x"]).read_bytes(),
                    (images / row["file_y"]).read_bytes(),
                    genders.get(person, "M"),
                )
            )
    return pairs


class Server:
    """`faceverify api serve` on a free loopback port with its own temporary database and photo store."""

    def __init__(self, db_url: str | None, log_path: Path | None):
        self.tmp = tempfile.TemporaryDirectory(prefix="faceverify-load-")
        root = Path(self.tmp.name)
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url or f"sqlite:///{root / 'load.sqlite3'}",
            "PHOTO_STORE_DIR": str(root / "photos"),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or root / "server.log"
        self.proc = None

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "core", "api", *args],
            cwd=config.PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"faceverify api {' '.join(args)} failed: {done.stderr[-1000:]}")
        return done.stdout.strip()

    def start(self, timeout_s: float = 300.0) -> tuple[str, str]:
        import httpx

        # Named by the time, so a database used before (e.g. `bench scale --no-fill`) takes new ones.
        suffix = time.strftime("%Y%m%d-%H%M%S")
        backend = self._cli("create-key", "--name", f"load-test-{suffix}", "--role", "backend")
        reader = self._cli("create-key", "--name", f"load-test-reader-{suffix}", "--role", "reader")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "core",
                "api",
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=config.PROJECT_ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited; see {self.log_path}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=5).json()
                if health.get("status") == "ok":
                    return backend, reader
                if health.get("status") == "degraded":
                    raise RuntimeError(f"the server is not ready: {health}")
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "log", None):
            self.log.close()
        self.tmp.cleanup()


def run(
    url: str | list[str],
    key: str,
    reader_key: str,
    seconds: float,
    rate: float,
    workers: int,
    outcomes_out: list | None = None,
    on_start=None,
) -> dict:
    """The load; url may be several API workers (request i goes to url[i % len(url)], as a proxy
    in front would spread them). outcomes_out, when given, receives every Outcome; on_start() is
    called once the warm-up is over, as the timed requests begin."""
    import httpx

    urls = [url] if isinstance(url, str) else list(url)
    for one in urls:
        if not _is_loopback(one):
            raise ValueError(
                f"{one} is not a loopback address: this load test only targets 127.0.0.0/8 or ::1"
            )
    pairs = sample_pairs()
    n = int(round(seconds * rate))
    run_id = time.strftime("%H%M%S")
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    clients = [httpx.Client(base_url=u, timeout=REQUEST_TIMEOUT_S, limits=limits) for u in urls]
    headers = {"X-API-Key": key}

    def send(i: int, scheduled: float) -> Outcome:
        client = clients[i % len(clients)]
        gallery, verification, gender = pairs[i % len(pairs)]
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        started = time.perf_counter()
        try:
            response = client.post(
                "/v1/verifications/upload",
                data={"member_id": member_id(run_id, i), "registered_gender": gender, "enrol": "true"},
                files={
                    "gallery": ("gallery.jpg", gallery, "image/jpeg"),
                    "verification": ("selfie.jpg", verification, "image/jpeg"),
                },
                headers=headers,
            )
        except httpx.HTTPError as exc:
            return Outcome(
                i, scheduled, started, time.perf_counter(), 0, error=f"{type(exc).__name__}: {exc}"
            )
        finished = time.perf_counter()
        if response.status_code != 201:
            return Outcome(i, scheduled, started, finished, response.status_code, error=response.text[:300])
        body = response.json()
        return Outcome(
            i,
            scheduled,
            started,
            finished,
            201,
            body["id"],
            flagged=body["status"] == "flagged",
            duplicate=bool(body["possible_duplicates"]),
        )

    # Warm-up (not counted): the first request pays one-off costs (index, connections).
    for w in range(len(clients)):
        warm = send(-1 - w, time.perf_counter())
        if warm.status != 201:
            raise RuntimeError(f"the warm-up request failed: {warm.status} {warm.error}")

    if on_start is not None:
        on_start()
    t0 = time.perf_counter() + 0.5
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load") as pool:
        futures = [pool.submit(send, i, t0 + i / rate) for i in range(n)]
        hard_stop = t0 + seconds + DRAIN_S
        for i, future in enumerate(futures):
            remaining = max(0.1, hard_stop - time.perf_counter())
            try:
                outcome = future.result(timeout=remaining)
            except Exception as exc:  # a request that did not finish in time counts as an error
                at = t0 + i / rate
                outcome = Outcome(i, at, at, time.perf_counter(), 0, error=f"{type(exc).__name__}: {exc}")
            with lock:
                outcomes.append(outcome)
        for future in futures:
            future.cancel()

    ok = [o for o in outcomes if o.status == 201]
    errors = [o for o in outcomes if o.status != 201]
    first, last = min(o.started for o in outcomes), max(o.finished for o in outcomes)
    duration = max(last - first, 1e-9)
    # The lowest completion rate over any full 10 s window of the schedule.
    done_at = np.sort([o.finished - t0 for o in ok])
    windows = []
    start = 0.0
    while start + WINDOW_S <= seconds + 1e-9:
        count = np.count_nonzero((done_at >= start) & (done_at < start + WINDOW_S))
        windows.append(count / WINDOW_S)
        start += 1.0
    latency = np.array([(o.finished - o.started) * 1000 for o in ok]) if ok else np.array([np.nan])
    lag = np.array([(o.started - o.scheduled) * 1000 for o in ok]) if ok else np.array([np.nan])

    # Every result stored: read each back.
    reader = {"X-API-Key": reader_key}
    stored = 0
    server_latency = []
    missing = []
    for o in ok:
        response = clients[o.index % len(clients)].get(f"/v1/verifications/{o.result_id}", headers=reader)
        if response.status_code == 200 and response.json()["id"] == o.result_id:
            stored += 1
            server_latency.append(response.json().get("latency_ms") or np.nan)
        else:
            missing.append(o.result_id)
    for client in clients:
        client.close()
    if outcomes_out is not None:
        outcomes_out.extend(outcomes)
    statuses: dict[str, int] = {}
    for o in errors:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    server_latency = np.array(server_latency) if server_latency else np.array([np.nan])
    report = {
        "url": url,
        "run_id": run_id,
        "target_rate": rate,
        "seconds": seconds,
        "sent": len(outcomes),
        "ok": len(ok),
        "errors": len(errors),
        "error_statuses": statuses,
        "error_examples": [o.error for o in errors[:5]],
        "achieved_rate": len(ok) / duration,
        "min_rate_10s_window": min(windows) if windows else None,
        "duration_s": duration,
        "latency_p50_ms": float(np.nanpercentile(latency, 50)),
        "latency_p95_ms": float(np.nanpercentile(latency, 95)),
        "latency_p99_ms": float(np.nanpercentile(latency, 99)),
        "latency_max_ms": float(np.nanmax(latency)),
        "start_lag_p95_ms": float(np.nanpercentile(lag, 95)),
        "server_latency_p50_ms": float(np.nanpercentile(server_latency, 50)),
        "server_latency_p95_ms": float(np.nanpercentile(server_latency, 95)),
        "results_stored": stored,
        "results_missing": missing[:20],
        "all_stored": stored == len(ok) == len(outcomes),
        "flagged": sum(o.flagged for o in ok),
        "possible_duplicates": sum(o.duplicate for o in ok),
        "workers": workers,
    }
    report["rate_held"] = bool(
        report["errors"] == 0
        and report["min_rate_10s_window"] is not None
        and report["min_rate_10s_window"] >= 0.9 * rate
    )
    return report


def _figure(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"  # no full 10 s window in a shorter run


def print_report(report: dict) -> None:
    print(
        f"{report['ok']}/{report['sent']} verifications in {report['duration_s']:.1f} s: "
        f"{report['achieved_rate']:.2f}/s (target {report['target_rate']:.1f}/s, lowest 10 s window "
        f"{_figure(report['min_rate_10s_window'])}/s), errors {report['errors']} {report['error_statuses'] or ''}"
    )
    print(
        f"latency p50 {report['latency_p50_ms']:.0f} ms, p95 {report['latency_p95_ms']:.0f} ms, "
        f"p99 {report['latency_p99_ms']:.0f} ms; server-side p50 {report['server_latency_p50_ms']:.0f} ms, "
        f"p95 {report['server_latency_p95_ms']:.0f} ms"
    )
    print(
        f"stored and read back: {report['results_stored']}/{report['sent']} "
        f"({'all' if report['all_stored'] else 'NOT ALL'}); flagged {report['flagged']}, "
        f"with possible duplicates {report['possible_duplicates']}"
    )
