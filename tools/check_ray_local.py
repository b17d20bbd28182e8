"""Run ``onnxprune analyze --ray local`` and show where the Ray processes it starts listen, and which are left after it ends.

    .venv/bin/python tools/check_ray_local.py [--signal INT|TERM] [--to group|process] [--when task|worker|start]
        [--python PY] [--model PATH] [--keep] [--prune]

With ``--prune`` the command is ``onnxprune prune MODEL OUT --method sparsegpt --bias-correction
--calibration ... --ray local`` instead (the calibrated pass's layer solves on that Ray; default
model ``fixtures/transformer_mnist1d.onnx``), checked the same way, and then run again without
``--ray`` (serially, in this machine's environment): one more check, that both wrote the same
bytes.

1. Starts ``python -m onnxprune analyze fixtures/... --ray local --no-cache`` in a new session
   (its own process group, as a shell starts a job), with HOME, TMPDIR and RAY_TMPDIR in a fresh
   temporary folder and a marker variable in its environment that every process Ray starts
   inherits. "Ours" are the processes in that session (started before its leader ended: a pid
   can be reused), below them, or with the marker or the folder in their environment or
   command line; a Ray the user runs elsewhere is not.
2. While it runs, samples every 0.2 s the TCP listening sockets (and bound UDP sockets) of our
   processes from /proc/net (no psutil, no ss needed) and, where ``ss`` exists, its
   ``ss -ltnup`` lines for them.
3. With ``--signal``, once a Ray worker runs a task (``--when worker``: 1 s after the first
   worker process appears; ``--when start``: once Ray's GCS server runs, while ``ray.init``
   still starts the rest), sends SIGINT (what Ctrl-C in a terminal sends, to the whole
   foreground process group: ``--to group``, the default) or SIGTERM.
4. Lists our processes still running the moment the command has ended, and 5 s later (then
   kills them, so that the check itself leaves nothing behind), and what is left in RAY_TMPDIR.

Prints PASS/FAIL per check: Ray ran, every listener on 127.0.0.1 (or ::1, or an IPv4-mapped
127.0.0.1), no process left, Ray's temporary folder gone (and the signal sent). Exits 0 when
all pass, 1 when one fails, 2 when ray is not installed or there is no /proc. Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MARKER = "ONNXPRUNE_CHECK_RAY_LOCAL"  # set in the command's environment; every process Ray starts inherits it
_TCP_LISTEN, _UDP_UNCONNECTED = "0A", "07"


@dataclass(frozen=True)
class Listener:
    proto: str  # tcp, tcp6, udp, udp6
    address: str
    port: int
    pid: int
    name: str = field(compare=False)  # a Ray worker renames itself as it runs tasks

    @property
    def loopback(self) -> bool:
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.proto:<4} {host}:{self.port:<6} pid {self.pid:<7} {self.name}"


@dataclass
class Outcome:
    returncode: int | None
    stdout: str
    stderr: str
    seen: dict[int, str] = field(default_factory=dict)  # every process of ours seen while it ran
    listeners: set[Listener] = field(default_factory=set)
    ss_lines: set[str] = field(default_factory=set)
    at_exit: dict[int, str] = field(default_factory=dict)  # ours still running the moment it ended
    leftovers: dict[int, str] = field(default_factory=dict)  # and ``linger`` seconds later
    temp_left: list[str] = field(default_factory=list)  # what is left under RAY_TMPDIR
    signalled: bool = False

    @property
    def ray_ran(self) -> bool:
        """Whether Ray's GCS server was seen among our processes (by its command line or its name)."""
        return any("gcs_server" in cmd for cmd in self.seen.values()) or any(
            x.name == "gcs_server" for x in self.listeners
        )

    def seen_text(self) -> str:
        """Every process of ours seen while it ran, one per line (what a failed check shows)."""
        return "\n".join(f"{pid:<7} {cmd}" for pid, cmd in sorted(self.seen.items()))

    @property
    def exposed(self) -> list[Listener]:
        return sorted((x for x in self.listeners if not x.loopback), key=str)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(name, parent pid, session id, start time in clock ticks after boot) of ``pid`` from
    /proc/PID/stat, or None when it is gone."""
    raw = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not raw:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has let go of everything; its parent has not reaped it yet
        return None
    return name, int(fields[1]), int(fields[3]), int(fields[19])


def ticks_now() -> int:
    """The time since boot in the clock ticks of /proc/PID/stat's start times."""
    return int(float(_read("/proc/uptime").split()[0]) * os.sysconf("SC_CLK_TCK"))


