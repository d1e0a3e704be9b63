"""core.process_memory: freed heap pages go back to the system (glibc Linux, where the product runs)."""

import sys

import pytest

from core import process_memory


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_trim_returns_freed_heap_pages():
    # 1 kB objects come from malloc (not Python's small-object pools); keeping every 16th one
    # alive leaves the freed ones in the middle of the heap, where malloc keeps them on its own.
    blocks = [bytes([i % 251]) * 1024 for i in range(120_000)]
    kept = blocks[::16]
    del blocks
    before = _rss_kb()
    assert process_memory.trim()
    after = _rss_kb()
    assert before - after > 40_000, (before, after)  # of about 110 MB freed
    assert len(kept) == 7500
