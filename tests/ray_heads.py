"""Ray heads of the tests' own, on loopback, and the ``check_ray_local`` tool as a module.

:func:`ray_head` starts ``ray start --head --block`` on 127.0.0.1 at a free port, in a process
group of its own, waits until the port answers, and ends that group afterwards (SIGTERM, then
SIGKILL after 30 s): other Ray clusters on the machine are left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType

import pytest
from tool_scripts import load_tool

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(*, temp_dir: Path, env: Mapping[str, str], num_cpus: int = 1) -> Iterator[int]:
    """A Ray head on 127.0.0.1 (``temp_dir`` must be short: Ray's socket paths stay under 108
    bytes); yields its port. No 30 s drain on SIGTERM (its GCS is gone by then)."""
    port = free_port()
    command = [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"]
    command += [f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats"]
    command += [f"--temp-dir={temp_dir}"]
    env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    head = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start: {head.stderr.read().decode()[-400:] if head.stderr else ''}")
            time.sleep(0.5)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def check_ray_local() -> ModuleType:
    """``tools/check_ray_local.py``, imported as the module ``check_ray_local``."""
    return load_tool("check_ray_local")
