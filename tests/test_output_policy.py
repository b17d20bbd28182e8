"""The output policy (``onnxprune/graph/outputs.py``): nothing but the declared outputs is written.

Every refused run keeps the same contract: exit 6 (7 for evaluation data), one line on stderr
naming the option (or "the output") and the path, no traceback, every input byte-for-byte
unchanged (sha256), and no file in the folder other than those that were there before.
Devices are made in a temporary folder (``os.mknod``, root only), never /dev/null itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_contract import PREFIX, cli, error_line
from click.testing import CliRunner

from onnxprune.console import Interrupted, interrupts_raised
from onnxprune.errors import DataError, OutputError
from onnxprune.graph import outputs
from onnxprune.graph.model_io import StagedOutput, load_model
from onnxprune.graph.outputs import (
    STAGING_NAME,
    STALE_AFTER,
    Write,
    durable,
    publish,
    staging_file,
    sweep_stale,
    write_file,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLP = FIXTURES / "mlp_digits.onnx"
TEST_DATA, LABELS = FIXTURES / "mlp_digits.test.npz", FIXTURES / "mlp_digits.test_labels.npy"
REPO = Path(__file__).resolve().parent.parent
PRUNE = ("--sparsity", "0.5", "-q")
EVAL = ("--no-latency", "-q")


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding m.onnx (the MLP fixture), the current directory of the test."""
    (tmp_path / "m.onnx").write_bytes(MLP.read_bytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> dict[str, tuple[int, str | None]]:
    """Every entry of ``folder`` (hidden ones too): its file type, and a regular file's sha256."""
    entries = {}
    for entry in sorted(folder.iterdir()):
        mode = entry.lstat().st_mode
        entries[entry.name] = (stat.S_IFMT(mode), sha(entry) if stat.S_ISREG(mode) else None)
    return entries


def refused(folder: Path, code: int, *args: str | Path, fragments: tuple[str, ...] = ()) -> str:
    """Run the CLI; assert the error contract with ``fragments`` and exit ``code``, and ``folder``
    exactly as it was (inputs unchanged, nothing added; devices and FIFOs by type, never read).
    Returns the message."""
    before = listing(folder)
    message = error_line(cli(*args), code, *fragments)
    assert listing(folder) == before, "the run wrote, removed or changed files"
    return message


def make_device(path: Path) -> Path:
    """A character device like /dev/null (1, 3), made in a test folder."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError, OSError) as exc:
        pytest.skip(f"cannot make a device node here ({exc})")
    return path


def make_special(folder: Path, kind: str) -> Path:
    path = folder / f"special.{kind}"
    if kind == "device":
        return make_device(path)
    os.mkfifo(path)
    return path


def save_external(source: Path, path: Path) -> Path:
    """``source`` saved at ``path`` with its tensors in ``<path name>.data``; returns the data file."""
    model = onnx.load(str(source))
    data = path.with_name(f"{path.name}.data")
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=0
    )
    return data


def runs(path: Path) -> None:
    """The model at ``path`` passes the checker and runs in onnxruntime."""
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.load(TEST_DATA)[session.get_inputs()[0].name][:2]
    assert np.isfinite(session.run(None, {session.get_inputs()[0].name: x})[0]).all()


# --------------------------------------------------------------------------- devices and pipes


@pytest.mark.parametrize("kind", ["device", "fifo"])
@pytest.mark.parametrize(
    ("option", "named"),
    [("OUT", "the output"), ("--json", "--json"), ("--report", "--report"), ("--eval-json", "--eval-json")],
)
def test_prune_never_replaces_a_device_or_a_pipe(work: Path, kind: str, option: str, named: str) -> None:
    special = make_special(work, kind)
    before = os.lstat(special)
    args = ["prune", "m.onnx", special if option == "OUT" else "o.onnx", *PRUNE, *EVAL]
    if option != "OUT":
        args += [option, special]
    refused(work, 6, *args, fragments=(named, f"'{special}'", "not a regular file"))
    after = os.lstat(special)
    assert (after.st_ino, after.st_mode, after.st_rdev) == (before.st_ino, before.st_mode, before.st_rdev)


@pytest.mark.parametrize("kind", ["device", "fifo"])
@pytest.mark.parametrize(
    "command",
    [
        ("inspect", "m.onnx", "--json"),
        ("eval", "m.onnx", "--no-latency", "--json"),
        ("eval", "m.onnx", "--no-latency", "--report"),
        ("analyze", "m.onnx", "--no-cache", "--json"),
        ("analyze", "m.onnx", "--no-cache", "--target-sparsity", "0.5", "--plan-out"),
    ],
)
def test_every_command_refuses_a_device_or_a_pipe(work: Path, kind: str, command: tuple[str, ...]) -> None:
    special = make_special(work, kind)
    refused(work, 6, *command, special, fragments=(command[-1], "not a regular file"))
    assert stat.S_ISCHR(special.lstat().st_mode) if kind == "device" else stat.S_ISFIFO(special.lstat().st_mode)


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        ("", "the output '.' is a folder"),
        (".", "the output '.' is a folder"),
        ("o" * 300 + ".onnx", "has a file name of 305 bytes"),
        ("o" * 250 + ".onnx", "'" + "o" * 250 + ".onnx.data' has a file name of 260 bytes"),
    ],
    ids=["empty", "dot", "long", "long-data"],
)
def test_an_output_name_that_cannot_be_a_file_is_refused(work: Path, out: str, fragment: str) -> None:
    refused(work, 6, "prune", "m.onnx", out, *PRUNE, "--external-data", fragments=(fragment,))


def test_a_link_to_a_device_is_refused_too(work: Path) -> None:
    device = make_device(work / "null")
    (work / "out.onnx").symlink_to(device)
    refused(work, 6, "prune", "m.onnx", "out.onnx", *PRUNE, fragments=("the output 'out.onnx'", "character device"))


# --------------------------------------------------------------------------- side outputs over models


@pytest.mark.parametrize("option", ["--json", "--report", "--eval-json"])
def test_a_side_output_never_overwrites_the_input_model(work: Path, option: str) -> None:
    digest = sha(work / "m.onnx")
    refused(
        work,
        6,
        "prune",
        "m.onnx",
        "o.onnx",
        *PRUNE,
        *EVAL,
        option,
        "m.onnx",
        fragments=(f"{option} 'm.onnx' is the input model", "choose another path"),
    )
    assert sha(work / "m.onnx") == digest


@pytest.mark.parametrize("spelling", ["symlink", "hardlink", "dotdot"])
def test_the_input_model_is_recognised_through_links(work: Path, spelling: str) -> None:
    (work / "sub").mkdir()
    if spelling == "symlink":
        (work / "alias.onnx").symlink_to(work / "m.onnx")
        path = "alias.onnx"
    elif spelling == "hardlink":
        os.link(work / "m.onnx", work / "alias.onnx")
        path = "alias.onnx"
    else:
        path = "sub/../m.onnx"
    refused(work, 6, "prune", "m.onnx", "o.onnx", *PRUNE, "--json", path, fragments=("--json", "is the input model"))


@pytest.mark.parametrize("option", ["--json", "--report", "--eval-json"])
def test_a_side_output_never_replaces_the_pruned_model(work: Path, option: str) -> None:
    refused(
        work,
        6,
        "prune",
        "m.onnx",
        "o.onnx",
        *PRUNE,
        *EVAL,
        option,
        "o.onnx",
        fragments=("the output 'o.onnx'", f"{option} 'o.onnx'", "are the same file", "give each output its own path"),
    )
    assert not (work / "o.onnx").exists()


def test_report_and_eval_json_never_overwrite_each_other(work: Path) -> None:
    refused(
        work,
        6,
        "prune",
        "m.onnx",
        "o.onnx",
        *PRUNE,
        *EVAL,
        "--report",
        "x",
        "--eval-json",
        work / "x",
        fragments=(f"--report 'x' and --eval-json '{work / 'x'}' are the same file",),
    )


def test_inspect_json_never_overwrites_the_model(work: Path) -> None:
    refused(work, 6, "inspect", "m.onnx", "--json", "m.onnx", fragments=("--json 'm.onnx' is the model",))


@pytest.mark.parametrize("target", ["m.onnx", "p.onnx"])
def test_eval_report_never_overwrites_a_model_it_compares(work: Path, target: str) -> None:
    (work / "p.onnx").write_bytes(MLP.read_bytes())
    role = "the base model" if target == "m.onnx" else "a candidate model"
    refused(
        work, 6, "eval", "m.onnx", "p.onnx", *EVAL, "--report", target, fragments=(f"--report '{target}' is {role}",)
    )


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [("--labels", LABELS, "the --labels file"), ("--data", TEST_DATA, "the --data file")],
)
def test_a_side_output_never_overwrites_the_evaluation_data(work: Path, option: str, value: Path, named: str) -> None:
    local = work / value.name
    local.write_bytes(value.read_bytes())
    args = ["--data", TEST_DATA] if option == "--labels" else []
    refused(
        work,
        6,
        "prune",
        "m.onnx",
        "o.onnx",
        *PRUNE,
        *EVAL,
        *args,
        option,
        local.name,
        "--report",
        local.name,
        fragments=(f"--report '{local.name}' is {named}",),
    )


def test_a_plan_out_never_overwrites_the_analysed_data(work: Path) -> None:
    (work / "calib.npz").write_bytes((FIXTURES / "mlp_digits.calib.npz").read_bytes())
    refused(
        work,
        6,
        "analyze",
        "m.onnx",
        "--data",
        "calib.npz",
        "--no-cache",
        "--target-sparsity",
        "0.5",
        "--plan-out",
        "calib.npz",
        fragments=("--plan-out 'calib.npz' is the --data file",),
    )


def test_a_side_output_never_overwrites_the_plan_or_the_calibration_data(work: Path) -> None:
    (work / "plan.json").write_text('{"fc1.weight": 0.5}')
    (work / "calib.npz").write_bytes((FIXTURES / "mlp_digits.calib.npz").read_bytes())
    refused(
        work,
        6,
        "prune",
        "m.onnx",
        "o.onnx",
        "--plan",
        "plan.json",
        "-q",
        "--json",
        "plan.json",
        fragments=("--json 'plan.json' is the --plan file",),
    )
    refused(
        work,
        6,
        "prune",
        "m.onnx",
        "o.onnx",
        *PRUNE,
        "--method",
        "wanda",
        "--calibration",
        "calib.npz",
        "--json",
        "calib.npz",
        fragments=("--json 'calib.npz' is the --calibration data",),
    )


def test_the_analysis_cache_folder_is_checked_before_any_work(work: Path) -> None:
    refused(
        work, 6, "analyze", "m.onnx", "--cache-dir", "m.onnx", fragments=("--cache-dir", "'m.onnx'", "not a folder")
    )


# --------------------------------------------------------------------------- external data


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_the_external_data_of_the_output_is_never_a_device_or_a_pipe(work: Path, kind: str) -> None:
    special = make_special(work, kind)
    special.rename(work / "p.onnx.data")
    refused(
        work,
        6,
        "prune",
        "m.onnx",
        "p.onnx",
        *PRUNE,
        "--external-data",
        fragments=("the external data of the output 'p.onnx.data'", "not a regular file"),
    )


def test_the_external_data_of_the_input_is_never_an_output(work: Path) -> None:
    data = save_external(work / "m.onnx", work / "e.onnx")
    digests = (sha(work / "e.onnx"), sha(data))
    for extra in ((), ("--force",)):
        refused(
            work,
            6,
            "prune",
            "e.onnx",
            "e.onnx.data",
            *PRUNE,
            *extra,
            fragments=("the output 'e.onnx.data' is the external data of the input model 'e.onnx'",),
        )
    message = refused(work, 6, "prune", "e.onnx", "o.onnx", *PRUNE, "--json", "e.onnx.data", fragments=("--json",))
    assert "external data of the input model" in message and "--force" not in message
    assert (sha(work / "e.onnx"), sha(data)) == digests


def test_force_replaces_a_model_and_its_external_data_in_place(work: Path) -> None:
    data = save_external(work / "m.onnx", work / "e.onnx")
    result = cli("prune", "e.onnx", "e.onnx", *PRUNE, "--force", "--external-data")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["e.onnx", "e.onnx.data", "m.onnx"]
    assert data.stat().st_mode & 0o777 == (work / "e.onnx").stat().st_mode & 0o777
    runs(work / "e.onnx")


def test_external_data_twice_in_one_folder_and_from_another_folder(work: Path, monkeypatch) -> None:
    """onnx checks its ``location`` against the current folder: the second run used to exit 6
    ("cannot write '.../p.onnx': None")."""
    for _ in range(2):
        result = cli("prune", "m.onnx", "p.onnx", *PRUNE, "--external-data")
        assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["m.onnx", "p.onnx", "p.onnx.data"]
    runs(work / "p.onnx")
    other = work.parent / f"{work.name}-elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    (other / "p.onnx.data").write_bytes(b"not ours")  # a file of that name in the current folder
    for _ in range(2):
        result = cli("prune", work / "m.onnx", work / "p.onnx", *PRUNE, "--external-data")
        assert result.exit_code == 0, result.stderr
    assert (other / "p.onnx.data").read_bytes() == b"not ours"
    locations = {
        entry.value
        for tensor in onnx.load(str(work / "p.onnx"), load_external_data=False).graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {"p.onnx.data"}
    assert sorted(p.name for p in work.iterdir()) == ["m.onnx", "p.onnx", "p.onnx.data"]
    runs(work / "p.onnx")


def test_a_second_staged_write_starts_the_external_data_over(tmp_path: Path) -> None:
    model = load_model(MLP)
    with StagedOutput(tmp_path / "o.onnx") as staged:
        staged.write(onnx.load(str(MLP)), external_data=True)
        first = (staged.model_path.parent / "o.onnx.data").stat().st_size
        staged.write(model, external_data=True)
        assert (staged.model_path.parent / "o.onnx.data").stat().st_size == first
        saved = staged.commit()
    assert saved.data_path == tmp_path / "o.onnx.data"
    runs(saved.path)


def _synced_calls(monkeypatch) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(outputs, "SYNC_EVERY", 1000)
    monkeypatch.setattr(outputs, "SYNC_POLL", 0.005)
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fdatasync", lambda number: calls.append(("fdatasync", number)), raising=False)
    monkeypatch.setattr(os, "fsync", lambda number: (calls.append(("fsync", number)), real_fsync(number))[1])
    return calls


def test_durable_writes_back_while_writing_then_syncs_each_file(tmp_path: Path, monkeypatch) -> None:
    calls = _synced_calls(monkeypatch)
    with open(tmp_path / "a", "wb") as first, open(tmp_path / "b", "wb") as second:
        with durable(first, second):
            for written in range(1, 4):
                first.write(b"x" * 4096)
                first.flush()  # what a large write does: straight to the file
                # each write's own write-back before the next (so none is left for after `during`)
                deadline = time.monotonic() + 5
                while (
                    sum(1 for call in calls if call == ("fdatasync", first.fileno())) < written
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.005)
            second.write(b"y" * 10)  # below SYNC_EVERY: left to the final fsync
            during = list(calls)
        numbers = (first.fileno(), second.fileno())
    assert ("fdatasync", numbers[0]) in during, "the first file's write-back started while it was written"
    assert ("fdatasync", numbers[1]) not in during
    assert calls[len(during) :] == [("fsync", numbers[0]), ("fsync", numbers[1])]
    assert (tmp_path / "a").read_bytes() == b"x" * 3 * 4096 and (tmp_path / "b").read_bytes() == b"y" * 10


def test_durable_does_not_sync_when_the_block_fails(tmp_path: Path, monkeypatch) -> None:
    calls = _synced_calls(monkeypatch)
    with open(tmp_path / "a", "wb") as handle, pytest.raises(OSError, match="disk full"), durable(handle):
        handle.write(b"x")
        raise OSError("disk full")
    assert not [call for call in calls if call[0] == "fsync"]
    assert not [thread for thread in threading.enumerate() if thread.name == "onnxprune-sync"], "the thread ended"


# --------------------------------------------------------------------------- the rename checks again


def test_a_destination_that_became_a_pipe_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    with StagedOutput(out) as staged:
        staged.write(onnx.load(str(MLP)))
        os.mkfifo(out)  # between the check and the rename
        with pytest.raises(OutputError, match=r"the output '.*o\.onnx' became a named pipe \(FIFO\)"):
            staged.commit()
    assert stat.S_ISFIFO(out.lstat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["o.onnx"], "the staging is removed"


def test_publish_checks_every_destination_before_renaming_any(tmp_path: Path) -> None:
    first, second = tmp_path / "a.tmp-staged", tmp_path / "b.tmp-staged"
    first.write_text("a")
    second.write_text("b")
    device = make_device(tmp_path / "b.json")
    with pytest.raises(OutputError, match="became a character device"):
        publish([(first, Write("the JSON", tmp_path / "a.json")), (second, Write("the report", device))])
    assert not (tmp_path / "a.json").exists() and stat.S_ISCHR(device.lstat().st_mode)


def test_write_file_refuses_a_device_and_keeps_it(tmp_path: Path) -> None:
    device = make_device(tmp_path / "x.json")
    with pytest.raises(OutputError, match=r"the JSON '.*x\.json' is a character device, not a regular file"):
        write_file("{}", device, what="JSON")
    assert stat.S_ISCHR(device.lstat().st_mode) and [p.name for p in tmp_path.iterdir()] == ["x.json"]


# --------------------------------------------------------------------------- staging left behind


def _our_host() -> str:
    """The host part of this machine's staging names (made once, read back)."""
    folder = Path(tempfile.mkdtemp())
    try:
        handle, path = staging_file(folder, "probe")
        os.close(handle)
        match = STAGING_NAME.match(path.name)
        assert match is not None and int(match["pid"]) == os.getpid(), path.name
        return match["host"]
    finally:
        shutil.rmtree(folder)


def _staging(folder: Path, name: str, pid: int, *, age: float = 0.0, host: str | None = None) -> Path:
    host = host or _our_host()
    path = folder / f".{name}.onnxprune-{pid}-{host}-abcd1234.tmp"
    path.mkdir()
    (path / name).write_bytes(b"partial")
    if age:
        past = time.time() - age
        os.utime(path, (past, past))
    return path


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_staging_of_ours_is_swept_and_nothing_else(tmp_path: Path) -> None:
    dead = _staging(tmp_path, "a.onnx", _dead_pid())
    live_young = _staging(tmp_path, "b.onnx", os.getppid())
    live_old = _staging(tmp_path, "c.onnx", os.getppid(), age=STALE_AFTER + 60)
    elsewhere_young = _staging(tmp_path, "d.onnx", 1, host="000000" if _our_host() != "000000" else "111111")
    own = _staging(tmp_path, "e.onnx", os.getpid(), age=STALE_AFTER + 60)
    unrelated = tmp_path / ".f.onnx.abcd1234.tmp"  # not our pattern: never touched
    unrelated.mkdir()
    plain = tmp_path / "keep.onnx"
    plain.write_text("x")
    removed = sweep_stale(tmp_path)
    assert sorted(removed) == sorted([dead, live_old])
    assert all(p.exists() for p in (live_young, elsewhere_young, own, unrelated, plain))


def test_staging_of_another_user_is_never_swept(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    theirs = _staging(tmp_path, "a.onnx", _dead_pid())
    os.chown(theirs, 12345, 12345)
    assert sweep_stale(tmp_path) == [] and theirs.exists()


_SIGNAL_DURING_WRITE = """
import os, signal, sys
import onnxprune.graph.model_io as model_io

real, stop = model_io.write_model, getattr(signal, sys.argv[1])

def write_model(model, handle, *args, **kwargs):
    handle.write(b"partial")
    handle.flush()
    os.kill(os.getpid(), stop)
    return real(model, handle, *args, **kwargs)

model_io.write_model = write_model
from onnxprune.cli import main

sys.argv = ["onnxprune", *sys.argv[2:]]
main()
"""


def _prune_with_signal(
    work: Path, name: str, script: str = _SIGNAL_DURING_WRITE, model: str = "m.onnx"
) -> subprocess.CompletedProcess[str]:
    """``onnxprune prune MODEL out/o.onnx`` in a subprocess that gets signal ``name`` while it
    writes the staged model (deterministically: from inside the writer, or where ``script`` sends it)."""
    return subprocess.run(
        [sys.executable, "-c", script, name, "prune", model, "out/o.onnx", *PRUNE],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        # as in a terminal: a suite started with a signal ignored (nohup, a background job) passes it on
        preexec_fn=_default_signals,
    )


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_a_signal_during_the_write_removes_the_staging(work: Path, name: str, code: int) -> None:
    (work / "out").mkdir()
    digest = sha(work / "m.onnx")
    done = _prune_with_signal(work, name)
    assert done.returncode == code, done.stderr
    how = "interrupted" if name == "SIGINT" else f"stopped by {name}"
    assert done.stderr.splitlines() == [f"{PREFIX}{how}; nothing was written"], done.stderr
    assert list((work / "out").iterdir()) == [], "staging left behind"
    assert sha(work / "m.onnx") == digest


_SIGNAL_WHILE_COMPUTING = """
import os, signal, sys
import onnxprune.passes.unstructured as unstructured

real, stop, calls = unstructured._replacement, getattr(signal, sys.argv[1]), []

def replacement(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # on the streamed writer's second thread, while the first tensor is written
        os.kill(os.getpid(), stop)
    return real(*args, **kwargs)

unstructured._replacement = replacement
from onnxprune.cli import main

sys.argv = ["onnxprune", *sys.argv[2:]]
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_while_a_streamed_write_computes_removes_the_staging(work: Path, name: str, code: int) -> None:
    onnx.save_model(
        onnx.load(str(work / "m.onnx")),
        str(work / "x.onnx"),
        save_as_external_data=True,
        location="x.data",
        size_threshold=0,
    )
    (work / "out").mkdir()
    digests = (sha(work / "x.onnx"), sha(work / "x.data"))
    done = _prune_with_signal(work, name, _SIGNAL_WHILE_COMPUTING, "x.onnx")
    assert done.returncode == code, done.stderr
    how = "interrupted" if name == "SIGINT" else f"stopped by {name}"
    assert done.stderr.splitlines() == [f"{PREFIX}{how}; nothing was written"], done.stderr
    assert list((work / "out").iterdir()) == [], "staging left behind"
    assert (sha(work / "x.onnx"), sha(work / "x.data")) == digests


@pytest.mark.slow
def test_staging_of_a_killed_run_is_removed_by_the_next_run(work: Path) -> None:
    (work / "out").mkdir()
    done = _prune_with_signal(work, "SIGKILL")
    assert done.returncode == -signal.SIGKILL
    left = list((work / "out").iterdir())
    assert len(left) == 1 and left[0].name.startswith(".o.onnx.onnxprune-") and left[0].is_dir()
    result = cli("prune", "m.onnx", "out/o.onnx", *PRUNE)
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in (work / "out").iterdir()] == ["o.onnx"]
    runs(work / "out" / "o.onnx")


def test_stop_signals_raise_while_a_command_runs_and_are_restored() -> None:
    stops = (signal.SIGTERM, signal.SIGHUP)
    saved = {signum: signal.signal(signum, signal.SIG_DFL) for signum in stops}
    try:
        with interrupts_raised():
            for signum in stops:
                assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN)
            with pytest.raises(Interrupted) as info:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs at the next instruction
            assert info.value.exit_code == 143 and info.value.message == "stopped by SIGTERM; nothing was written"
        assert all(signal.getsignal(signum) is signal.SIG_DFL for signum in stops)
    finally:
        for signum, old in saved.items():
            signal.signal(signum, old)


def test_the_signal_is_known_when_a_library_turns_it_into_a_plain_keyboard_interrupt() -> None:
    """Ray's ``get`` (and others) may raise a new KeyboardInterrupt on the way out."""
    import click

    from onnxprune.console import handle_errors

    @click.command()
    @handle_errors
    def command() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None

    saved = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        result = CliRunner().invoke(command, [])
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert result.exit_code == 143 and result.stderr == f"{PREFIX}stopped by SIGTERM; nothing was written\n"


def test_an_ignored_signal_stays_ignored() -> None:
    """``nohup`` starts a command with SIGHUP ignored: it must stay so."""
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interrupts_raised():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


# --------------------------------------------------------------------------- evaluation before pruning


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--data", "bad.npz"), "bad.npz"),
        (("--data", "missing.npz"), "missing.npz"),
        (("--data", str(TEST_DATA), "--labels", "missing.npy"), "missing.npy"),
        (("--data", str(TEST_DATA), "--labels", "short.npy"), "labels"),
    ],
)
def test_evaluation_data_is_checked_before_anything_is_written(work: Path, extra: tuple[str, ...], fragment: str):
    np.savez(work / "bad.npz", nope=np.zeros((4, 3), np.float32))
    np.save(work / "short.npy", np.zeros(3, np.int64))
    refused(
        work, DataError.exit_code, "prune", "m.onnx", "o.onnx", *PRUNE, *EVAL, "--eval", *extra, fragments=(fragment,)
    )
    assert not (work / "o.onnx").exists()


def test_an_unknown_evaluation_output_is_refused_before_pruning(work: Path) -> None:
    refused(work, 2, "prune", "m.onnx", "o.onnx", *PRUNE, *EVAL, "--eval", "--output", "nope", fragments=("--output",))


def test_an_evaluation_failing_after_the_write_says_the_output_is_valid(work: Path, monkeypatch) -> None:
    import onnxprune.evaluation as evaluation

    def evaluate(*args: object, **kwargs: object) -> None:
        raise DataError("the data ran out")

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    result = cli("prune", "m.onnx", "o.onnx", *PRUNE, *EVAL, "--eval")
    assert result.exit_code == DataError.exit_code
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "'o.onnx' was written and is valid, but its evaluation failed: the data ran out" in lines[0]
    runs(work / "o.onnx")
    assert sorted(p.name for p in work.iterdir()) == ["m.onnx", "o.onnx"]
