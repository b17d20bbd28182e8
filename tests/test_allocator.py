"""The CLI's allocator thresholds (:mod:`onnxprune.allocator`)."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from onnxprune import allocator
from onnxprune.cli import main


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_sets_the_thresholds_unless_the_environment_does(monkeypatch):
    for name in allocator.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert allocator.tune()  # glibc accepts both
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", str(1 << 20))
    assert not allocator.tune()  # the user's setting stands


def test_the_command_line_tunes_its_process(monkeypatch):
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(allocator, "tune", lambda *args: calls.append(args) or True)
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and calls == [()]


def test_tune_does_nothing_off_linux(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert not allocator.tune()


def _worker_thresholds(_: object) -> tuple[int, int] | None:
    return allocator.tuned()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_pool_workers_set_the_thresholds_their_parent_set(monkeypatch):
    """--workers' processes start from a fork server (nothing inherited): each sets them itself."""
    from onnxprune.executors import ProcessExecutor

    for name in allocator.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator, "_TUNED", None)
    with ProcessExecutor(2) as executor:
        assert executor.map(_worker_thresholds, [0, 1]) == [None, None]  # the parent set none
    assert allocator.tune(48 << 20, 96 << 20)
    with ProcessExecutor(2) as executor:
        assert executor.map(_worker_thresholds, [0, 1]) == [(48 << 20, 96 << 20)] * 2
    assert allocator.tune()  # as the command line leaves it
