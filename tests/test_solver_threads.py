"""The solvers' BLAS limit (:mod:`onnxprune.reconstruct.threads`): one thread inside
:func:`one_blas_thread`, restored after; a helper thread under its caller's limit leaves it alone."""

from __future__ import annotations

import threading

import pytest

from onnxprune.reconstruct import threads

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads() -> int:
    return min(info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas")


def test_one_blas_thread_limits_and_restores() -> None:
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with threads.one_blas_thread():
            assert _blas_threads() == 1
            with threads.one_blas_thread():  # nested in the same thread: nothing more to do
                assert _blas_threads() == 1
            assert _blas_threads() == 1
        assert _blas_threads() == 2


def test_a_helper_under_its_callers_limit_neither_sets_nor_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside :func:`under_callers_blas_limit` a helper's :func:`one_blas_thread` does not touch the
    process-wide limit (entering it again would race the caller's own exit); the caller's exit
    restores the BLAS's count, and the helper's thread is left as it was."""
    seen: list[int] = []
    calls: list[object] = []
    real = threads._controller()
    if real is None:
        pytest.skip("no BLAS found by threadpoolctl")

    class Counting:
        def limit(self, **kw: object) -> object:
            calls.append(threading.current_thread().name)
            return real.limit(**kw)

    monkeypatch.setattr(threads, "_CONTROLLER", [Counting()])

    def helper() -> None:
        with threads.under_callers_blas_limit(), threads.one_blas_thread():
            seen.append(_blas_threads())
        seen.append(int(getattr(threads._STATE, "inside", False)))

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with threads.one_blas_thread():
            worker = threading.Thread(target=helper, name="helper")
            worker.start()
            worker.join()
        assert _blas_threads() == 2
    assert seen == [1, 0]
    assert calls == [threading.current_thread().name]  # the caller's limit only
