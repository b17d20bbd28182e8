"""Tasks on a Ray cluster (``ray`` is an optional extra: ``pip install 'onnxprune[ray]'``).

:class:`RayExecutor` runs each task as a Ray remote function on the cluster at ``address``, for
work too big for one machine (see :mod:`onnxprune.executors.base` for the contract: results in
task order, a task's error as its own type). ``"local"`` starts a Ray of our own
(:class:`LocalRay`): every listener on 127.0.0.1, no dashboard, no usage stats, its own temporary
folder, and stopped with every process it started when the executor is closed, at exit, on an
exception and on SIGINT/SIGTERM/SIGHUP; with a token of its own where Ray has token
authentication, whatever ``~/.ray`` or the environment holds. A cluster at an address belongs to
someone else: we connect to it and only ever disconnect; one that demands a token we do not
have is a one-line error that says how to give it.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

from onnxprune.errors import OnnxPruneError, OptionError, opt
from onnxprune.executors.base import task_label
from onnxprune.passes.base import Progress

log = logging.getLogger(__name__)


class RayExecutor:
    """Tasks as Ray remote functions on the cluster at ``address`` ("local" starts one here).

    Close it (or use it as a context manager) to stop a Ray it started; at the latest that
    happens at exit. A Ray that was running already, in this process or at ``address``, is
    used and left running.
    """

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise OptionError(_NO_RAY) from None
        self.ray = ray
        self.address = address
        self.local: LocalRay | None = None
        _reachable(address)
        if not ray.is_initialized():
            try:
                if address == "local":
                    self.local = LocalRay(ray)
                else:
                    _gcs_lets_us_in(ray, address)
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except OptionError:
                raise
            except Exception as exc:  # ray raises ConnectionError, RuntimeError ... with long texts
                if _is_authentication_error(ray, exc):
                    raise OptionError(_token_advice(ray, address)) from exc
                raise OptionError(f"cannot connect to the Ray cluster at '{address}': {_first_line(exc)}") from exc

    def close(self) -> None:
        """Stop the Ray this executor started (and every process of it); nothing else."""
        if self.local is not None:
            self.local.stop()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: Progress | None = None) -> list[Any]:
        refs: list[Any] = []
        try:
            remote = self.ray.remote(fn)
            for task in tasks:
                refs.append(remote.remote(task))
            return self._collect(refs, tasks, progress)
        except BaseException as exc:
            for ref in refs:  # what has not run yet (a finished task ignores it)
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref)
            # Interrupted (Ctrl-C) or failed: the traceback's frames hold the ObjectRefs, and
            # one released after ray.shutdown (which runs at exit) crashes the process
            # (SIGSEGV with ray 2.60 instead of exit code 130); let go of them now.
            traceback.clear_frames(exc.__traceback__)
            refs.clear()
            raise

    def _collect(self, refs: list[Any], tasks: Sequence[Any], progress: Progress | None) -> list[Any]:
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(tasks)
        pending, done = list(refs), 0
        while pending:
            # Polled, the waiting done in Python: a signal that arrives in a blocking ray.wait is
            # raised as a plain KeyboardInterrupt, whatever its handler raised (ray 2.9).
            ready, pending = self.ray.wait(pending, num_returns=1, timeout=0)
            if not ready:
                time.sleep(0.05)
            for ref in ready:
                results[index[ref]] = self._get(ref, tasks[index[ref]])
                done += 1
                if progress is not None:
                    progress(done, len(tasks), task_label(tasks[index[ref]]))
        return results

    def _get(self, ref: Any, task: Any) -> Any:
        """``ray.get(ref)``; a task's own exception raised as itself (Ray wraps it in a
        ``RayTaskError`` whose text is the remote traceback: that goes to the debug log), a
        worker lost as a one-line :class:`~onnxprune.errors.OnnxPruneError`."""
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            log.debug("task '%s' failed on Ray:\n%s", task_label(task), getattr(exc, "traceback_str", exc))
            traceback.clear_frames(exc.__traceback__)
            if isinstance(cause, BaseException):
                raise cause from None
            raise OnnxPruneError(f"'{task_label(task)}' failed on Ray: {_first_line(exc)}") from None
        except exceptions.RayError as exc:  # a worker or node lost, an object lost, out of memory
            traceback.clear_frames(exc.__traceback__)
            raise OnnxPruneError(f"'{task_label(task)}' was lost on Ray: {_first_line(exc)}") from None


def require_ray() -> None:
    """Raise a one-line :class:`~onnxprune.errors.OptionError` when the ray package is missing
    (found without importing it: that takes seconds)."""
    import importlib.util

    if "ray" in sys.modules:  # imported already (or marked missing: None)
        found = sys.modules["ray"] is not None
    else:
        try:
            found = importlib.util.find_spec("ray") is not None
        except (ImportError, ValueError):
            found = False
    if not found:
        raise OptionError(_NO_RAY)


_NO_RAY = f"{opt('ray')} needs the ray package: pip install 'onnxprune[ray]'"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: Set in the environment of every process a LocalRay starts, so its stragglers can be told
#: apart from anyone else's Ray (the value is that Ray's temporary folder).
RAY_MARKER = "ONNXPRUNE_RAY_LOCAL"
_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class LocalRay:
    """A Ray started in this process for this process, reachable from this machine only.

    - ``ray.init(address="local", ...)`` (a ``RAY_ADDRESS`` in the environment is not followed),
      with ``_node_ip_address="127.0.0.1"``. Ray would turn that address into the machine's
      outward one (``resolve_ip_for_localhost``: loopback only where its
      ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` switch is off, the default on macOS and Windows
      only), and its GCS, raylet and worker gRPC servers would then listen on every interface
      (``*:port``) and its agents on that address; so for the start that switch is turned off
      (in ``ray._private.ray_constants`` and in the environment the Ray processes inherit),
      and the node's address is 127.0.0.1: every TCP listener of Ray 2.9 to 2.60 is then on
      127.0.0.1 (``tools/check_ray_local.py`` shows them).
    - ``include_dashboard=False`` with ``dashboard_host="127.0.0.1"`` (should a Ray start it
      anyway), usage stats off (``RAY_USAGE_STATS_ENABLED=0``), log lines not forwarded.
      These switches and :data:`RAY_MARKER` are set in ``os.environ`` during ``ray.init``
      only: the processes Ray starts inherit them (its workers from the raylet), those the
      application starts later do not.
    - Token authentication (where Ray has it, see :func:`_token_auth`) on, with a token of its
      own: a random one written to ``auth_token`` in its temporary folder (mode 0600), and
      ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` to that file (``RAY_AUTH_TOKEN``
      removed) in the same environment. So a ``~/.ray/auth_token``, or the user's
      ``RAY_AUTH_*`` variables, change nothing (Ray would otherwise use them, or fail on a
      ``RAY_AUTH_TOKEN_PATH`` to nothing), none is written to ``~/.ray`` (a bare ``ray.init``
      creates one there), and another user of the machine cannot run tasks on this Ray through
      its loopback ports. This process reads those settings once, when ray is imported: they
      are read again (``Config.initialize``, its token cache emptied) before the start and,
      with the environment as it was, at :meth:`stop` (unless another Ray runs then).
    - Its own temporary folder (under ``RAY_TMPDIR``, else /tmp as Ray does: its socket paths
      must stay under 108 bytes), removed at the end.
    - :meth:`stop` runs ``ray.shutdown()`` (unless the application has stopped this Ray and
      started another meanwhile), then ends what is left of the processes it started
      (SIGTERM, then SIGKILL): those below the Ray processes, or carrying this folder in their
      command line or environment, as listed just before the shutdown (a pid is only signalled
      while its start time is the one listed). It runs at exit (``atexit``): after a normal
      end, an exception, SIGINT's KeyboardInterrupt, and SIGTERM or SIGHUP (see
      :meth:`_take_signals`). Signals are ignored while it runs (a few seconds), so that a
      second Ctrl-C cannot cut it short. Nothing stops what a SIGKILL leaves, though Ray ends
      the GCS and the raylet with their parent.
    - While ``ray.init`` runs, SIGINT, SIGTERM and SIGHUP wait (a second one acts at once) and
      Ray is kept from setting its SIGTERM handler; a signal that waited is raised again once
      Ray is up, and stops it as above. (ray 2.60 interrupted in the last part of its start
      crashed at exit, SIGSEGV, after the clean-up.)
    """

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.stopped = False
        self._folder = tempfile.TemporaryDirectory(
            prefix="onnxprune-ray-", dir=_ray_temp_parent(), ignore_cleanup_errors=True
        )
        self.root = self._folder.name
        self._handlers: dict[int, Any] = {}
        atexit.register(self.stop)  # before ray.init: an interrupted start is cleaned up too
        kwargs: dict[str, Any] = {
            "address": "local",
            "num_cpus": os.cpu_count() or 1,
            "include_dashboard": False,
            "dashboard_host": "127.0.0.1",
            "log_to_driver": False,
            "_node_ip_address": "127.0.0.1",
            "_temp_dir": self.root,
        }
        named = inspect.signature(ray.init).parameters
        kwargs = {k: v for k, v in kwargs.items() if k.startswith("_") or k in named}
        env: dict[str, str | None] = {
            RAY_MARKER: self.root,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }
        self._auth = _token_auth(ray)
        handlers = _handlers_now()
        try:
            if self._auth is not None:
                env.update(_own_token(self.root))
            with (
                _signals_deferred() as pending,
                _environment(env),
                _loopback_node_address(ray),
                _no_ray_sigterm_handler(),
            ):
                if self._auth is not None:
                    _reload_auth_settings(self._auth)  # this process: token mode, our token
                ray.init(**kwargs)
        except BaseException:
            self._take_signals(handlers)
            self.stop()
            raise
        self._take_signals(handlers)
        log.info("started a local Ray on 127.0.0.1 in %s", self.root)
        for signum in pending:  # a Ctrl-C during the start: now that Ray is up, it stops it
            signal.raise_signal(signum)

    def stop(self) -> None:
        """``ray.shutdown()``, then end every process left of this Ray; idempotent."""
        if self.stopped:
            return
        self.stopped = True
        atexit.unregister(self.stop)
        with _signals_held():  # a second Ctrl-C must not cut the clean-up short
            started = _processes_of(self.root)
            ours = True
            try:
                shutdown = self.ray.shutdown
                ours = not self._someone_elses()
                if ours:
                    if "wait_for_processes" in inspect.signature(shutdown).parameters:
                        shutdown(wait_for_processes=True)
                    else:
                        shutdown()
            except Exception as exc:  # still end the processes below
                log.warning("ray.shutdown failed: %s", exc)
            finally:
                left = _end_processes({**started, **_processes_of(self.root)})
                if left:
                    log.warning("Ray processes still running after SIGKILL: %s", ", ".join(map(str, sorted(left))))
                auth = getattr(self, "_auth", None)
                if auth is not None and ours:  # the user's settings again, while our token file is there
                    try:
                        _reload_auth_settings(auth)
                    except Exception as exc:
                        log.warning("could not restore Ray's authentication settings: %s", exc)
                self._folder.cleanup()  # Ray's processes are gone: nothing writes there any more
        self._restore_signals()

    def _someone_elses(self) -> bool:
        """Whether the Ray this process is connected to now is not this one (the application
        shut ours down and started another): then ``ray.shutdown`` is not ours to call."""
        try:
            session = self.ray._private.worker._global_node.get_session_dir_path()
        except Exception:  # no Ray now, or a Ray without these internals: ours, if any
            return False
        return not os.path.abspath(session).startswith(os.path.abspath(self.root) + os.sep)

    def _take_signals(self, before: dict[int, Any]) -> None:
        """After ``ray.init`` (main thread only), given the SIGTERM and SIGHUP handlers found
        before it: where the default was, the handler exits with 128 + the signal's number, and
        :meth:`stop` runs at exit; an application's handler, or an ignored signal (``nohup``),
        stays, and is put back should Ray have set its own (``sys.exit(15)``) all the same."""
        for signum, old in before.items():
            now = signal.getsignal(signum)
            if old is signal.SIG_DFL and (now is old or _is_rays(now)):
                signal.signal(signum, self._on_signal)
                self._handlers[signum] = old
            elif now is not old and _is_rays(now):
                signal.signal(signum, old)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Unwind (out of a ray.wait too) and stop Ray at exit: stopping it from inside a
        # signal handler could pull the core worker from under a call still on the stack.
        sys.exit(128 + signum)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, handler)
        self._handlers.clear()


def _handlers_now() -> dict[int, Any]:
    """The handlers of SIGTERM and SIGHUP, where this is the main thread (else none)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    signums = (getattr(signal, name, None) for name in _STOP_SIGNALS[1:])
    return {signum: signal.getsignal(signum) for signum in signums if signum is not None}


