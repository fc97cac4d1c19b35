"""One Segmenter shared by threads: support handles give every thread its own support, and
set_support() from several threads raises rather than mixing supports."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.runtime import Segmenter
from crnet.runtime.segmenter import NoSupportError, SupportReplacedError, SupportSet

THREADS = 8
SEGMENTS = 40  # per thread


@pytest.fixture(scope="module")
def shared(runtime_bundle: Path) -> Iterator[tuple[Segmenter, list[Any], np.ndarray]]:
    """(segmenter, THREADS support sets (images, masks), one query image)."""
    from crnet.data.synthetic import Synthetic5i

    dataset = Synthetic5i(0, split="test", seed=0)
    supports = []
    for index in range(THREADS):
        episode = dataset.episode(index, 1)
        supports.append((list(episode.support_images), list(episode.support_masks)))
    query = dataset.episode(0, 1).query_image
    segmenter = Segmenter(runtime_bundle, backend="onnxruntime", threads=1)
    yield segmenter, supports, query
    segmenter.close()


@pytest.fixture(scope="module")
def expected(shared: tuple[Segmenter, list[Any], np.ndarray]) -> list[np.ndarray]:
    """The query's mask under each thread's support, computed in one thread."""
    segmenter, supports, query = shared
    masks = [segmenter.segment(query, support=segmenter.encode_support(*s)) for s in supports]
    # every support gives another mask, so a mask computed with the wrong support shows
    for index, mask in enumerate(masks):
        assert all(not np.array_equal(mask, other) for other in masks[index + 1:])
    return masks


def _run_threads(work: Callable[[int], None]) -> None:
    """``work(thread_index)`` in THREADS threads started together; re-raise their errors."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index)
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(index,), name=f"worker-{index}")
               for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _segment_outcome(segmenter: Segmenter, query: np.ndarray, expected_mask: np.ndarray
                     ) -> str:
    """Segment with the Segmenter's current support: "right" (the thread's own mask),
    "wrong" (another thread's support was used) or "raised" (SupportReplacedError)."""
    try:
        mask = segmenter.segment(query)
    except SupportReplacedError:
        return "raised"
    return "right" if np.array_equal(mask, expected_mask) else "wrong"


def test_support_handles_give_every_thread_its_own_masks(shared, expected) -> None:  # noqa: ANN001
    segmenter, supports, query = shared
    start = threading.Barrier(THREADS)
    wrong, right = [0] * THREADS, [0] * THREADS

    def work(index: int) -> None:
        handle = segmenter.encode_support(*supports[index])
        start.wait()
        for _ in range(SEGMENTS):
            mask = segmenter.segment(query, support=handle)
            if np.array_equal(mask, expected[index]):
                right[index] += 1
            else:
                wrong[index] += 1

    _run_threads(work)
    assert (sum(wrong), sum(right)) == (0, THREADS * SEGMENTS)


def test_set_support_in_every_thread_raises_instead_of_mixing(shared, expected) -> None:  # noqa: ANN001
    """Each round every thread sets its support, waits for the others, then segments: the
    cached support is the last thread's, so the 7 others must raise, never segment."""
    segmenter, supports, query = shared
    round_done = threading.Barrier(THREADS)
    outcomes: dict[str, int] = {"right": 0, "wrong": 0, "raised": 0}
    count = threading.Lock()

    def work(index: int) -> None:
        for _ in range(SEGMENTS):
            segmenter.set_support(*supports[index])
            round_done.wait()
            outcome = _segment_outcome(segmenter, query, expected[index])
            with count:
                outcomes[outcome] += 1
            round_done.wait()

    _run_threads(work)
    assert outcomes == {"right": SEGMENTS, "wrong": 0, "raised": (THREADS - 1) * SEGMENTS}


