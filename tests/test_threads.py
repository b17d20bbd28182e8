"""The thread helpers: results in order, errors as their own type, at most two alive."""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from functools import partial

import pytest

from onnxprune.threads import computed_ahead, map_in_threads


def test_map_in_threads_keeps_the_order_and_runs_side_by_side():
    both = threading.Barrier(2, timeout=30)  # two calls must be running at once to pass it

    def call(i: int) -> int:
        if i < 2:
            both.wait()
        return i * i

    assert map_in_threads(call, list(range(7))) == [i * i for i in range(7)]
    assert map_in_threads(call, []) == []


def test_map_in_threads_raises_a_call_s_error_as_its_own():
    def call(i: int) -> int:
        if i == 3:
            raise KeyError("three")
        return i

    with pytest.raises(KeyError, match="three"):
        map_in_threads(call, list(range(6)))


def test_computed_ahead_runs_calls_in_order_one_ahead_of_the_caller():
    events: list[str] = []
    second = threading.Event()

    def call(i: int) -> int:
        events.append(f"call {i}")
        if i == 1:
            second.set()
        if i == 3:
            raise ValueError("three")
        return i

    with ThreadPoolExecutor(max_workers=1) as pool:
        results = computed_ahead([partial(call, i) for i in range(6)], pool)
        assert next(results) == 0
        assert second.wait(timeout=30)
        assert events == ["call 0", "call 1"]  # the next one is computed while the caller holds one
        events.append("used 0")
        assert next(results) == 1
        assert next(results) == 2
        with pytest.raises(ValueError, match="three"):
            next(results)
    assert events[:3] == ["call 0", "call 1", "used 0"]
    assert "call 5" not in events  # nothing runs two ahead, nor after the failure
    assert [e for e in events if e.startswith("call")][:4] == ["call 0", "call 1", "call 2", "call 3"]


class _AtOnce(Executor):
    """Runs each call as it is submitted (what a free worker may do): the order is then fixed."""

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_computed_ahead_lets_a_used_result_go_before_the_call_two_after_it_starts():
    """At most two results alive: once the caller has let result ``i`` go, nothing of the helper
    holds it (its future neither) when call ``i + 2`` starts."""

    class Result:
        pass

    made: list[weakref.ref[Result]] = []
    alive_at_start: list[list[int]] = []

    def call(i: int) -> Result:
        alive_at_start.append([j for j, ref in enumerate(made) if ref() is not None])
        result = Result()
        made.append(weakref.ref(result))
        return result

    for result in computed_ahead([partial(call, i) for i in range(6)], _AtOnce()):
        del result
    assert alive_at_start == [[], [0], [1], [2], [3], [4]]  # the one before only: never a used one
