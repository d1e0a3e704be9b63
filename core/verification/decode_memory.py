"""Decoder memory: what one photo costs to decode, and the budget all photos being decoded in this
process share.

decode_cost_bytes(mode, size) -> int     peak bytes Pillow takes to decode a photo of this mode and size
decode_budget() -> DecodeBudget          the process's budget (setting DECODE_MEMORY_MB, default 320 MB);
                                         core.verification.imaging.decode_image holds a photo's cost in
                                         it while the photo decodes, and answers ImageError "busy" after
                                         DECODE_WAIT_S
use_decode_budget(capacity_bytes)        size it from the server's memory limit at start

Importing this module also makes glibc return large freed buffers to the system at once (see
_return_big_buffers_to_the_system).
"""

from __future__ import annotations

import threading

from core import config
from core.errors import ImageError

# All photos being decoded at once in this process share this much (setting DECODE_MEMORY_MB): a
# burst of requests waits for its turn instead of taking the process past its memory budget.

DEFAULT_DECODE_BUDGET_BYTES = 320 * 1024 * 1024
DECODE_WAIT_S = 120.0

# Bytes per pixel of Pillow's own storage, by mode (Pillow pads RGB to 4 bytes).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Modes Image.reduce() cannot shrink: they are converted at full size first (P to RGBA is 4
# bytes a pixel more, 1 to L one more).
CONVERTED_BEFORE_SHRINK = {"P": ("RGBA", 4), "1": ("L", 1)}


def decode_cost_bytes(mode: str, size: tuple[int, int]) -> int:
    """Peak bytes that decoding a photo of this Pillow mode and (drafted) size takes here."""
    pixels = int(size[0]) * int(size[1])
    per_pixel = _BYTES_PER_PIXEL.get(mode, 4)
    per_pixel += CONVERTED_BEFORE_SHRINK.get(mode, ("", 0))[1]
    return pixels * per_pixel


class DecodeBudget:
    """Bytes of decoder memory the photos being decoded in this process may hold together.

    hold(cost) waits until the photo's cost fits (a photo larger than the whole budget waits until
    nothing else is decoding), then keeps it until the block ends. ImageError "busy" after
    DECODE_WAIT_S, so a caller can answer "retry" instead of hanging.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    def hold(self, cost: int) -> _Held:
        return _Held(self, min(int(cost), self.capacity))

    def _acquire(self, cost: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + cost <= self.capacity, DECODE_WAIT_S):
                raise ImageError(
                    "The server is decoding too many large photos at once; please try again shortly.",
                    code="busy",
                )
            self.in_use += cost
            self.peak = max(self.peak, self.in_use)

    def _release(self, cost: int) -> None:
        with self._cond:
            self.in_use -= cost
            self._cond.notify_all()


class _Held:
    def __init__(self, budget: DecodeBudget, cost: int):
        self.budget, self.cost = budget, cost

    def __enter__(self):
        self.budget._acquire(self.cost)
        return self

    def __exit__(self, *exc):
        self.budget._release(self.cost)
        return False


def _return_big_buffers_to_the_system() -> None:
    """glibc keeps freed blocks of up to 32 MB in each thread's heap for reuse; a decoder buffer
    freed on one request thread then stays resident while the next thread allocates its own, and
    the process grows by a photo's buffer per thread. A fixed 1 MB mmap threshold makes every
    large buffer (Pillow's 16 MB blocks, numpy arrays) its own mapping, unmapped when freed."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD (fixes it: no dynamic raising)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        pass


_return_big_buffers_to_the_system()

_budget: DecodeBudget | None = None
_budget_lock = threading.Lock()


def use_decode_budget(capacity_bytes: int) -> DecodeBudget:
    """Size this process's budget (a server does so at start, from its memory limit); the
    DECODE_MEMORY_MB setting, when given, still wins."""
    global _budget
    with _budget_lock:
        mb = config.get("DECODE_MEMORY_MB")
        capacity = int(float(mb) * 1024 * 1024) if mb else int(capacity_bytes)
        _budget = DecodeBudget(max(capacity, 16 * 1024 * 1024))
        return _budget


def decode_budget() -> DecodeBudget:
    """The process's budget, sized by the DECODE_MEMORY_MB setting on first use."""
    global _budget
    with _budget_lock:
        if _budget is None:
            mb = config.get("DECODE_MEMORY_MB")
            capacity = int(float(mb) * 1024 * 1024) if mb else DEFAULT_DECODE_BUDGET_BYTES
            _budget = DecodeBudget(max(capacity, 16 * 1024 * 1024))
        return _budget
