"""The suite's environment is its own (tests/conftest.py): a developer's home never leaks in."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from ray_heads import check_ray_local, ray_head

from onnxprune.cli_analyze import analyze_command
from onnxprune.errors import OptionError
from onnxprune.executors import ray_cluster as executors
from onnxprune.sensitivity.executors import RayExecutor
from onnxprune.sensitivity.sweep import CACHE_VERSION, default_cache_dir


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


# --- a home that another version, and a Ray run by hand, have left state in -----------------

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ROOT = FIXTURES.parent
MLP = FIXTURES / "mlp_digits.onnx"
HAS_RAY = importlib.util.find_spec("ray") is not None
LINUX = Path("/proc/self/stat").exists()
CHEAP = [str(MLP), "--levels", "0.5", "--workers", "1", "--quiet"]  # data-free weight error, one level: quick

#: What a sweep cache entry from another onnxprune can hold.
STALE = {
    "another-version": lambda real: json.dumps(
        {**real, "version": 1, "curves": [{**c, "loss": [0.0, 9.0]} for c in real["curves"]]}
    ),
    "not-json": lambda real: secrets.token_bytes(64),
    "not-an-object": lambda real: json.dumps([real]),
    "cut-short": lambda real: json.dumps(real)[:100],
    "old-layout": lambda real: json.dumps({"version": CACHE_VERSION, "layers": {"W": [0.1]}, "seconds": "n/a"}),
    "a-folder": None,
}


def _plant_token(home: Path) -> str:
    """A stray ``~/.ray/auth_token`` (what `ray start`, `ray get-auth-token --generate` or a bare
    ``ray.init`` leave); its random content is returned."""
    token = secrets.token_hex(32)
    (home / ".ray").mkdir(parents=True, exist_ok=True)
    (home / ".ray" / "auth_token").write_text(token)
    return token


def _cache_entries(home: Path) -> list[Path]:
    return sorted((home / ".cache" / "onnxprune" / "sensitivity").glob("*.json"))


def _analyze(*args: str) -> Any:
    return CliRunner().invoke(analyze_command, [*CHEAP, *args])


def _plant_stale_entry(home: Path, kind: str) -> Path:
    """The cache entry the cheap analysis uses, as another version left it: measured once here
    (no Ray), then replaced."""
    first = _analyze()
    assert first.exit_code == 0, first.output
    (entry,) = _cache_entries(home)
    real = json.loads(entry.read_text())
    assert real["version"] == CACHE_VERSION
    make = STALE[kind]
    entry.unlink()
    if make is None:
        entry.mkdir()
        (entry / "curves.json").write_text("{}")
    else:
        content = make(real)
        (entry.write_bytes if isinstance(content, bytes) else entry.write_text)(content)
    return entry


@pytest.fixture
def stale_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh home (HOME, XDG_CACHE_HOME) holding a stray Ray token, for one test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    _plant_token(home)
    return home


@pytest.mark.parametrize("kind", sorted(STALE))
def test_a_stale_cache_entry_is_measured_again_and_replaced(stale_home: Path, kind: str) -> None:
    entry = _plant_stale_entry(stale_home, kind)
    again = _analyze()
    assert again.exit_code == 0, again.output
    assert "layer(s) analysed" in again.output and "; cache)" not in again.output  # measured, not read
    if kind == "a-folder":  # nothing can be cached there: a warning, and the curves are used
        assert entry.is_dir() and "; cache)" not in _analyze().output
        return
    assert json.loads(entry.read_text())["version"] == CACHE_VERSION  # replaced by this version's
    third = _analyze()
    assert third.exit_code == 0 and "; cache)" in third.output, third.output


# --- Ray's token authentication -----------------------------------------------------------


class _Mode:
    DISABLED, TOKEN = 0, 1


class _AuthenticationError(Exception):
    pass


class _Raylet(SimpleNamespace):
    """The part of ``ray._raylet`` that token authentication uses, recording the calls (with
    the environment each saw); the mode is read from RAY_AUTH_MODE at Config.initialize, the
    token from RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, as Ray does."""

    def __init__(self, calls: list[tuple[str, dict[str, str]]], refuse: bool = False) -> None:
        def record(name: str) -> None:
            calls.append((name, dict(os.environ)))

        def initialize(text: str) -> None:
            record("Config.initialize")
            self.token_mode = os.environ.get("RAY_AUTH_MODE") == "token"

        def gcs_client(address: str) -> object:
            record("GcsClient")
            if refuse:
                raise _AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
            return object()

        loader = SimpleNamespace(
            reset_cache=lambda: record("reset_cache"),
            has_token=lambda ignore_auth_mode=False: bool(
                os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            ),
        )
        super().__init__(
            calls=calls,
            token_mode=os.environ.get("RAY_AUTH_MODE") == "token",  # read at import
            Config=SimpleNamespace(initialize=initialize),
            AuthenticationTokenLoader=SimpleNamespace(instance=lambda: loader),
            AuthenticationMode=_Mode,
            get_authentication_mode=lambda: _Mode.TOKEN if self.token_mode else _Mode.DISABLED,
            GcsClient=gcs_client,
        )


class _FakeRay(SimpleNamespace):
    """Just what RayExecutor and LocalRay call."""

    def __init__(self, raylet: _Raylet | None) -> None:
        super().__init__(calls=[] if raylet is None else raylet.calls, initialized=False)
        if raylet is not None:
            self._raylet = raylet
            self.exceptions = SimpleNamespace(AuthenticationError=_AuthenticationError)

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, address: str | None = None, **kwargs: Any) -> None:
        self.calls.append(("init", dict(os.environ)))
        self.initialized = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown", dict(os.environ)))
        self.initialized = False


@pytest.fixture
def users_ray_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stale_home: Path) -> dict[str, str]:
    """The worst a user's environment can hold for a Ray of our own (with a stray token in the
    home); RAY_TMPDIR in this test's folder."""
    values = {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "not-this-one", "RAY_AUTH_TOKEN_PATH": "/nonexistent"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    return values


def test_local_ray_runs_with_a_token_of_its_own_whatever_the_user_set(
    monkeypatch: pytest.MonkeyPatch, users_ray_settings: dict[str, str]
) -> None:
    calls: list[tuple[str, dict[str, str]]] = []
    fake = _FakeRay(_Raylet(calls))
    monkeypatch.setitem(sys.modules, "ray", fake)
    executor = RayExecutor("local")
    root = Path(executor.local.root)
    names = [name for name, _ in calls]
    assert names == ["Config.initialize", "reset_cache", "init"]  # this process reads them again first
    for _, env in calls:  # what this process and every Ray process it starts see
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in env
        assert env["RAY_AUTH_TOKEN_PATH"] == str(root / "auth_token")
    token = root / "auth_token"
    assert len(token.read_text()) == 64 and int(token.read_text(), 16) >= 0
    assert token.stat().st_mode & 0o777 == 0o600
    assert token.read_text() != (Path.home() / ".ray" / "auth_token").read_text()
    assert {k: os.environ[k] for k in users_ray_settings} == users_ray_settings  # only during the start
    executor.close()
    names = [name for name, _ in calls]
    assert names == ["Config.initialize", "reset_cache", "init", "shutdown", "Config.initialize", "reset_cache"]
    restored = calls[-2][1]  # the user's settings read again, the token file still there
    assert {k: restored[k] for k in users_ray_settings} == users_ray_settings and token.exists() is False
    assert not fake._raylet.token_mode  # "disabled", as the user set


def test_a_ray_without_token_authentication_gets_no_auth_settings(
    monkeypatch: pytest.MonkeyPatch, users_ray_settings: dict[str, str]
) -> None:
    fake = _FakeRay(None)  # ray 2.9
    monkeypatch.setitem(sys.modules, "ray", fake)
    with RayExecutor("local") as executor:
        assert not (Path(executor.local.root) / "auth_token").exists()
    (_, env), _ = fake.calls
    assert {k: env[k] for k in users_ray_settings} == users_ray_settings


@pytest.mark.parametrize(
    ("settings", "fragments"),
    [
        ({}, ("demands an authentication token", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN")),
        ({"RAY_AUTH_MODE": "token"}, ("RAY_AUTH_MODE is token but no authentication token was found",)),
        (
            {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "old"},
            ("rejects the authentication token from RAY_AUTH_TOKEN",),
        ),
    ],
    ids=["no-token-mode", "token-mode-without-token", "a-wrong-token"],
)
def test_a_cluster_that_demands_a_token_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], fragments: tuple[str, ...]
) -> None:
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    calls: list[tuple[str, dict[str, str]]] = []
    fake = _FakeRay(_Raylet(calls, refuse=True))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(executors, "_reachable", lambda address: None)
    with pytest.raises(OptionError) as error:
        RayExecutor("10.0.0.1:6379")
    message = str(error.value)
    assert "\n" not in message and message.startswith("cannot connect to the Ray cluster at '10.0.0.1:6379': ")
    for fragment in fragments:
        assert fragment in message, message
    assert "init" not in [name for name, _ in calls]  # asked first, not after ray.init's 20 s of retries


def test_a_cluster_that_lets_us_in_is_connected_to(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, str]]] = []
    fake = _FakeRay(_Raylet(calls))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(executors, "_reachable", lambda address: None)
    with RayExecutor("10.0.0.1:6379") as executor:
        assert executor.local is None
    assert [name for name, _ in calls] == ["GcsClient", "init"]  # and never shut down


