"""Lending of objects that are not thread-safe (MediaPipe's detectors, YuNet): one thread at a
time each, at most `size` made, reused after."""

from __future__ import annotations

import threading

from conftest import SAMPLE_IMAGES

from core.verification import faces, imaging
from core.verification.lending import Lending


def test_threads_at_once_get_their_own_and_no_more_than_size_are_made():
    made = []
    pool = Lending(lambda: made.append(object()) or made[-1], size=2)
    seen, together = [], threading.Barrier(2, timeout=30)

    def hold():
        with pool.lend() as thing:
            seen.append(thing)
            together.wait()  # both lent at once: they must differ

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen[0] is not seen[1] and len(made) == 2
    waiting = []

    def third():
        with pool.lend() as thing:
            waiting.append(thing)

    with pool.lend(), pool.lend():  # both out: a third caller waits until one comes back
        t = threading.Thread(target=third)
        t.start()
        t.join(timeout=0.2)
        assert t.is_alive() and not waiting
    t.join(timeout=30)
    assert waiting and waiting[0] in made and len(made) == 2


def test_a_failed_make_does_not_use_up_the_pool():
    calls = []

    def make():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first one fails")
        return "ok"

    pool = Lending(make, size=1)
    try:
        with pool.lend():
            pass
    except RuntimeError:
        pass
    with pool.lend() as thing:
        assert thing == "ok"


def test_detection_from_two_threads_at_once_gives_the_same_faces():
    rgb = imaging.decode_image((SAMPLE_IMAGES / "Nicole_Kidman_0006.jpg").read_bytes()).rgb
    alone = faces.detect_faces(rgb)
    results, start = [], threading.Barrier(2, timeout=30)

    def detect():
        start.wait()
        for _ in range(5):
            results.append(faces.detect_faces(rgb))

    threads = [threading.Thread(target=detect) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 10
    for found in results:
        assert [f.box for f in found] == [f.box for f in alone]