def _is_rays(handler: Any) -> bool:
    return getattr(handler, "__module__", None) is not None and handler.__module__.split(".")[0] == "ray"


def _ray_temp_parent() -> str:
    """Where Ray would put its temporary folder: ``RAY_TMPDIR``, else /tmp (short paths: Ray's
    unix sockets live there), else the system's temporary folder."""
    parent = os.environ.get("RAY_TMPDIR")
    if parent:
        os.makedirs(parent, exist_ok=True)
        return parent
    return "/tmp" if sys.platform != "win32" and os.path.isdir("/tmp") else tempfile.gettempdir()


@contextlib.contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    """``values`` in ``os.environ`` meanwhile, those that are None removed (the processes
    started then inherit that)."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _loopback_node_address(ray: Any) -> Iterator[None]:
    """Keep Ray from replacing a 127.0.0.1 node address by the machine's outward one (see
    :class:`LocalRay`); a Ray without that switch is left as it is."""
    try:
        from ray._private import ray_constants
    except ImportError:
        yield
        return
    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        log.warning("ray %s: cannot keep its node address on 127.0.0.1", getattr(ray, "__version__", "?"))
        yield
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def _no_ray_sigterm_handler() -> Iterator[None]:
    """Keep ``ray.init`` from setting its SIGTERM handler (``sys.exit(15)`` from wherever the
    start is): SIGTERM is deferred like SIGINT meanwhile, and handled by :meth:`LocalRay._take_signals`
    after. A Ray without that hook is left as it is."""
    try:
        from ray._private import utils
    except ImportError:
        yield
        return
    saved = getattr(utils, "set_sigterm_handler", None)
    if saved is None:
        yield
        return
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = saved


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """SIGINT, SIGTERM and SIGHUP held back meanwhile (main thread only): the first to come is
    added to the list yielded, for the caller to raise again afterwards; a second goes to the
    handler found before at once (a start that hangs can still be stopped). With ray 2.60, a
    KeyboardInterrupt in the last part of ``ray.init`` made the process crash (SIGSEGV) at exit,
    after the clean-up."""
    pending: list[int] = []
    saved: dict[int, Any] = {}

    def hold(signum: int, frame: FrameType | None) -> None:
        if not pending:
            pending.append(signum)
            return
        signal.signal(signum, saved.get(signum) or signal.SIG_DFL)
        signal.raise_signal(signum)

    if threading.current_thread() is threading.main_thread():
        for name in _STOP_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
                saved[signum] = signal.signal(signum, hold)
    try:
        yield pending
    finally:
        for signum, handler in saved.items():  # over Ray's SIGTERM handler too (see _take_signals)
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP ignored meanwhile (main thread only: elsewhere Python cannot
    set handlers)."""
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in _STOP_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None:
                with contextlib.suppress(ValueError, OSError):
                    saved[signum] = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, handler in saved.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _process_table() -> dict[int, tuple[int, str]]:
    """Every live process: pid -> (parent pid, start time), from /proc (Linux), else from psutil
    where installed, else empty (then ray.shutdown alone has to do)."""
    table: dict[int, tuple[int, str]] = {}
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    raw = f.read().decode(errors="replace")
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            if fields[0] not in ("Z", "X"):  # a zombie is gone but for its exit status
                table[int(entry)] = (int(fields[1]), fields[19])
        return table
    try:
        import psutil
    except ImportError:
        return table
    for proc in psutil.process_iter(["ppid", "create_time", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE:
            table[proc.pid] = (proc.info["ppid"] or 0, str(proc.info["create_time"]))
    return table


def _carries(pid: int, token: str) -> bool:
    """Whether ``pid``'s command line or environment holds ``token``."""
    if os.path.isdir("/proc/self"):
        needle = token.encode()
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as f:
                    if needle in f.read():
                        return True
            except OSError:
                continue
        return False
    try:
        import psutil

        proc = psutil.Process(pid)
        return token in " ".join(proc.cmdline()) or proc.environ().get(RAY_MARKER) == token
    except Exception:  # psutil missing, the process gone or not ours to read
        return False


def _processes_of(root: str) -> dict[int, str]:
    """The processes of the Ray whose temporary folder is ``root``: those carrying ``root`` in
    their command line or environment, and every process below them; pid -> start time."""
    table = _process_table()
    me = os.getpid()
    found = {pid for pid in table if pid != me and _carries(pid, root)}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _start) in table.items():
            if pid != me and pid not in found and ppid in found:
                found.add(pid)
                grew = True
    return {pid: table[pid][1] for pid in found}


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _end_processes(started: dict[int, str], grace: float = 3.0) -> set[int]:
    """SIGTERM to those of ``started`` (pid -> start time) still running as the same process,
    SIGKILL after ``grace`` seconds; the pids still running after that."""

    def alive() -> set[int]:
        table = _process_table()
        return {pid for pid, start in started.items() if pid in table and table[pid][1] == start}

    for signum, wait in ((signal.SIGTERM, grace), (getattr(signal, "SIGKILL", signal.SIGTERM), 2.0)):
        left = alive()
        if not left:
            return set()
        names = ", ".join(f"{pid} {_name(pid)}" for pid in sorted(left))
        log.info("%s %d Ray process(es) left after ray.shutdown: %s", signal.Signals(signum).name, len(left), names)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive():
            time.sleep(0.05)
    return alive()


#: What Ray reads for token authentication (its ``AuthenticationTokenLoader`` and ``RayConfig``,
#: in every Ray process): the mode, then the token from the first of these that is set.
AUTH_MODE, AUTH_TOKEN, AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def _token_auth(ray: Any) -> Any | None:
    """``ray._raylet`` where this Ray has token authentication (2.60 has: ``ray.init`` of a new
    cluster turns it on unless ``RAY_AUTH_MODE`` says otherwise, and then reads the token, or
    creates one, in ``~/.ray/auth_token``; ``ray start`` turns it on where a token is found;
    an explicit address uses it only with ``RAY_AUTH_MODE=token``), else None (ray 2.9)."""
    raylet = getattr(ray, "_raylet", None)
    needed = ("AuthenticationTokenLoader", "AuthenticationMode", "Config", "get_authentication_mode")
    return raylet if raylet is not None and all(hasattr(raylet, name) for name in needed) else None


def _own_token(root: str) -> dict[str, str | None]:
    """A fresh random token in ``root``/auth_token (only we can read it), and the environment
    that makes Ray use it and nothing else."""
    path = os.path.join(root, "auth_token")
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "w") as stream:
        stream.write(secrets.token_hex(32))
    return {AUTH_MODE: "token", AUTH_TOKEN_PATH: path, AUTH_TOKEN: None}


