"""Objects that are not thread-safe (MediaPipe graphs, OpenCV's YuNet), lent one thread at a time.

    pool = Lending(make, size=2)
    with pool.lend() as thing: ...

Up to `size` of them are made, on first need; a thread past that waits for one to come back. The
two locate threads (core.verification.features.LOCATE_THREADS) each get their own, so the two
photos of a pair no longer queue for one detector (measured under load: 4.4 ms a pair waiting
for MediaPipe's detector, 1.3 ms for YuNet). A forked child makes its own.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Lending(Generic[T]):
    def __init__(self, make: Callable[[], T], size: int = 2):
        self._make, self._size = make, size
        self._lock = threading.Lock()
        self._pid = -1
        self._free: queue.LifoQueue[T] = queue.LifoQueue()
        self._made = 0

    @contextlib.contextmanager
    def lend(self) -> Iterator[T]:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: its parent's objects are not its own
                self._pid, self._free, self._made = os.getpid(), queue.LifoQueue(), 0
            free = self._free
            make = free.empty() and self._made < self._size
            if make:
                self._made += 1
        if make:
            try:
                thing = self._make()
            except BaseException:
                with self._lock:
                    self._made -= 1
                raise
        else:
            thing = free.get()
        try:
            yield thing
        finally:
            free.put(thing)
