"""Two API worker processes (python -m core api serve --workers 2) on one MariaDB database: a version
promoted while verifications are running reaches both workers by itself, and every answer is
computed by one whole version (its name and its own threshold), never by a half-loaded one.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from objectstore import free_ports

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample" / "images"
NEW_VERSION = "v20990101-000000"

pytestmark = pytest.mark.mysql


def _b64(name: str) -> str:
    return base64.b64encode((SAMPLE / name).read_bytes()).decode()


def _new_version(models_dir: Path) -> tuple[str, float, float]:
    """A second loadable version: the shipped heads with another threshold (so answers tell them apart)."""
    shipped = (models_dir / "DEFAULT").read_text().strip()
    shutil.copytree(models_dir / shipped, models_dir / NEW_VERSION)
    meta_path = models_dir / NEW_VERSION / "metadata.json"
    meta = json.loads(meta_path.read_text())
    old_threshold = meta["threshold"]
    meta["threshold"] = round(old_threshold + 0.01, 6)
    meta["created_at"] = "2099-01-01T00:00:00+00:00"
    meta_path.write_text(json.dumps(meta))
    return shipped, old_threshold, meta["threshold"]


def _health(base: str) -> dict:
    # A new connection each time: the kernel hands it to either worker.
    with httpx.Client(timeout=10) as client:
        return client.get(f"{base}/health").json()


def _by_worker(base: str, tries: int = 40) -> dict[int, dict]:
    seen: dict[int, dict] = {}
    for _ in range(tries):
        try:
            body = _health(base)
        except httpx.HTTPError:
            continue
        seen[body["worker_pid"]] = body
    return seen


@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_promotion_reaches_every_worker_and_each_answer_is_one_version(
    db_url, session_factory, models_copy, tmp_path
):
    from core.api.keys import create_key
    from core.training import registry

    shipped, old_threshold, new_threshold = _new_version(models_copy)
    with session_factory() as session:
        registry.active_version(session, models_copy)
        registry.register(session, NEW_VERSION, "ds_user", models_copy)
        key, _ = create_key(session, "load", "backend")

    port = free_ports(1, env="TEST_API_PORTS")[0]
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "MODELS_DIR": str(models_copy),
        "PHOTO_STORE_URL": str(tmp_path / "photos"),
        "MODEL_POLL_S": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("JOB_BROKER_URL", None)
    log = tmp_path / "api.log"
    with open(log, "ab") as out:
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "core",
                "api",
                "serve",
                "--workers",
                "2",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=str(ROOT),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    answers: list[tuple[float, int, str, float]] = []  # (sent at, status, model version, threshold)
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 300
        while True:  # both workers up with the shipped model
            ready = {pid for pid, h in _by_worker(base, 10).items() if h.get("model_version") == shipped}
            if len(ready) == 2:
                break
            assert api.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"workers not ready: {log.read_text()[-3000:]}"
            time.sleep(1)

        def client_loop(n: int):
            with httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": key}) as client:
                i = 0
                while not stop.is_set():
                    sent = time.monotonic()
                    r = client.post(
                        "/v1/verifications",
                        json={
                            "member_id": f"W{n}-{i}",
                            "registered_gender": "M",
                            "enrol": True,
                            "gallery_base64": _b64("Adrien_Brody_0001.jpg"),
                            "verification_base64": _b64("Adrien_Brody_0002.jpg"),
                        },
                    )
                    body = r.json()
                    answers.append((sent, r.status_code, body.get("model_version"), body.get("threshold")))
                    i += 1

        threads = [threading.Thread(target=client_loop, args=(n,), daemon=True) for n in range(3)]
        for t in threads:
            t.start()
        while len(answers) < 6:
            time.sleep(0.1)
        with session_factory() as session:
            registry.promote(session, NEW_VERSION, "ds_user", models_dir=models_copy)
        promoted_at = time.monotonic()
        while True:
            switched = {
                pid for pid, h in _by_worker(base, 10).items() if h.get("model_version") == NEW_VERSION
            }
            if len(switched) == 2:
                break
            assert time.monotonic() - promoted_at < 60, (
                f"not every worker switched: {log.read_text()[-3000:]}"
            )
            time.sleep(0.2)
        pickup_s = time.monotonic() - promoted_at
        print(f"promotion answered by both workers after {pickup_s:.1f} s; {len(answers)} answers so far")
        # Requests sent more than a second after both switched must all be answered by the new
        # version; wait for a few (on a quiet machine six answers come back within that second).
        settled = promoted_at + pickup_s + 1
        wait_until = time.monotonic() + 120
        while sum(1 for sent, *_ in list(answers) if sent > settled) < 6:
            assert time.monotonic() < wait_until, "no answers after the switch"
            time.sleep(0.1)
    finally:
        stop.set()
        api.send_signal(signal.SIGINT)
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)

    assert all(status == 201 for _, status, _, _ in answers), [a for a in answers if a[1] != 201][:3]
    whole = {shipped: old_threshold, NEW_VERSION: new_threshold}
    for _, _, version, threshold in answers:
        assert version in whole and threshold == pytest.approx(whole[version]), (
            f"{version} answered with threshold {threshold}: not one whole version"
        )
    versions = [version for _, _, version, _ in answers]
    assert shipped in versions and NEW_VERSION in versions
    late = [v for sent, _, v, _ in answers if sent > promoted_at + pickup_s + 1]
    assert late and set(late) == {NEW_VERSION}, "after the switch only the promoted version answers"
    assert pickup_s <= 20, f"the promoted version took {pickup_s:.1f} s to reach both workers (target 10 s)"


def test_several_api_workers_share_the_cores_between_their_network_threads(monkeypatch):
    """--workers N: each process's TF, OpenMP and OpenCV get cores // N threads, not one per core."""
    from core.api.server import THREAD_SETTINGS, share_cores

    for name in THREAD_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an operator's own choice is kept
    cores = len(os.sched_getaffinity(0))
    assert share_cores(2) == max(1, cores // 2)
    assert (
        os.environ["TF_NUM_INTRAOP_THREADS"]
        == os.environ["OPENCV_FOR_THREADS_NUM"]
        == str(max(1, cores // 2))
    )
    assert os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    assert share_cores(cores * 4) == 1 and os.environ["TF_NUM_INTRAOP_THREADS"] == "1"
