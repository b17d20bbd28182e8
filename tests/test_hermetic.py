"""The suite's environment is its own (tests/conftest.py): a developer's home never leaks in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from onnxprune.sensitivity.sweep import default_cache_dir


def test_home_and_caches_are_the_sessions_own(hermetic_home: Path) -> None:
    real = Path(os.path.expanduser("~"))
    assert real == hermetic_home
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        assert Path(os.environ[name]).is_relative_to(hermetic_home)
    assert default_cache_dir().is_relative_to(hermetic_home)
    assert "RAY_ADDRESS" not in os.environ


def test_a_subprocess_sees_the_same_home(hermetic_home: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.path.expanduser('~'))"], capture_output=True, text=True, check=True
    )
    assert Path(out.stdout.strip()) == hermetic_home
