"""Library text names API fields; the CLI prints the same text with its flags.

A message below the CLI names an option with :func:`onnxprune.errors.opt`: ``str(exc)`` reads
``calibration`` / ``data_free=True``, the CLI (``onnxprune.cli_flags.FLAGS``, through
``console.handle_errors``) reads ``--calibration`` / ``--data-free``. Text kept as data (a skip
reason, a note) is an :class:`onnxprune.errors.Message`: the API, JSON and reports read the
fields, the CLI's printers (``cli_print.shown``) the flags.

The lint below keeps literal ``--flags`` out of every string a user may read below the CLI
(error messages, skip reasons, notes, log lines): every string literal of a library module
counts, except docstrings and other bare string statements, a whole command line
(``onnxprune prune IN OUT --structured ...``: an example to run, where flags belong) and CSS
custom properties (``--muted: #6b7280``, ``var(--muted)``). :data:`CEILINGS` lists the modules
not yet converted, and may only go down.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.cli_flags import FLAGS, flag
from onnxprune.errors import Message, MissingKernelError, OnnxPruneError, OptionError, fields, opt, render, spell
from onnxprune.quantize import quantize_file

PACKAGE = Path(onnxprune.__file__).resolve().parent
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLP = FIXTURES / "mlp_digits.onnx"
PREFIX = "onnxprune: error: "

#: literal ``--flag`` mentions left in library text, by module (lower these; never raise them).
#: These modules are owned elsewhere and still spell CLI flags to API users.
CEILINGS: dict[str, int] = {}

#: a flag, not a CSS custom property (``--muted: ...``, ``var(--muted)``)
_FLAG = re.compile(r"(?<![\w-])(?<!var\()--[a-z][a-z0-9-]*(?![a-z0-9-]*:)")
#: a whole command line ("onnxprune prune IN OUT --structured ...") is an example, not an option
_COMMAND = re.compile(r"onnxprune (?:inspect|prune|eval|analyze|view)\b.*")


# --------------------------------------------------------------------------- the mechanism


def test_str_names_api_fields_and_render_names_flags():
    exc = OptionError(f"give {opt('calibration')} calib.npz, or {opt('data_free', True)}; not {opt('method', 'wanda')}")
    assert str(exc) == "give calibration calib.npz, or data_free=True; not method='wanda'"
    assert exc.render(flag) == "give --calibration calib.npz, or --data-free; not --method wanda"
    assert exc.render() == str(exc)
    assert fields(exc.args[0]) == ["calibration", "data_free", "method"]


def test_a_dotted_field_shows_its_last_part_in_the_api():
    exc = OptionError(f"{opt('quantize.mode', 'static')} needs data")
    assert str(exc) == "mode='static' needs data"
    assert exc.render(flag) == "--quantize-mode static needs data"


def test_boolean_pairs_and_fields_without_a_flag():
    assert render(opt("dead_channels", False), flag) == "--no-dead-channels"
    assert render(opt("dead_channels", True), flag) == "--dead-channels"
    assert render(opt("refit", False), flag) == "--no-refit"
    assert render(opt("refit", True), flag) == "refit=True"  # the CLI has no flag for it: the API name
    assert render(opt("blocksize"), flag) == "blocksize"
    assert render(opt("no_such_field", 3), flag) == "no_such_field=3"


def test_a_message_without_options_is_unchanged():
    text = "plan file 'p.json' must be a JSON object {\"weight name\": sparsity, ...} -- see --help"
    exc = OptionError(text)
    assert str(exc) == exc.render(flag) == text
    assert str(OnnxPruneError()) == ""


def test_options_survive_pickling_and_subclasses():
    exc = pickle.loads(pickle.dumps(OptionError(f"{opt('workers')} must be >= 1, got 0")))
    assert str(exc) == "workers must be >= 1, got 0" and exc.render(flag) == "--workers must be >= 1, got 0"
    kernel = MissingKernelError(f"no kernel; try {opt('quantize.mode', 'dynamic')}", kernel="k")
    assert str(kernel) == "no kernel; try mode='dynamic'" and kernel.kernel == "k"
    assert kernel.render(flag) == "no kernel; try --quantize-mode dynamic"


# --------------------------------------------------------------------------- API vs CLI


def _cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stderr


def test_a_config_error_names_the_field_in_the_api_and_the_flag_in_the_cli(tmp_path):
    with pytest.raises(OptionError) as caught:
        onnxprune.PruneConfig(sparsity=0.5, percdamp=200)
    assert str(caught.value) == "percdamp must lie in [0, 100], got 200"
    code, err = _cli(["prune", str(MLP), str(tmp_path / "o.onnx"), "--sparsity", "0.5", "--percdamp", "200"])
    assert (code, err) == (OptionError.exit_code, f"{PREFIX}--percdamp must lie in [0, 100], got 200.0\n")


def test_static_quantization_without_data_api_and_cli(tmp_path):
    with pytest.raises(OptionError) as caught:
        quantize_file(MLP, tmp_path / "q.onnx", mode="static")
    assert str(caught.value) == (
        "mode='static' needs calibration data for the activation ranges: give calibration calib.npz "
        "(or a folder of images), or data_free=True; or use mode='dynamic'"
    )
    assert "--" not in str(caught.value)
    code, err = _cli(
        [
            "prune",
            str(MLP),
            str(tmp_path / "o.onnx"),
            "--sparsity",
            "0.5",
            "--quantize",
            "int8",
            "--quantize-mode",
            "static",
        ]
    )
    assert code == OptionError.exit_code
    assert err == (
        f"{PREFIX}--quantize-mode static needs calibration data for the activation ranges: give --calibration "
        "calib.npz (or a folder of images), or --data-free; or use --quantize-mode dynamic\n"
    )
    assert not (tmp_path / "o.onnx").exists()


def test_a_bad_input_shape_api_and_cli(tmp_path):
    from onnxprune.runtime import parse_input_shapes

    with pytest.raises(OptionError, match=r"^input_shapes 'x:1xa': dimensions must be integers"):
        parse_input_shapes(["x:1xa"])
    code, err = _cli(["prune", str(MLP), str(tmp_path / "o.onnx"), "--sparsity", "0.5", "--input-shape", "x:1xa"])
    assert code == OptionError.exit_code
    assert err.startswith(f"{PREFIX}--input-shape 'x:1xa': dimensions must be integers") and err.count("\n") == 1


def test_a_skip_reason_names_the_field_in_the_api_and_json_and_the_flag_in_the_cli(tmp_path):
    cnn = FIXTURES / "cnn_digits.onnx"
    options = onnxprune.DiscoveryOptions(exclude=("^fc1",))
    reasons = {w.name: w.reason for w in onnxprune.inspect(cnn, options).weights if w.role == "weight"}
    assert reasons["stem.0.weight"] == "216 elements, below min_size=256"
    assert reasons["fc1.weight"] == "matched by exclude"
    assert isinstance(reasons["fc1.weight"], Message) and pickle.loads(pickle.dumps(reasons["fc1.weight"])) == (
        "matched by exclude"
    )
    assert spell(reasons["stem.0.weight"], flag) == "216 elements, below --min-size 256"
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(
        main, ["prune", str(cnn), str(out), "--sparsity", "0.5", "--exclude", "^fc1", "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert "stem.0.weight (Conv, 24x1x3x3): 216 elements, below --min-size 256\n" in result.stdout
    assert "fc1.weight (Gemm, 64x512): matched by --exclude\n" in result.stdout
    assert "\x02" not in result.stdout and "\x02" not in report.read_text()
    layers = {layer["name"]: layer["reason"] for layer in json.loads(report.read_text())["layers"]}
    assert (layers["stem.0.weight"], layers["fc1.weight"]) == ("216 elements, below min_size=256", "matched by exclude")


def test_a_message_is_a_str_that_the_cli_spells_with_flags():
    message = Message(f"op MatMul not selected by {opt('op_types')}; {opt('nm_fallback', 'skip')}")
    assert message == "op MatMul not selected by op_types; nm_fallback='skip'" and str(message) == message
    assert message.render(flag) == "op MatMul not selected by --op-types; --nm-fallback skip"
    assert spell(message, flag) == message.render(flag) and spell("plain", flag) == "plain" and spell(None) is None
    assert f"{message}!" == "op MatMul not selected by op_types; nm_fallback='skip'!"  # never control characters


# --------------------------------------------------------------------------- the table and the lint


def _cli_flags() -> set[str]:
    names: set[str] = set()
    for name in main.list_commands(None):
        for param in main.get_command(None, name).params:
            if isinstance(param, click.Option):
                names.update(param.opts)
                names.update(param.secondary_opts)
    return names


def test_every_flag_in_the_table_is_a_flag_of_the_cli():
    known = _cli_flags()
    spelled = set()
    for entry in FLAGS.values():
        spelled.update([entry] if isinstance(entry, str) else [e for e in entry or () if e])
    assert spelled <= known, sorted(spelled - known)


def _library_modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not (relative.startswith("cli") or relative == "console.py"):
            out.append((relative, path))
    return out


def _opt_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "opt"
    ]


def test_every_option_named_in_the_library_has_a_cli_mapping():
    used: dict[str, str] = {}
    for relative, path in _library_modules():
        for call in _opt_calls(ast.parse(path.read_text(encoding="utf-8"))):
            if relative == "errors.py":
                continue  # the definition's own examples
            first = call.args[0] if call.args else None
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                f"{relative}:{call.lineno}: opt() takes the field as a literal, so this test can check it"
            )
            used[first.value] = f"{relative}:{call.lineno}"
    assert used, "no opt() found: the scan is broken"
    missing = {field: where for field, where in used.items() if field not in FLAGS}
    assert not missing, f"add these fields to onnxprune/cli_flags.py FLAGS: {missing}"


def _text_strings(tree: ast.AST) -> list[str]:
    """The string literals of a module a user may read: all but docstrings and other bare
    string statements (f-strings give their literal parts)."""
    bare = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare
    ]


def flag_mentions(source: str) -> int:
    """Literal ``--flags`` in the text of a module (see the module docstring)."""
    return sum(len(_FLAG.findall(_COMMAND.sub("", text))) for text in _text_strings(ast.parse(source)))


def test_the_lint_sees_flags_in_text_only():
    source = '''
"""Docstring: --calibration is fine here."""
def f(x, what="--sparsity"):
    """So is --this."""
    hint = "; try --quantize-mode dynamic"
    if x:
        raise OptionError(f"{what} bad{hint}")
    log.info("--target-flops %.2f cannot be met", x)  # a comment: --fine
    raise DataError("see onnxprune prune IN OUT --structured")
err = OutputError("pass --force")
reason = f"{size} elements, below --min-size {size}"
CSS = ":root { --muted: #6b7280; } td { color: var(--muted); }"
'''
    assert flag_mentions(source) == 5


def test_library_text_names_fields_not_flags():
    found = {}
    for relative, path in _library_modules():
        count = flag_mentions(path.read_text(encoding="utf-8"))
        if count:
            found[relative] = count
    over = {m: (n, CEILINGS.get(m, 0)) for m, n in found.items() if n > CEILINGS.get(m, 0)}
    assert not over, f"name options with onnxprune.errors.opt(field), not --flags (module: (flags, allowed)): {over}"
    stale = {m: (found.get(m, 0), n) for m, n in CEILINGS.items() if found.get(m, 0) < n}
    assert not stale, f"lower these ceilings to what is left (module: (flags, ceiling)): {stale}"