def describe(pid: int) -> str:
    """``pid``'s command line, shortened (Ray's command lines run to kilobytes), with its process
    name in brackets when the shortened line does not hold it (a process read between its fork
    and its exec still shows its parent's command line; its name is then the parent's too)."""
    cmd = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    name = (_stat(pid) or ("?",))[0]
    return cmd if name in cmd else f"{cmd} [{name}]".strip()


def ours(leader: int, root: str, ended: int | None = None) -> dict[int, str]:
    """The live processes the command ``leader`` started: in its session, below them, or carrying
    ``root`` (the marker's value and the temporary folder) in their environment or command line.
    Once the leader has ended (at ``ended``, from :func:`ticks_now`), its pid may be reused by a
    new session: a process of its session must then have started before that."""
    table: dict[int, tuple[str, int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and (stat := _stat(int(entry))) is not None:
            table[int(entry)] = stat
    token = root.encode()
    found: set[int] = set()
    for pid, (_name, _ppid, sid, start) in table.items():
        in_session = sid == leader and (ended is None or start <= ended)
        if in_session or token in _read(f"/proc/{pid}/cmdline") or token in _read(f"/proc/{pid}/environ"):
            found.add(pid)
    grew = True
    while grew:  # and their descendants
        grew = False
        for pid, (_name, ppid, _sid, _start) in table.items():
            if pid not in found and ppid in found:
                found.add(pid)
                grew = True
    return {pid: describe(pid) for pid in sorted(found)}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return inodes


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6: four 32-bit words, each in host (little-endian) order
    return str(ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))


def listeners(pids: dict[int, str]) -> set[Listener]:
    """TCP sockets in LISTEN state and unconnected bound UDP sockets held by ``pids``."""
    owner: dict[str, int] = {}
    for pid in pids:
        for inode in _socket_inodes(pid):
            owner.setdefault(inode, pid)
    found = set()
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        wanted = _TCP_LISTEN if proto.startswith("tcp") else _UDP_UNCONNECTED
        for line in _read(f"/proc/net/{proto}").decode().splitlines()[1:]:
            parts = line.split()
            if len(parts) < 10 or parts[3] != wanted or parts[9] not in owner:
                continue
            host, port = parts[1].split(":")
            pid = owner[parts[9]]
            name = (_stat(pid) or ("?",))[0]
            found.add(Listener(proto, _address(host), int(port, 16), pid, name))
    return found


def ss_lines(pids: dict[int, str]) -> set[str]:
    """``ss -ltnup``'s lines for ``pids`` (empty where ss is missing)."""
    if not shutil.which("ss") or not pids:
        return set()
    try:
        out = subprocess.run(["ss", "-Hltnup"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    tags = {f"pid={pid}," for pid in pids}
    return {" ".join(line.split()) for line in out.splitlines() if any(tag in line for tag in tags)}


def _running_tasks(pids: dict[int, str]) -> bool:
    """Whether a Ray worker runs a task (it then calls itself ``ray::<function>``)."""
    return any(cmd.startswith("ray::") and cmd != "ray::IDLE" and not cmd.endswith("Agent") for cmd in pids.values())


def _stage_reached(when: str, pids: dict[int, str]) -> bool:
    if when == "start":
        return any("gcs_server" in cmd for cmd in pids.values())
    if when == "worker":
        return any(cmd.startswith("ray::") or "default_worker.py" in cmd for cmd in pids.values())
    return _running_tasks(pids)


def command(python: str, model: Path | None = None) -> list[str]:
    """A small ``analyze --ray local`` that runs long enough to be interrupted mid-sweep."""
    model = model or FIXTURES / "cnn_digits.onnx"
    data = model.with_name(model.stem + ".test.npz")
    args = [python, "-m", "onnxprune", "analyze", str(model), "--ray", "local", "--no-cache", "--quiet"]
    if data.exists():
        args += ["--data", str(data), "--samples", "256"]
    return args


def prune_command(python: str, out: Path, model: Path | None = None, *, ray: bool = True) -> list[str]:
    """A calibrated ``prune`` (SparseGPT 50 %, bias correction, uniform allocation) whose layer
    solves run on ``--ray local`` (or here, serially, without ``ray``)."""
    model = model or FIXTURES / "transformer_mnist1d.onnx"
    calib = model.with_name(model.stem + ".calib.npz")
    args = [python, "-m", "onnxprune", "prune", str(model), str(out), "--sparsity", "0.5", "--method", "sparsegpt"]
    args += ["--bias-correction", "--allocation", "uniform", "--calibration", str(calib), "--samples", "64", "-q"]
    return args + (["--ray", "local"] if ray else [])


def run(
    argv: list[str],
    *,
    root: Path,
    signum: int | None = None,
    to_group: bool = True,
    when: str = "task",
    timeout: float = 300.0,
    linger: float = 5.0,
    kill_leftovers: bool = True,
) -> Outcome:
    """Run ``argv`` with HOME, TMPDIR and RAY_TMPDIR under ``root`` (keep it short: Ray's unix
    socket paths must fit in 107 bytes), sampling our processes' listeners; see the module doc.
    ``signum`` is sent when a worker runs a task (``when="task"``), 1 s after the first
    worker process appears (``"worker"``: about when ``ray.init`` returns) or as soon as Ray's
    GCS server runs (``"start"``: while ``ray.init`` still starts the rest)."""
    for sub in ("home", "tmp", "ray"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"), RAY_TMPDIR=str(root / "ray"), PYTHONUNBUFFERED="1")
    env[MARKER] = str(root)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    stdout, stderr = root / "stdout.txt", root / "stderr.txt"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
    outcome = Outcome(None, "", "")
    deadline = time.monotonic() + timeout
    ended: int | None = None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            now = ours(proc.pid, str(root))
            # a process that is exiting (a zombie) reads with an empty command line: keep what it ran;
            # one read between its fork and its exec shows its parent's: keep every line it showed
            for pid, cmd in now.items():
                before = outcome.seen.get(pid, "")
                if cmd and cmd not in before.split(" | "):
                    outcome.seen[pid] = f"{before} | {cmd}" if before else cmd
                elif pid not in outcome.seen:
                    outcome.seen[pid] = cmd
            outcome.listeners |= listeners(now)
            outcome.ss_lines |= ss_lines(now)
            if signum is not None and not outcome.signalled and _stage_reached(when, now):
                if when == "worker":
                    time.sleep(1.0)
                if proc.poll() is None:
                    (os.killpg if to_group else os.kill)(proc.pid, signum)
                    outcome.signalled = True
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        outcome.returncode = proc.wait()
        ended = ticks_now()
        outcome.at_exit = ours(proc.pid, str(root), ended)
        end = time.monotonic() + linger
        while (left := ours(proc.pid, str(root), ended)) and time.monotonic() < end:
            time.sleep(0.25)
        outcome.leftovers = left
        outcome.temp_left = sorted(p.name for p in (root / "ray").iterdir())
    finally:
        if kill_leftovers:
            if ended is None and proc.poll() is not None:
                ended = ticks_now()
            for pid in ours(proc.pid, str(root), ended):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        outcome.stdout = stdout.read_text(errors="replace")
        outcome.stderr = stderr.read_text(errors="replace")
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signal", choices=("INT", "TERM"), help="send this signal once a Ray worker runs a task")
    parser.add_argument(
        "--to", choices=("group", "process"), default="group", help="to the process group or the process"
    )
    parser.add_argument(
        "--when",
        choices=("task", "worker", "start"),
        default="task",
        help="signal mid-sweep, 1 s after the first worker, or mid-start",
    )
    parser.add_argument("--python", default=sys.executable, help="the Python that runs onnxprune (another venv)")
    parser.add_argument("--model", type=Path, help="the model to analyse (default: fixtures/cnn_digits.onnx)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (Ray's logs)")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="check prune --ray local instead, and that it writes the serial run's bytes",
    )
    args = parser.parse_args()
    if not Path("/proc/self/stat").exists():
        print("FAIL  no /proc: this check is Linux only")
        return 2
    probe = subprocess.run([args.python, "-c", "import ray; print(ray.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"FAIL  {args.python} has no ray: pip install 'onnxprune[ray]'")
        return 2
    print(f"ray {probe.stdout.strip()} ({args.python})")
    root = Path(tempfile.mkdtemp(prefix="opr", dir="/tmp"))
    try:
        argv = (
            prune_command(args.python, root / "ray.onnx", args.model)
            if args.prune
            else command(args.python, args.model)
        )
        signum = getattr(signal, f"SIG{args.signal}") if args.signal else None
        outcome = run(argv, root=root, signum=signum, to_group=args.to == "group", when=args.when)
        print(f"$ {' '.join(argv)}")
        print(f"exit code {outcome.returncode}" + (f" after SIG{args.signal} to the {args.to}" if signum else ""))
        if signum and not outcome.signalled:
            print(f"note: it ended before a Ray worker ran a task; SIG{args.signal} was not sent")
        if outcome.stderr.strip():
            print("stderr (last lines):\n  " + "\n  ".join(outcome.stderr.strip().splitlines()[-5:]))
        print(f"\nprocesses seen while it ran ({len(outcome.seen)}):")
        print("\n".join(f"  {line}" for line in outcome.seen_text().splitlines()))
        print(f"\nlisteners ({len(outcome.listeners)}):")
        for listener in sorted(outcome.listeners, key=str):
            print(f"  {listener}{'' if listener.loopback else '   <- not loopback'}")
        if outcome.ss_lines:
            print("\nss -ltnup:")
            for line in sorted(outcome.ss_lines):
                print(f"  {line}")
        print(f"\nrunning the moment it ended ({len(outcome.at_exit)}):")
        for pid, cmd in outcome.at_exit.items():
            print(f"  {pid:<7} {cmd}")
        print(f"left 5 s later ({len(outcome.leftovers)}):")
        for pid, cmd in outcome.leftovers.items():
            print(f"  {pid:<7} {cmd}")
        print(f"left in RAY_TMPDIR: {', '.join(outcome.temp_left) or 'nothing'}")
        ray_ran = outcome.ray_ran
        checks = {
            "Ray ran": ray_ran,
            "listeners on loopback only": ray_ran and not outcome.exposed,
            "no process left at exit": not outcome.at_exit,
            "no process left 5 s later": not outcome.leftovers,
            "Ray's temporary folder removed": not outcome.temp_left,
        }
        if signum:
            checks[f"SIG{args.signal} sent mid-{args.when}"] = outcome.signalled
        if args.prune and not signum:
            serial = subprocess.run(
                prune_command(args.python, root / "serial.onnx", args.model, ray=False),
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            same = (
                outcome.returncode == 0
                and serial.returncode == 0
                and (root / "ray.onnx").read_bytes() == (root / "serial.onnx").read_bytes()
            )
            print(f"\nserial run: exit code {serial.returncode}; outputs {'identical' if same else 'DIFFERENT'}")
            checks["prune --ray local wrote the serial run's bytes"] = same
        print()
        for name, ok in checks.items():
            print(f"{'PASS' if ok else 'FAIL'}  {name}")
        return 0 if all(checks.values()) else 1
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
