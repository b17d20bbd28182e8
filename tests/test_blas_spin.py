"""OpenBLAS's idle-thread spin time: set before numpy loads, never over the user's choice."""

from __future__ import annotations

import os
import subprocess
import sys

from onnxprune import blas_spin

_SEEN = "import os, sys; import {module}; print(os.environ.get({variable!r}), 'numpy' in sys.modules)"


def _environ_after(module: str, **extra: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != blas_spin.VARIABLE} | extra
    code = _SEEN.format(module=module, variable=blas_spin.VARIABLE)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    value, numpy_loaded = out.stdout.split()
    return value, numpy_loaded


def test_settle_sets_the_timeout_only_when_unset_and_numpy_not_loaded() -> None:
    environ: dict[str, str] = {}
    assert blas_spin.settle(environ, loaded=False)
    assert environ == {blas_spin.VARIABLE: blas_spin.TIMEOUT}
    mine = {blas_spin.VARIABLE: "20"}
    assert not blas_spin.settle(mine, loaded=False)
    assert mine == {blas_spin.VARIABLE: "20"}
    late: dict[str, str] = {}
    assert not blas_spin.settle(late, loaded=True)
    assert late == {}


def test_importing_onnxprune_or_its_cli_sets_it_before_numpy_is_loaded() -> None:
    # numpy is loaded by the end of either import: the value is there only because it was set first
    assert _environ_after("onnxprune") == (blas_spin.TIMEOUT, "True")
    assert _environ_after("onnxprune.cli") == (blas_spin.TIMEOUT, "True")


def test_the_users_value_stands_and_a_late_import_changes_nothing() -> None:
    assert _environ_after("onnxprune", **{blas_spin.VARIABLE: "24"}) == ("24", "True")
    assert _environ_after("numpy, onnxprune") == ("None", "True")