def test_set_support_racing_threads_never_get_a_wrong_mask(shared, expected) -> None:  # noqa: ANN001
    segmenter, supports, query = shared
    outcomes: dict[str, int] = {"right": 0, "wrong": 0, "raised": 0}
    count = threading.Lock()
    start = threading.Barrier(THREADS)

    def work(index: int) -> None:
        start.wait()
        for _ in range(SEGMENTS):
            segmenter.set_support(*supports[index])
            # the tiny model is quick enough to finish both calls in one turn of the GIL:
            # let other threads run between them, as an application's own work would
            time.sleep(0)
            outcome = _segment_outcome(segmenter, query, expected[index])
            with count:
                outcomes[outcome] += 1

    _run_threads(work)
    assert outcomes["wrong"] == 0
    assert outcomes["right"] + outcomes["raised"] == THREADS * SEGMENTS


def test_one_thread_sets_the_support_and_workers_segment(shared, expected) -> None:  # noqa: ANN001
    segmenter, supports, query = shared
    segmenter.set_support(*supports[3])
    masks: list[np.ndarray] = []

    def work(_: int) -> None:
        masks.extend(segmenter.segment(query) for _ in range(SEGMENTS // 4))

    _run_threads(work)
    assert len(masks) == THREADS * (SEGMENTS // 4)
    assert all(np.array_equal(mask, expected[3]) for mask in masks)
    segmenter.clear_support()


class _Thread:
    """One long-lived thread that runs the calls given to it, in order."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._pool.submit(function, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown()


@pytest.fixture
def two_threads() -> Iterator[tuple[_Thread, _Thread]]:
    first, second = _Thread("first"), _Thread("second")
    yield first, second
    first.close()
    second.close()


def test_batch_and_stream_follow_the_same_rule(shared, expected, two_threads) -> None:  # noqa: ANN001
    segmenter, supports, query = shared
    first, second = two_threads
    first(segmenter.set_support, *supports[0])
    second(segmenter.set_support, *supports[1])
    calls: dict[str, Callable[[], Any]] = {
        "segment": lambda: segmenter.segment(query),
        "segment_batch": lambda: segmenter.segment_batch([query, query]),
        "segment_stream": lambda: list(segmenter.segment_stream([query, query])),
        "segment_stream unpipelined": lambda: list(
            segmenter.segment_stream([query], pipeline=False)),
    }
    for name, call in calls.items():
        with pytest.raises(SupportReplacedError, match=r"'first_0'.*'second_0'.*support="):
            first(call)
        got = second(call)
        masks = [got] if isinstance(got, np.ndarray) else got
        assert all(np.array_equal(mask, expected[1]) for mask in masks), name
    handle = first(segmenter.encode_support, *supports[0])
    assert np.array_equal(first(lambda: segmenter.segment(query, support=handle)), expected[0])
    batch = first(lambda: segmenter.segment_batch([query] * 3, support=handle))
    stream = first(lambda: list(segmenter.segment_stream([query] * 3, support=handle)))
    assert all(np.array_equal(mask, expected[0]) for mask in [*batch, *stream])
    segmenter.clear_support()


def test_clear_support_clears_only_the_calling_threads_support(shared, expected,  # noqa: ANN001
                                                               two_threads) -> None:
    segmenter, supports, query = shared
    first, second = two_threads
    first(segmenter.set_support, *supports[0])
    second(segmenter.set_support, *supports[1])
    first(segmenter.clear_support)  # its support is gone already: the second's stays
    assert isinstance(segmenter.support, SupportSet)
    assert np.array_equal(second(segmenter.segment, query), expected[1])
    second(segmenter.clear_support)
    assert segmenter.support is None
    with pytest.raises(NoSupportError, match="set_support"):
        second(segmenter.segment, query)
    # a thread that never set one clears the current support, whoever set it
    first(segmenter.set_support, *supports[2])
    segmenter.clear_support()
    assert segmenter.support is None


def test_a_thread_setting_again_gets_its_new_support(shared, expected, two_threads) -> None:  # noqa: ANN001
    segmenter, supports, query = shared
    first, second = two_threads
    first(segmenter.set_support, *supports[0])
    second(segmenter.set_support, *supports[1])
    with pytest.raises(SupportReplacedError):
        first(segmenter.segment, query)
    first(segmenter.set_support, *supports[4])
    assert np.array_equal(first(segmenter.segment, query), expected[4])
    with pytest.raises(SupportReplacedError, match="'second_0' set a support"):
        second(segmenter.segment, query)
    segmenter.clear_support()
