"""The shared ring: FIFO allocation that never hands out a region still in use."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from pgps_data.loader.ring import ALIGN, IDLE, RingView, SharedRing


def test_regions_never_overlap_a_live_region_and_wrap_in_fifo_order() -> None:
    """Random sizes, FIFO releases: every live region keeps the bytes written into it."""
    ring = SharedRing(64 * ALIGN)
    rng = np.random.default_rng(0)
    live: deque[tuple[int, int, int]] = deque()  # (offset, size, fill byte)
    wrapped = refused = 0
    try:
        for k in range(2000):
            size = int(rng.integers(1, 20)) * ALIGN - int(rng.integers(0, ALIGN))
            offset = ring.allocate(size)
            if offset is None:
                refused += 1
                assert live, "an empty ring refused a request that fits"
                off, _, _ = live.popleft()
                ring.release(off)
                continue
            if live and offset < live[-1][0]:
                wrapped += 1
            fill = k % 251 + 1
            ring.view(offset, np.dtype(np.uint8), (size,))[:] = fill
            live.append((offset, size, fill))
            for off, n, value in live:
                assert (ring.view(off, np.dtype(np.uint8), (n,)) == value).all()
            if rng.random() < 0.4:
                off, _, _ = live.popleft()
                ring.release(off)
    finally:
        ring.close()
    assert wrapped > 10 and refused > 10  # both the wrap and the full ring were exercised


def test_release_out_of_order_and_oversized_requests_are_refused() -> None:
    ring = SharedRing(8 * ALIGN)
    try:
        a = ring.allocate(ALIGN)
        b = ring.allocate(3 * ALIGN)
        assert (a, b) == (0, ALIGN)
        with pytest.raises(RuntimeError, match="in order"):
            ring.release(b)
        assert ring.allocate(5 * ALIGN) is None  # 4 free at the end, 0 before the tail
        ring.release(a)
        ring.release(b)
        assert ring.allocate(8 * ALIGN) == 0  # an empty ring starts over at 0
        with pytest.raises(ValueError, match="exceeds the ring"):
            ring.allocate(8 * ALIGN + 1)
    finally:
        ring.close()


def test_a_worker_mapping_sees_the_same_bytes_and_status_words() -> None:
    ring = SharedRing(4 * ALIGN, slots=3)
    try:
        assert ring.status.tolist() == [IDLE] * 3
        other = RingView(ring.fd, ring.nbytes, ring.capacity)
        other.view(ALIGN, np.dtype(np.float32), (4,))[:] = [1, 2, 3, 4]
        other.status(2)[0] = 17
        assert ring.view(ALIGN, np.dtype(np.float32), (4,)).tolist() == [1, 2, 3, 4]
        assert ring.status.tolist() == [IDLE, IDLE, 17]
        del other
    finally:
        ring.close()
