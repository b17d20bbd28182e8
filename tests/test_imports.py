"""What a command imports: the CLI starts without onnxruntime, the evaluator, the data readers,
the report pages or the quantizer, and a magnitude prune loads only what it runs
(``import onnxprune.cli`` took 0.24 s where it took 0.30 s, beside ``import onnx``'s 0.15 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from onnxprune.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

#: Loaded only by the commands or options that need them.
HEAVY = (
    "onnxruntime",
    "onnxprune.evaluation",
    "onnxprune.data",
    "onnxprune.report",
    "onnxprune.quantize",
    "onnxprune.capture",
    "onnxprune.cli_analyze",
    "onnxprune.cli_view",
)

_LOADED = """
import json, sys
{before}
print(json.dumps(sorted(sys.modules)))
"""

_AFTER_CLI = """
from onnxprune.cli import main
try:
    main({argv!r})
except SystemExit as exc:
    assert not exc.code, exc.code
"""


def _loaded(before: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``before``."""
    out = subprocess.run(
        [sys.executable, "-c", _LOADED.format(before=before)], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_the_cli_starts_without_onnxruntime_or_the_evaluator():
    loaded = _loaded("import onnxprune.cli")
    assert _heavy(loaded) == []
    assert "onnxprune.passes.pipeline" in loaded  # the prune path itself is there


def test_a_magnitude_prune_loads_onnxruntime_only_to_validate(tmp_path):
    for flags, expected in ((["--no-validate"], []), ([], ["onnxruntime"])):
        out = tmp_path / f"p{len(flags)}.onnx"
        argv = ["prune", str(FIXTURES / "cnn_digits.onnx"), str(out), "--sparsity", "0.5", "-q", *flags]
        loaded = _loaded(_AFTER_CLI.format(argv=argv))
        assert out.is_file()
        assert sorted({m.split(".")[0] if m.startswith("onnxruntime") else m for m in _heavy(loaded)}) == expected


def test_an_evaluating_prune_and_the_other_commands_still_load_what_they_need(tmp_path):
    out = tmp_path / "p.onnx"
    argv = ["prune", str(FIXTURES / "cnn_digits.onnx"), str(out), "--sparsity", "0.5", "-q"]
    argv += ["--data", str(FIXTURES / "cnn_digits.test.npz"), "--no-latency"]
    loaded = _loaded(_AFTER_CLI.format(argv=argv))
    assert {"onnxruntime", "onnxprune.evaluation", "onnxprune.data"} <= loaded
    assert main.list_commands(None) == ["analyze", "eval", "inspect", "prune", "recipe", "view"]
    for name in main.list_commands(None):
        assert main.get_command(None, name).name == name
    assert main.get_command(None, "nope") is None


def test_every_exported_name_resolves_and_evaluate_stays_the_function():
    import onnxprune.evaluation  # the module behind it; importing it must not rebind the name

    assert callable(onnxprune.evaluate) and onnxprune.evaluate is onnxprune.evaluation.evaluate
    for name in onnxprune.__all__:
        assert getattr(onnxprune, name) is not None, name
    assert {"Dataset", "QuantizeConfig", "validate_model"} <= set(dir(onnxprune))
    assert onnxprune.QuantizeConfig is onnxprune.quantize.QuantizeConfig
    with pytest.raises(AttributeError, match="no_such_name"):
        onnxprune.no_such_name  # noqa: B018 - the attribute access is the test
