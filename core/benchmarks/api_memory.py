"""Peak memory of the API process under a burst of decompression-heavy photos.

    python -m core bench api-memory [--concurrency 40] [--json OUT.json]

Starts `python -m core.api` on a free loopback port with a fresh SQLite database and photo store
(core.benchmarks.load_test.Server), waits until its models are loaded, enrols one member with a
real sample pair, then sends `concurrency` requests at once to each photo endpoint in turn:
POST /v1/verifications (both photos), POST /v1/photo-checks and
POST /v1/members/{id}/gallery-photos. Every photo is a 99-megapixel 16-bit greyscale PNG (about
200 KB on the wire, 198 MB in the decoder). The server's resident memory (VmRSS of its process) is
sampled every 20 ms from before the first burst to after the last answer; the peak is printed.

A request past the admission gate is answered 503 with Retry-After: that is the intended answer,
counted by status. Only loopback targets; every request has a timeout, so the run ends by itself.
"""

from __future__ import annotations

import base64
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LIMIT_MB = 1500.0
REQUEST_TIMEOUT_S = 300.0
SAMPLE_EVERY_S = 0.02


def big_grey16_png(width: int = 9950, height: int = 9950) -> bytes:
    """A complete 16-bit greyscale PNG of mid-grey pixels: 99 MP, ~200 KB, 198 MB decoded."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x80\x00" * width
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssSampler:
    """Samples a process's VmRSS on a thread until stopped; keeps the peak."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.samples = pid, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self.samples += 1
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        return False


def _burst(client, url: str, path: str, body: dict, key: str, concurrency: int) -> dict:
    """`concurrency` POSTs at once; status counts, the slowest answer, and Retry-After seen."""

    def one(_):
        started = time.perf_counter()
        try:
            r = client.post(url + path, json=body, headers={"X-API-Key": key}, timeout=REQUEST_TIMEOUT_S)
            return r.status_code, time.perf_counter() - started, r.headers.get("retry-after")
        except Exception as exc:  # a dropped connection counts as its own outcome
            return type(exc).__name__, time.perf_counter() - started, None

    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(concurrency)))
    statuses: dict[str, int] = {}
    for status, _, _ in outcomes:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    busy = [o for o in outcomes if o[0] == 503]
    return {
        "statuses": statuses,
        "slowest_s": round(max(o[1] for o in outcomes), 1),
        "every_503_has_retry_after": all(o[2] for o in busy),
    }


def run(concurrency: int = 40, db_url: str | None = None, log_path: Path | None = None) -> dict:
    """Start the API, send the bursts, stop it; the measured figures."""
    import httpx

    from core.benchmarks.load_test import Server, sample_pairs

    png = base64.b64encode(big_grey16_png()).decode("ascii")
    gallery, selfie, gender = sample_pairs()[0]
    server = Server(db_url, log_path)
    try:
        backend, _ = server.start()
        pid = server.proc.pid
        limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
        with httpx.Client(limits=limits) as client:
            enrol = client.post(
                f"{server.url}/v1/verifications",
                json={
                    "member_id": "MEMBENCH1",
                    "registered_gender": gender,
                    "enrol": True,
                    "gallery_base64": base64.b64encode(gallery).decode("ascii"),
                    "verification_base64": base64.b64encode(selfie).decode("ascii"),
                },
                headers={"X-API-Key": backend},
                timeout=REQUEST_TIMEOUT_S,
            )
            if enrol.status_code != 201:
                raise RuntimeError(f"enrolling the member failed: {enrol.status_code} {enrol.text[:300]}")
            idle_mb = rss_mb(pid)
            endpoints = [
                (
                    "/v1/verifications",
                    {
                        "member_id": "MEMBENCH2",
                        "enrol": True,
                        "gallery_base64": png,
                        "verification_base64": png,
                    },
                ),
                ("/v1/photo-checks", {"photo_base64": png}),
                ("/v1/members/MEMBENCH1/gallery-photos", {"photo_base64": png}),
            ]
            figures = {}
            with RssSampler(pid) as overall:
                for path, body in endpoints:
                    with RssSampler(pid) as sampler:
                        started = time.perf_counter()
                        outcome = _burst(client, server.url, path, body, backend, concurrency)
                        outcome["seconds"] = round(time.perf_counter() - started, 1)
                    outcome["peak_rss_mb"] = round(sampler.peak, 1)
                    figures[path] = outcome
        alive = server.proc.poll() is None
    finally:
        server.stop()
    return {
        "concurrency": concurrency,
        "photo": "99 MP 16-bit greyscale PNG",
        "idle_rss_mb": round(idle_mb, 1),
        "peak_rss_mb": round(overall.peak, 1),
        "limit_mb": LIMIT_MB,
        "server_survived": alive,
        "endpoints": figures,
    }


def report(figures: dict) -> str:
    lines = [
        f"API memory under {figures['concurrency']} concurrent {figures['photo']}s per endpoint",
        f"  idle with models loaded: {figures['idle_rss_mb']:,.0f} MB",
    ]
    for path, f in figures["endpoints"].items():
        lines.append(
            f"  {path}: peak {f['peak_rss_mb']:,.0f} MB, answers {f['statuses']}, "
            f"slowest {f['slowest_s']} s, every 503 with Retry-After: {f['every_503_has_retry_after']}"
        )
    verdict = "under" if figures["peak_rss_mb"] < figures["limit_mb"] else "OVER"
    lines.append(
        f"peak resident memory: {figures['peak_rss_mb']:,.0f} MB ({verdict} the {figures['limit_mb']:,.0f} MB limit)"
    )
    return "\n".join(lines)