def _reload_auth_settings(raylet: Any) -> None:
    """Make this process read ``RAY_AUTH_*`` again (Ray reads the mode when it is imported and
    keeps the token it found): the config first, then the token cache, as Ray's own tests do (a
    token reloaded while the config still says "token" must find its file)."""
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()


def _is_authentication_error(ray: Any, exc: BaseException) -> bool:
    kind = getattr(getattr(ray, "exceptions", None), "AuthenticationError", None)
    return isinstance(kind, type) and isinstance(exc, kind)


def _token_source() -> str:
    """Where Ray takes the token from, in its order."""
    if os.environ.get(AUTH_TOKEN):
        return AUTH_TOKEN
    if os.environ.get(AUTH_TOKEN_PATH):
        return f"'{os.environ[AUTH_TOKEN_PATH]}' ({AUTH_TOKEN_PATH})"
    return "~/.ray/auth_token"


def _token_advice(ray: Any, address: str) -> str:
    """One line: the cluster at ``address`` demands a token; what to set."""
    head = f"cannot connect to the Ray cluster at '{address}'"
    raylet = _token_auth(ray)
    token_mode = False
    has_token = False
    if raylet is not None:
        with contextlib.suppress(Exception):
            token_mode = raylet.get_authentication_mode() == raylet.AuthenticationMode.TOKEN
            has_token = raylet.AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    if token_mode and has_token:
        return (
            f"{head}: it rejects the authentication token from {_token_source()}; "
            f"set {AUTH_TOKEN} (or {AUTH_TOKEN_PATH}, a file) to that cluster's token"
        )
    if token_mode:
        return (
            f"{head}: {AUTH_MODE} is token but no authentication token was found; "
            f"set {AUTH_TOKEN} (or {AUTH_TOKEN_PATH}, a file) to the cluster's token"
        )
    return (
        f"{head}: it demands an authentication token; set {AUTH_MODE}=token, and {AUTH_TOKEN} "
        f"to the cluster's token unless ~/.ray/auth_token (or the file {AUTH_TOKEN_PATH} names) holds it"
    )


