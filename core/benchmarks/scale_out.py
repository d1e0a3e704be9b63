"""Scale-out benchmark: verifications per second of one API worker process held to one core, then of
two held to one core each, measured in one run on the same database and photo store.

    faceverify bench scale-out [--seconds 30] [--per-worker 4] [--rounds 1] [--db-url URL] [--json OUT]

Two `faceverify api serve` processes are started once, each under `taskset -c CORE` on its own
loopback port, each with one thread per network library (TF, OpenMP, OpenCV) and in a session of
its own (Linux's autogroup scheduler shares the CPU by session: two workers in the benchmark's
session would get one session's share between them on a busy machine). Phases then alternate
A B B A: A sends to the first worker only (the second idles), B to both, `seconds` each, so a
change of load on the machine during the run weighs on both setups alike.

Closed loop: `per-worker` client connections per worker in use send POST /v1/verifications/upload
(a new member with a real sample pair each time: checks, engine, 1:N search, storage) back to back.
Afterwards every result is read back through the API and counted in the database: each
verification must be stored exactly once. The photo store is PHOTO_STORE_URL when set (e.g. an S3
bucket), else a temporary folder; the database --db-url (MariaDB for a fair figure; created if it
does not exist), else a temporary SQLite file.

Prints and writes, per setup: verifications/s, latency p50/p95, errors, and where the CPU went
(worker processes, this client, a local MariaDB, everything else on the machine, in CPU-ms per
verification), then the ratio (target >= 1.6). The client runs on the same cores: its share is
printed, so a reader can see what it took from the workers. On a busy machine the measured ratio
is what the other jobs left; a last line also gives the ratio the measured CPU costs imply when
the workers have the cores to themselves, labelled as the estimate it is.
"""

from __future__ import annotations

import itertools
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
from core.api.server import THREAD_SETTINGS
from core.benchmarks.load_test import _free_port, sample_pairs