# --- the same with a real Ray ---------------------------------------------------------------


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A fresh folder under /tmp: Ray's unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="oph", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _ray_has_token_auth() -> bool:
    probe = "import ray._raylet as r; print(hasattr(r, 'AuthenticationTokenLoader'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return out.stdout.strip() == "True"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")
@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_analyze_ray_local_ignores_a_stray_token_and_a_stale_cache(
    short_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = short_root / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the check runs it with this HOME too
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    token = _plant_token(home)
    entry = _plant_stale_entry(home, "another-version")
    tool = check_ray_local()
    outcome = tool.run([sys.executable, "-m", "onnxprune", "analyze", *CHEAP, "--ray", "local"], root=short_root)
    assert outcome.returncode == 0, f"exit code {outcome.returncode}; stderr:\n{outcome.stderr[-2000:]}"
    assert "layer(s) analysed" in outcome.stdout and "; cache)" not in outcome.stdout, outcome.stdout
    assert outcome.ray_ran, outcome.seen_text()
    assert any(x.name == "gcs_server" for x in outcome.listeners), outcome.listeners
    assert not outcome.exposed, "\n".join(map(str, outcome.exposed))
    assert not outcome.at_exit and not outcome.leftovers, (outcome.at_exit, outcome.leftovers)
    assert not outcome.temp_left, outcome.temp_left
    assert sorted(p.name for p in (home / ".ray").iterdir()) == ["auth_token"]  # left as it was
    assert (home / ".ray" / "auth_token").read_text() == token
    assert json.loads(entry.read_text())["version"] == CACHE_VERSION  # measured again, replaced


_OWN_TOKEN_SCRIPT = r'''
import json, os, subprocess, sys
import ray
from onnxprune.sensitivity.executors import RayExecutor


def negative(x):
    return -x


PROBE = """
import sys
import ray._raylet
try:
    ray._raylet.GcsClient(address=sys.argv[1])
    print("in")
except Exception as exc:
    print(type(exc).__name__)
"""
out = {}
with RayExecutor("local") as executor:
    gcs = ray._private.worker._global_node.gcs_address
    token = os.path.join(executor.local.root, "auth_token")
    out["tasks"] = executor.map(negative, [-1, -2])
    def ask(**env):
        child = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        run = subprocess.run([sys.executable, "-c", PROBE, gcs], env={**child, **env}, capture_output=True, text=True)
        return run.stdout.strip()
    out["no token"] = ask()
    out["the home's token"] = ask(RAY_AUTH_MODE="token")
    out["its token"] = ask(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
out["env after"] = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
out["mode after"] = int(ray._raylet.get_authentication_mode())
print(json.dumps(out))
'''


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")
def test_local_ray_lets_in_only_who_holds_its_own_token(short_root: Path) -> None:
    if not _ray_has_token_auth():
        pytest.skip("this ray has no token authentication")
    home = short_root / "home"
    token = _plant_token(home)
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": str(short_root / "ray")}
    env.update(RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN_PATH=str(short_root / "nothing"))  # the user's
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    run = subprocess.run(
        [sys.executable, "-c", _OWN_TOKEN_SCRIPT], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["tasks"] == [1, 2]
    assert out["no token"] == "AuthenticationError" and out["the home's token"] == "AuthenticationError"
    assert out["its token"] == "in"
    assert out["env after"] == {
        "RAY_AUTH_MODE": "disabled",
        "RAY_AUTH_TOKEN": None,
        "RAY_AUTH_TOKEN_PATH": env["RAY_AUTH_TOKEN_PATH"],
    }
    assert out["mode after"] == 0  # this process reads the user's "disabled" again
    assert (home / ".ray" / "auth_token").read_text() == token
    assert not list((short_root / "ray").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY or not Path(sys.executable).with_name("ray").exists(), reason="ray is not installed")
def test_analyze_at_a_cluster_that_demands_a_token_says_how_to_give_it(short_root: Path) -> None:
    """A `ray start --head` with token authentication on loopback; analyze without its token is
    a one-line error (exit code 2), with RAY_AUTH_MODE=token and its token it runs."""
    if not _ray_has_token_auth():
        pytest.skip("this ray has no token authentication")
    token = secrets.token_hex(32)
    (short_root / "token").write_text(token)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    head_env = {**clean, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(short_root / "token")}
    with ray_head(temp_dir=short_root / "ray", env=head_env) as port:
        argv = [sys.executable, "-m", "onnxprune", "analyze", *CHEAP, "--no-cache", "--ray", f"127.0.0.1:{port}"]
        env = {**clean, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), clean.get("PYTHONPATH", "")) if p)}
        refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert refused.stderr.strip().count("\n") == 0, refused.stderr  # Ray's own warning line kept aside
        assert "demands an authentication token" in refused.stderr and "RAY_AUTH_MODE=token" in refused.stderr
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        let_in = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert let_in.returncode == 0 and "layer(s) analysed" in let_in.stdout, let_in.stderr[-2000:]
