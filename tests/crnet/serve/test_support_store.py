from __future__ import annotations

import numpy as np
import pytest

from crnet.runtime.preprocess import InputError
from crnet.serve.support_store import (
    SupportStore,
    UnknownSupportError,
    prometheus_text,
    support_id,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_goes_first_when_entries_are_full() -> None:
    store: SupportStore[str] = SupportStore(max_entries=2, max_bytes=1000)
    store.put("a", "A", 10)
    store.put("b", "B", 10)
    assert store.get("a") == "A"  # a is now the most recently used
    store.put("c", "C", 10)
    assert "b" not in store and "a" in store and "c" in store
    stats = store.stats()
    assert (stats.entries, stats.bytes, stats.evicted_lru) == (2, 20, 1)


def test_bytes_bound_evicts_until_the_new_entry_fits() -> None:
    store: SupportStore[int] = SupportStore(max_entries=100, max_bytes=100)
    for index in range(4):
        store.put(f"k{index}", index, 30)
    assert store.nbytes <= 100
    assert [key for key in ("k0", "k1", "k2", "k3") if key in store] == ["k1", "k2", "k3"]
    store.put("big", -1, 90)
    assert store.nbytes == 90 and len(store) == 1


def test_refreshing_a_key_does_not_count_its_bytes_twice() -> None:
    store: SupportStore[int] = SupportStore(max_entries=10, max_bytes=100)
    store.put("a", 1, 60)
    store.put("a", 2, 60)
    assert store.nbytes == 60 and store.get("a") == 2


def test_an_entry_larger_than_the_store_is_refused_with_the_limit() -> None:
    store: SupportStore[int] = SupportStore(max_entries=10, max_bytes=2**20)
    with pytest.raises(InputError, match=r"more than the server's whole support store"):
        store.put("huge", 0, 2**21)
    assert len(store) == 0


def test_unknown_id_says_to_register_again() -> None:
    store: SupportStore[int] = SupportStore()
    with pytest.raises(UnknownSupportError, match="register the support again"):
        store.get("missing")
    assert store.stats().misses == 1


def test_time_to_live_drops_unused_entries_only() -> None:
    clock = FakeClock()
    store: SupportStore[str] = SupportStore(max_entries=10, max_bytes=1000, ttl_s=5.0,
                                            clock=clock)
    store.put("old", "O", 10)
    store.put("used", "U", 10)
    clock.now += 4.0
    store.get("used")
    clock.now += 2.0  # "old" unused for 6 s, "used" for 2 s
    assert "old" not in store and store.get("used") == "U"
    stats = store.stats()
    assert (stats.entries, stats.bytes, stats.expired) == (1, 10, 1)


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"max_bytes": 0}, {"ttl_s": -1.0}])
def test_bad_bounds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        SupportStore(**kwargs)  # type: ignore[arg-type]


def test_support_id_depends_on_content_and_salt_only() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 12, 10, 3), dtype=np.uint8)
    masks = (rng.random((2, 12, 10)) > 0.5).astype(np.uint8)
    key = support_id(list(images), list(masks), "model-a")
    assert key == support_id([image.copy() for image in images], list(masks), "model-a")
    assert len(key) == 32
    changed = masks.copy()
    changed[0, 0, 0] ^= 1
    assert key != support_id(list(images), list(changed), "model-a")
    assert key != support_id(list(images), list(masks), "model-b")
    # the same bytes in another shape are another support
    assert key != support_id([images.reshape(2, 10, 12, 3)[0], images[1]], list(masks), "model-a")


def test_prometheus_text_reports_current_sizes() -> None:
    store: SupportStore[int] = SupportStore(max_entries=3, max_bytes=1000)
    for index in range(5):
        store.put(str(index), index, 7)
    text = prometheus_text(store.stats())
    assert "crnet_support_store_entries 3\n" in text
    assert "crnet_support_store_bytes 21\n" in text
    assert "crnet_support_store_evictions_total 2\n" in text
    assert "# TYPE crnet_support_store_entries gauge" in text