# One thread per library in a worker held to one core (TF reads the affinity mask too; this says
# it outright and holds for --no-pin, where two workers would each start a thread per core).
ONE_THREAD = dict.fromkeys(THREAD_SETTINGS, "1")


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
            **ONE_THREAD,
        }
        self.env.pop("JOB_BROKER_URL", None)
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def start(self, timeout_s: float = 600.0) -> None:
        import httpx

        cores = os.cpu_count() or 1
        for i in range(self.n):
            port = _free_port()
            cmd = [
                sys.executable,
                "-m",
                "core",
                "api",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            if self.pin:
                cmd = ["taskset", "-c", str(i % cores), *cmd]
            log = open(self.log_dir / f"api-{self.n}-{i}.log", "w")
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=config.PROJECT_ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own autogroup: see the module docstring
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


# -- CPU accounting from /proc (Linux); zeros elsewhere ------------------------------------------


def _process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu_s() -> tuple[float, float]:
    """(all CPU seconds, idle CPU seconds) of the machine since boot."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return sum(values[:8]) / tick, (values[3] + values[4]) / tick


def _local_database_pid(db_url: str) -> int | None:
    """The MariaDB/MySQL server's pid when the database is on this machine (its CPU is counted)."""
    if not db_url.startswith(("mysql", "mariadb")):
        return None
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("mariadbd", "mysqld"):
                    return int(entry.name)
            except OSError:
                continue
    return None


class CpuMeter:
    """CPU used by the workers, this client, the database server and the machine over a phase."""

    def __init__(self, worker_pids: list[int], db_pid: int | None):
        self.worker_pids, self.db_pid = worker_pids, db_pid

    def read(self) -> dict:
        total, idle = _machine_cpu_s()
        return {
            "workers": [_process_cpu_s(p) for p in self.worker_pids],
            "client": _process_cpu_s(os.getpid()),
            "database": _process_cpu_s(self.db_pid),
            "machine": total,
            "idle": idle,
        }

    @staticmethod
    def used(before: dict, after: dict) -> dict:
        workers = [a - b for a, b in zip(after["workers"], before["workers"], strict=True)]
        busy = (after["machine"] - before["machine"]) - (after["idle"] - before["idle"])
        ours = sum(workers) + (after["client"] - before["client"]) + (after["database"] - before["database"])
        return {
            "workers_cpu_s": [round(w, 2) for w in workers],
            "client_cpu_s": round(after["client"] - before["client"], 2),
            "database_cpu_s": round(after["database"] - before["database"], 2),
            "others_cpu_s": round(max(0.0, busy - ours), 2),  # other jobs on the machine
            "machine_busy": round(busy / max(1e-9, after["machine"] - before["machine"]), 3),
        }


# -- load ---------------------------------------------------------------------------------------


def _upload(client, pairs, i: int, member_id: str):
    gallery, verification, gender = pairs[i % len(pairs)]
    return client.post(
        "/v1/verifications/upload",
        data={"member_id": member_id, "registered_gender": gender, "enrol": "true"},
        files={
            "gallery": ("g.jpg", gallery, "image/jpeg"),
            "verification": ("v.jpg", verification, "image/jpeg"),
        },
    )


def warm_up(urls: list[str], key: str, tag: str) -> None:
    """One request per worker (index, connections), not counted in any phase."""
    import httpx

    pairs = sample_pairs()
    for n, url in enumerate(urls):
        with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": key}) as client:
            r = _upload(client, pairs, 0, f"scale-{tag}-warm-{n}")
        if r.status_code != 201:
            raise RuntimeError(f"warm-up failed on {url}: {r.status_code} {r.text[:200]}")


def saturate(urls: list[str], key: str, seconds: float, per_worker: int, tag: str, meter=None) -> dict:
    """Closed loop, per_worker connections to each of urls for `seconds`; every result read back."""
    import httpx

    pairs = sample_pairs()
    counter = itertools.count()
    lock = threading.Lock()
    ok: list[tuple[int, str, float]] = []  # (result id, worker url, latency ms)
    errors: dict[str, int] = {}
    stop_at = 0.0

    def client_loop(url: str):
        with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": key}) as client:
            while time.perf_counter() < stop_at:
                i = next(counter)
                started = time.perf_counter()
                try:
                    r = _upload(client, pairs, i, f"scale-{tag}-{i:06d}")
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    if status == 201:
                        ok.append((r.json()["id"], url, (time.perf_counter() - started) * 1000))
                    else:
                        errors[str(status)] = errors.get(str(status), 0) + 1

    threads = [threading.Thread(target=client_loop, args=(url,)) for url in urls for _ in range(per_worker)]
    before = meter.read() if meter else None
    started = time.perf_counter()
    stop_at = started + seconds
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    cpu = CpuMeter.used(before, meter.read()) if meter else {}
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
        "cpu": cpu,
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


def ensure_database(db_url: str) -> None:
    """CREATE DATABASE IF NOT EXISTS for a MariaDB/MySQL URL (SQLite makes its file itself)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if not url.drivername.startswith(("mysql", "mariadb")) or not url.database:
        return
    server = create_engine(url.set(database=""))  # the server, no database (None keeps it)
    try:
        with server.connect() as conn:
            conn.execute(
                text(
                    f"CREATE DATABASE IF NOT EXISTS `{url.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
            )
    finally:
        server.dispose()


def _cpu_line(phase: dict) -> str:
    cpu, n = phase["cpu"], max(1, phase["verifications"])
    if not cpu:
        return ""
    per = lambda s: 1000 * s / n  # noqa: E731 - CPU-ms per verification
    return (
        f"    CPU-ms per verification: workers {per(sum(cpu['workers_cpu_s'])):.0f}, client "
        f"{per(cpu['client_cpu_s']):.0f}, database {per(cpu['database_cpu_s']):.0f}, other jobs "
        f"{per(cpu['others_cpu_s']):.0f}; machine busy {100 * cpu['machine_busy']:.0f}%"
    )


def _cpu_bound_estimate(phases: dict) -> dict | None:
    """The ratio the measured CPU costs give when the workers have their cores to themselves:
    one worker holds one core (the client and database on the other); two share both cores with
    the client and database. An estimate for a busy machine's reader, not a measurement."""

    def cost(runs, part):
        n = sum(r["verifications"] for r in runs)
        if not n or not all(r["cpu"] for r in runs):
            return None
        return 1000 * sum(part(r["cpu"]) for r in runs) / n

    one = cost(phases[1], lambda c: sum(c["workers_cpu_s"]))
    two = cost(phases[2], lambda c: sum(c["workers_cpu_s"]))
    extra = cost(phases[2], lambda c: c["client_cpu_s"] + c["database_cpu_s"])
    cores = os.cpu_count() or 1
    if not one or not two or extra is None or cores < 2:
        return None
    rate_one = 1000 / one
    rate_two = min(2 * 1000 / two, cores * 1000 / (two + extra))
    return {
        "one_worker_ms": round(one, 1),
        "two_workers_ms": round(two, 1),
        "client_database_ms": round(extra, 1),
        "ratio": round(rate_two / rate_one, 2),
    }


def _combined(phases: list[dict]) -> dict:
    n = sum(p["verifications"] for p in phases)
    seconds = sum(p["seconds"] for p in phases)
    return {"verifications": n, "seconds": round(seconds, 2), "per_second": round(n / seconds, 2)}


def measure(
    seconds: float = 30.0, per_worker: int = 4, db_url: str | None = None, rounds: int = 1, pin: bool = True
) -> dict:
    """One and two API workers in A B B A phases of `seconds` each; prints as it goes, returns the
    report ("ok": every verification stored once, no error, and two workers >= 1.6x one)."""

    from core.api.keys import create_key
    from core.storage.db import init_db
    from core.storage.db import session_factory as make_factory

    with tempfile.TemporaryDirectory(prefix="faceverify-scale-") as tmp:
        root = Path(tmp)
        db_url = db_url or f"sqlite:///{root / 'scale.sqlite3'}"
        ensure_database(db_url)
        store_url = config.setting("PHOTO_STORE_URL") or str(root / "photos")
        engine = init_db(db_url)
        with make_factory(engine)() as session:
            key, _ = create_key(session, f"scale-{time.strftime('%H%M%S')}", "backend")
        engine.dispose()
        tag = time.strftime("%H%M%S")
        workers = Workers(2, db_url, store_url, root, pin=pin)
        print(
            f"starting 2 API workers{' pinned to one core each' if workers.pin else ''} (loading the model) ...",
            flush=True,
        )
        phases = {1: [], 2: []}
        order = (1, 2, 2, 1) * rounds  # A B B A, again for each round
        try:
            workers.start()
            warm_up(workers.urls, key, tag)
            meter = CpuMeter([p.pid for p in workers.procs], _local_database_pid(db_url))
            for step, n in enumerate(order):
                figures = saturate(workers.urls[:n], key, seconds, per_worker, f"{tag}-{step}", meter)
                phases[n].append(figures)
                print(
                    f"phase {step + 1}/{len(order)}, {n} worker(s): {figures['per_second']:.2f} verifications/s, "
                    f"p50 {figures['latency_p50_ms']:.0f} ms, p95 {figures['latency_p95_ms']:.0f} ms, "
                    f"errors {figures['errors'] or 0}, read back {figures['read_back']}/{figures['verifications']}",
                    flush=True,
                )
                print(_cpu_line(figures), flush=True)
        finally:
            workers.stop()
        stored, members = _stored_once(db_url, tag)
    sent = sum(p["verifications"] for runs in phases.values() for p in runs) + len(workers.urls)
    stored_once = stored == members == sent  # + the warm-up request of each worker
    one, two = _combined(phases[1]), _combined(phases[2])
    ratio = two["per_second"] / one["per_second"] if one["per_second"] else float("nan")
    report = {
        "phases": phases,
        "one_worker": one,
        "two_workers": two,
        "ratio_2_vs_1": round(ratio, 2),
        "target": 1.6,
        "cores": os.cpu_count(),
        "stored": stored,
        "distinct_members": members,
        "stored_exactly_once": stored_once,
    }
    print(
        f"one worker {one['per_second']:.2f}/s, two workers {two['per_second']:.2f}/s: "
        f"{ratio:.2f}x (target >= 1.6x) on {os.cpu_count()} cores; every verification stored exactly "
        f"once and read back: {stored_once and all(p['read_back'] == p['verifications'] for r in phases.values() for p in r)}"
    )
    estimate = _cpu_bound_estimate(phases)
    if estimate:
        report["cpu_bound_estimate"] = estimate
        print(
            f"worker CPU-ms per verification: one worker {estimate['one_worker_ms']:.0f}, two workers "
            f"{estimate['two_workers_ms']:.0f}; client + database {estimate['client_database_ms']:.0f}. "
            f"Estimate for a machine with nothing else running, from these costs (not measured): "
            f"{estimate['ratio']:.2f}x"
        )
    clean = stored_once and not any(p["errors"] for runs in phases.values() for p in runs)
    report["ok"] = clean and ratio >= 1.6
    return report