def _gcs_lets_us_in(ray: Any, address: str) -> None:
    """Ask the GCS at ``address`` for its cluster id first (milliseconds), where Ray has token
    authentication: a cluster that demands a token we lack, or rejects ours, says so at once
    with an AuthenticationError, which the caller turns into :func:`_token_advice` (``ray.init``
    would retry for 20 s, then fail with "Failed to connect to Ray cluster at ..."). With
    ``RAY_AUTH_MODE=token`` and no token anywhere, that advice without asking."""
    raylet = _token_auth(ray)
    if raylet is None or "://" in address or address in ("local", "auto") or not hasattr(raylet, "GcsClient"):
        return
    token_mode = raylet.get_authentication_mode() == raylet.AuthenticationMode.TOKEN
    if token_mode and not raylet.AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        raise OptionError(_token_advice(ray, address))
    # Ray's C++ client logs a warning line for the refusal: the one-line error says it all.
    with tempfile.TemporaryFile() as spool:
        try:
            with _fd_redirected(2, spool.fileno()):
                client = raylet.GcsClient(address=address)
        except Exception as exc:
            if not _is_authentication_error(ray, exc):
                _replay(spool)
            raise
        _replay(spool)
    del client


@contextlib.contextmanager
def _fd_redirected(fd: int, target: int) -> Iterator[None]:
    """File descriptor ``fd`` (2: what C++ code writes to stderr) to ``target`` meanwhile;
    left as it is where it cannot be duplicated (closed)."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    try:
        os.dup2(target, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _replay(spool: Any) -> None:
    """What :func:`_fd_redirected` kept aside, written to stderr after all."""
    spool.seek(0)
    data = spool.read()
    if data:
        with contextlib.suppress(OSError):
            os.write(2, data)


def _reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast on a ``host:port`` nobody answers (ray.init would retry for minutes)."""
    import socket

    target = address.split("://", 1)[-1]
    if target in ("local", "auto") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise OptionError(f"cannot connect to the Ray cluster at '{address}': {reason}") from None
