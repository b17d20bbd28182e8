"""``--ray local``: a Ray of our own that listens on 127.0.0.1 only and leaves no process behind,
at a normal end and on SIGINT/SIGTERM (``tools/check_ray_local.py`` does the sampling); a
cluster at an address is only ever connected to."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray_heads import check_ray_local

from onnxprune.executors import ray_cluster as executors
from onnxprune.sensitivity.executors import RAY_MARKER, LocalRay, RayExecutor

ROOT = Path(__file__).resolve().parent.parent
HAS_RAY = importlib.util.find_spec("ray") is not None
LINUX = Path("/proc/self/stat").exists()


@pytest.fixture
def short_dir():
    """A fresh folder under /tmp: Ray's unix socket paths (under RAY_TMPDIR) must stay under 108
    bytes, which pytest's tmp_path can exceed. HOME, TMPDIR and RAY_TMPDIR all go there."""
    path = Path(tempfile.mkdtemp(prefix="opr", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _explain(outcome) -> str:
    return f"exit code {outcome.returncode}; stderr:\n{outcome.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")
@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_analyze_ray_local_listens_on_loopback_only_and_leaves_nothing(short_dir):
    tool = check_ray_local()
    outcome = tool.run(tool.command(sys.executable), root=short_dir)
    assert outcome.returncode == 0, _explain(outcome)
    assert outcome.ray_ran, outcome.seen_text()
    assert any(x.name == "gcs_server" for x in outcome.listeners), outcome.listeners  # sampled while it ran
    assert not outcome.exposed, "\n".join(map(str, outcome.exposed))
    assert not outcome.at_exit, outcome.at_exit
    assert not outcome.leftovers, outcome.leftovers
    assert not outcome.temp_left, outcome.temp_left
    assert not (short_dir / "home" / ".ray").exists()  # its token is its own: none made in ~/.ray


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")
@pytest.mark.skipif(not LINUX, reason="reads /proc")
@pytest.mark.parametrize(
    ("signum", "to_group", "when"),
    [(signal.SIGINT, True, "task"), (signal.SIGTERM, False, "task"), (signal.SIGINT, True, "start")],
    ids=["ctrl-c-to-the-group", "sigterm-to-the-process", "ctrl-c-while-ray-starts"],
)
def test_a_signal_leaves_no_ray_process(short_dir, signum, to_group, when):
    tool = check_ray_local()
    outcome = tool.run(tool.command(sys.executable), root=short_dir, signum=signum, to_group=to_group, when=when)
    assert outcome.signalled, f"it ended before the {when} stage: " + _explain(outcome)
    assert outcome.returncode == 128 + signum, _explain(outcome)  # not a crash on the way out
    assert not outcome.exposed, "\n".join(map(str, outcome.exposed))
    assert not outcome.at_exit, outcome.at_exit
    assert not outcome.leftovers, outcome.leftovers
    assert not outcome.temp_left, outcome.temp_left


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_stragglers_are_found_by_the_marker_and_their_parents_and_ended(tmp_path):
    """The processes carrying the marker, and those below them, are ended; another is not."""
    root = str(tmp_path / "onnxprune-ray-test")
    parent_code = (  # its child runs without the marker: found as its child
        "import os, subprocess, sys, time; env = {k: v for k, v in os.environ.items() if k != sys.argv[1]}; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], env=env); time.sleep(60)"
    )
    env = {**os.environ, RAY_MARKER: root}
    marked = subprocess.Popen([sys.executable, "-c", parent_code, RAY_MARKER], env=env)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 20
        while len(found := executors._processes_of(root)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marked.pid in found and len(found) == 2 and other.pid not in found, found
        assert executors._end_processes(found, grace=5) == set()
        assert marked.wait(timeout=10) is not None
        assert not executors._processes_of(root)
        assert other.poll() is None
    finally:
        for proc in (marked, other):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


class FakeRay(SimpleNamespace):
    """Just what RayExecutor calls, recording it."""

    def __init__(self) -> None:
        super().__init__(calls=[], initialized=False, env=None, interrupt=False)

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, address=None, *, num_cpus=None, include_dashboard=None, log_to_driver=True, **kwargs):
        self.calls.append(("init", {"address": address, "include_dashboard": include_dashboard, **kwargs}))
        self.env = dict(os.environ)
        signal.signal(signal.SIGTERM, _rays_sigterm_handler)  # as ray.init does
        if self.interrupt:  # Ctrl-C while Ray starts
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        self.initialized = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown", {}))
        self.initialized = False


def _rays_sigterm_handler(signum, frame):
    sys.exit(signum)


_rays_sigterm_handler.__module__ = "ray._private.worker"


@pytest.fixture
def fake_ray(monkeypatch, tmp_path):
    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    return ray


def test_local_starts_its_own_ray_on_loopback_and_stops_it(fake_ray, tmp_path):
    executor = RayExecutor("local")
    assert isinstance(executor.local, LocalRay)
    (name, kwargs), *_ = fake_ray.calls
    assert name == "init" and kwargs["address"] == "local"  # never a RAY_ADDRESS cluster
    assert kwargs["_node_ip_address"] == "127.0.0.1" and kwargs["include_dashboard"] is False
    assert "dashboard_host" not in kwargs  # this ray.init has no such parameter: left out
    temp = Path(kwargs["_temp_dir"])
    assert temp.parent == tmp_path / "raytmp" and temp.is_dir()
    assert fake_ray.env["RAY_USAGE_STATS_ENABLED"] == "0" and fake_ray.env[RAY_MARKER] == str(temp)
    assert RAY_MARKER not in os.environ  # what the application starts later is not Ray's
    executor.close()
    assert [c[0] for c in fake_ray.calls] == ["init", "shutdown"]
    assert not temp.exists()
    assert RAY_MARKER not in os.environ and "RAY_USAGE_STATS_ENABLED" not in os.environ
    executor.close()  # once only
    assert [c[0] for c in fake_ray.calls] == ["init", "shutdown"]


def test_an_address_is_only_connected_to(fake_ray, monkeypatch):
    monkeypatch.setattr(executors, "_reachable", lambda address: None)
    with RayExecutor("10.0.0.1:6379") as executor:
        assert executor.local is None
    assert [c[0] for c in fake_ray.calls] == ["init"]  # someone else's cluster: never shut down
    assert fake_ray.calls[0][1]["address"] == "10.0.0.1:6379" and "_temp_dir" not in fake_ray.calls[0][1]


def test_a_ray_running_already_is_used_and_left_running(fake_ray):
    fake_ray.initialized = True
    RayExecutor("local").close()
    assert fake_ray.calls == []


def test_sigterm_exits_through_the_clean_up_and_an_application_handler_is_kept(fake_ray):
    def application(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        executor = RayExecutor("local")
        assert signal.getsignal(signal.SIGTERM) == executor.local._on_signal
        with pytest.raises(SystemExit) as exc:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes
        assert exc.value.code == 128 + signal.SIGTERM
        executor.close()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        signal.signal(signal.SIGTERM, application)
        executor = RayExecutor("local")
        assert signal.getsignal(signal.SIGTERM) is application
        executor.close()
        assert signal.getsignal(signal.SIGTERM) is application
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_while_ray_starts_is_raised_once_it_is_up(fake_ray, monkeypatch):
    """Not in the middle of ray.init (ray 2.60 then crashed at exit): the start completes, the
    KeyboardInterrupt comes right after, and the exit stops that Ray."""
    made = []
    init = LocalRay.__init__

    def spy(self, ray):
        made.append(self)
        init(self, ray)

    monkeypatch.setattr(LocalRay, "__init__", spy)
    fake_ray.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        RayExecutor("local")
        time.sleep(1)
    assert fake_ray.initialized  # ray.init ran to its end
    assert [c[0] for c in fake_ray.calls] == ["init"]
    made[0].stop()  # what atexit does
    assert [c[0] for c in fake_ray.calls] == ["init", "shutdown"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
