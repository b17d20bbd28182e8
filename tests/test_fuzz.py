"""tools/fuzz.py: its detectors fire (hand-written cases that crash, hang, write where they must
not ...), its cases are reproducible, and a 300-case run of the real command line finds nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tool_scripts import load_tool

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tools" / "fuzz.py"
PY = sys.executable


fuzz = load_tool("fuzz", "onnxprune_tools_fuzz")


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


#: name -> (custom case, the failure kinds it must show); an empty set: it must pass.
CASES = {
    "exit-70": (fuzz.custom_spec(0, _py("raise SystemExit(70)")), {"internal-error"}),
    "traceback": (fuzz.custom_spec(1, _py("raise ValueError('boom')")), {"traceback"}),
    "segfault": (
        fuzz.custom_spec(2, _py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")),
        {"crash-signal"},
    ),
    "undocumented-exit": (fuzz.custom_spec(3, _py("raise SystemExit(42)")), {"bad-exit-code"}),
    "hang": (fuzz.custom_spec(4, _py("import time; time.sleep(120)")), {"hang"}),
    "write-next-to-run": (
        fuzz.custom_spec(5, _py("open('../outside.txt', 'w').write('x')")),
        {"write-outside"},
    ),
    "write-in-folder-of-cases": (
        fuzz.custom_spec(6, _py("open('../../stray.txt', 'w').write('x')")),
        {"write-outside"},
    ),
    "bait-changed": (
        fuzz.custom_spec(7, _py("open('../secret.txt', 'a').write('x')")),
        {"write-outside"},
    ),
    "input-changed": (
        fuzz.custom_spec(8, _py("open('model.onnx', 'a').write('x')"), files={"model.onnx": "model"}),
        {"input-changed"},
    ),
    "input-removed": (
        fuzz.custom_spec(9, _py("import os; os.remove('calib.npz')"), files={"calib.npz": "data"}),
        {"input-changed"},
    ),
    "staging-left": (
        fuzz.custom_spec(10, _py("import os; os.mkdir('.out.onnx.k2j3h4x_.tmp')"), outputs=["out.onnx"]),
        {"leftover-staging"},
    ),
    "temp-left": (fuzz.custom_spec(11, _py("import tempfile; tempfile.mkstemp()")), {"leftover-temp"}),
    "undeclared": (
        fuzz.custom_spec(12, _py("open('stray.json', 'w').write('{}')"), outputs=["out.onnx"]),
        {"undeclared-output"},
    ),
    "home-written": (
        fuzz.custom_spec(13, _py("import os; open(os.path.expanduser('~/.onnxprunerc'), 'w').write('x')")),
        {"undeclared-output"},
    ),
    "stray-process": (
        fuzz.custom_spec(14, _py("import subprocess; subprocess.Popen(['sleep', '60'])")),
        {"stray-process"},
    ),
    # the real error path of onnxprune: a bug inside a command is exit 70, caught
    "onnxprune-bug": (
        fuzz.custom_spec(
            15,
            _py(
                "import sys; from onnxprune import cli; "
                "cli.load_model = lambda *a, **k: 1 / 0; "
                "sys.argv = ['onnxprune', 'inspect', 'model.onnx']; cli.main()"
            ),
            files={"model.onnx": "x"},
        ),
        {"internal-error"},
    ),
    # what must pass: a clean error, a declared output, the XDG cache, a real onnxprune command
    "clean-error": (
        fuzz.custom_spec(16, _py("import sys; sys.stderr.write('onnxprune: error: bad\\n'); sys.exit(3)")),
        set(),
    ),
    "declared-output": (
        fuzz.custom_spec(
            17,
            _py("open('out.onnx', 'w').write('x'); open('out.onnx.data', 'w')"),
            outputs=["out.onnx", "out.onnx.data"],
        ),
        set(),
    ),
    "xdg-cache": (
        fuzz.custom_spec(
            18,
            _py(
                "import os, json; c = os.environ['XDG_CACHE_HOME'] + '/onnxprune'; os.makedirs(c); "
                "open(c + '/x.json', 'w').write('{}'); "
                "print(json.dumps({k: os.environ[k] for k in ('HOME', 'TMPDIR', 'XDG_CACHE_HOME')}))"
            ),
        ),
        set(),
    ),
    "real-prune": (
        fuzz.custom_spec(
            19,
            args=["prune", str(fuzz.FIXTURES / "mlp_digits.onnx"), "out.onnx", "--sparsity", "0.5", "-q"],
            outputs=["out.onnx", "out.onnx.data"],
        ),
        set(),
    ),
    "real-inspect-error": (fuzz.custom_spec(20, args=["inspect", "missing.onnx"]), set()),
}


@pytest.fixture(scope="module")
def detector_results(tmp_path_factory):
    keep = tmp_path_factory.mktemp("kept")
    requests = [{"index": spec["index"], "spec": spec} for spec, _ in CASES.values()]
    results = fuzz.run_cases(requests, seed=0, jobs=2, timeout=8, keep=keep)
    by_index = {r["index"]: r for r in results}
    return {name: by_index[spec["index"]] for name, (spec, _) in CASES.items()}, keep


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_detector(detector_results, name):
    results, _ = detector_results
    result = results[name]
    expected = CASES[name][1]
    found = {f["kind"] for f in result["failures"]}
    assert found == expected, (name, result["failures"], result.get("stderr_tail"))


@pytest.mark.slow
def test_cases_are_isolated(detector_results):
    results, _ = detector_results
    env = json.loads(results["xdg-cache"]["stdout_tail"])
    for value in env.values():
        assert "/cases/c000018/" in value, env
    assert not env["HOME"].startswith(os.path.expanduser("~") + "/")
    assert results["real-prune"]["exit"] == 0
    assert results["real-inspect-error"]["exit"] == 3
    assert results["hang"]["timed_out"] is True


@pytest.mark.slow
def test_kept_failure_reproduces(detector_results):
    results, keep = detector_results
    kept = Path(results["exit-70"]["kept"])
    assert kept.parent == keep
    for name in ("repro.sh", "result.json", "stderr.txt", "after.txt"):
        assert (kept / name).is_file(), name
    assert subprocess.run([str(kept / "repro.sh")], capture_output=True, timeout=60).returncode == 70
    # a passing case is not kept
    assert "kept" not in results["clean-error"]


def _build(fuzz_fixtures, index, box):
    spec = fuzz.Builder(0, index, box, fuzz_fixtures, list(fuzz.COMMANDS)).build()
    files = {}
    for path in sorted((box / "run").rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[path.relative_to(box).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return spec, files


def test_cases_are_reproducible(tmp_path):
    """Case I of seed S is the same whenever and wherever it is built (only paths inside the case
    folder, written into a model as an absolute external-data location, may differ)."""
    fixtures = {stem: fuzz.Fixture(stem) for stem, _ in fuzz.FIXTURE_MODELS}
    for index in range(40):
        a, b = tmp_path / f"a{index}", tmp_path / f"b{index}"
        fuzz.make_box(a)
        fuzz.make_box(b)
        spec_a, files_a = _build(fixtures, index, a)
        spec_b, files_b = _build(fixtures, index, b)
        assert spec_a == spec_b, index
        assert files_a.keys() == files_b.keys(), index
        if not any(t.startswith("ext:loc:abs") for t in spec_a["tags"]):
            assert files_a == files_b, index


def test_signatures_group_like_failures():
    results = [
        {
            "index": i,
            "command": "prune",
            "args": [],
            "tags": [f"model:x{i}"],
            "exit": 70,
            "signal": None,
            "seconds": 0.1,
            "last_line": f"onnxprune: error: internal error (KeyError: 'w{i}'); rerun with --debug and report it",
            "failures": [{"kind": "internal-error", "detail": ""}],
        }
        for i in range(3)
    ]
    summary = fuzz.summarize(results, 1.0, seed=0, jobs=1, runner="fork")
    assert summary["failures"] == {"internal-error": 3}
    assert summary["outcomes"] == {"failed": 3}
    assert len(summary["signatures"]) == 1
    assert summary["signatures"][0]["cases"] == [0, 1, 2]
    assert "--seed 0 --only 0" in summary["signatures"][0]["repro"]


@pytest.mark.slow
def test_fuzz_300_cases_finds_nothing(tmp_path):
    """The acceptance run: 300 seeded cases of prune, inspect, eval and analyze with hostile
    models, data, plans, options and output paths; no crash, hang, stray write or leftover."""
    report = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [PY, str(FUZZ), "--cases", "300", "--seed", "0", "--quiet", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    summary = json.loads(report.read_text())
    assert summary["cases"] == 300
    assert summary["failures"] == {}, proc.stdout[-6000:]
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_subprocess_runner_detects_too(tmp_path):
    names = ["exit-70", "write-next-to-run", "real-inspect-error", "real-prune"]
    requests = [{"index": CASES[n][0]["index"], "spec": CASES[n][0]} for n in names]
    results = fuzz.run_cases(requests, seed=0, jobs=2, timeout=60, runner="subprocess")
    found = {r["index"]: {f["kind"] for f in r["failures"]} for r in results}
    assert [found[CASES[n][0]["index"]] for n in names] == [CASES[n][1] for n in names]
