"""One of each utility (DESIGN.md): the twins removed once must not come back.

Each check greps the package's source for the mark of a twin and allows it in the one module
that owns the utility. ``LEFT`` lists the modules that still hold a twin and are owned
elsewhere: shrink it as they are converted, never grow it.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

import onnxprune

PACKAGE = Path(onnxprune.__file__).resolve().parent

#: utility -> (pattern of a twin, the module that owns it)
OWNERS: dict[str, tuple[str, str]] = {
    # fresh tensor names: graph.edit.FreshNames
    "fresh names": (
        r"class FreshNames\b|def _fresh\w*\(|def _?(unique|new)_name\(|while \w+ in (self\.)?taken\b",
        "graph/edit.py",
    ),
    # atomic writes and the output policy: graph.outputs (check_outputs, write_file, staging, publish)
    "atomic write": (r"os\.replace\(|\.rename\(|\bmkstemp\(|\bmkdtemp\(|def write_page\(", "graph/outputs.py"),
    # progress(done, total, what): passes.base.Progress
    "progress type": (
        r"^\s*\w*Progress\s*=|Callable\[\[int, int, str\], None\]|Callable\[\[str, int, int\], None\]",
        "passes/base.py",
    ),
    # attribute getter: ops.spec.attr
    "attribute getter": (r"def _?(get_)?attr\(\s*node\b", "ops/spec.py"),
    # input shapes: runtime.resolve_input_shapes (one policy, one unknown-input message)
    "input-shape resolver": (r"names unknown input\(s\)|DEFAULT_SPATIAL\s*=", "runtime.py"),
}

#: modules owned elsewhere that still hold a twin (utility -> modules); lower, never raise
LEFT: dict[str, set[str]] = {
    "fresh names": {"graph/index.py"},  # unique scope paths of subgraphs (not tensor names)
    "input-shape resolver": {"compute.py", "batch_axes.py"},  # compute: full shapes required (DataError);
    # batch_axes: the unknown inputs of --batch-axis, another option
}


def _sources() -> dict[str, str]:
    return {p.relative_to(PACKAGE).as_posix(): p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("utility", sorted(OWNERS))
def test_one_of_each_utility(utility: str) -> None:
    pattern, owner = OWNERS[utility]
    found = {module for module, text in _sources().items() if re.search(pattern, text, re.MULTILINE)}
    assert owner in found, f"the scan for {utility} is broken: {owner} should match {pattern!r}"
    extra = found - {owner} - LEFT.get(utility, set())
    assert not extra, f"a twin of the {utility} utility: use the one in {owner}, not a new one in {sorted(extra)}"
    stale = LEFT.get(utility, set()) - found
    assert not stale, f"these modules no longer hold a {utility} twin: drop them from LEFT: {sorted(stale)}"


def test_the_twins_are_gone() -> None:
    assert not (PACKAGE / "report" / "files.py").exists()
    from onnxprune.graph.edit import FreshNames
    from onnxprune.graph.outputs import write_file
    from onnxprune.ops.spec import attr
    from onnxprune.passes.base import Progress
    from onnxprune.runtime import resolve_input_shapes
    from onnxprune.structure.analysis import Context, input_shapes_for

    assert Context.attr is attr  # the channel rules' getter is the op table's
    assert callable(FreshNames) and callable(write_file) and callable(resolve_input_shapes)
    assert typing.get_args(Progress) == ([int, int, str], None)
    assert input_shapes_for.__module__ == "onnxprune.structure.analysis"


def test_one_input_shape_policy() -> None:
    from onnxprune.runtime import DEFAULT_SEQUENCE, DEFAULT_SPATIAL, resolve_input_shapes

    declared = {"image": (None, 3, "h", "w"), "ids": ("batch", "seq"), "fixed": (2, 5)}
    assert resolve_input_shapes(declared) == {
        "image": (1, 3, DEFAULT_SPATIAL, DEFAULT_SPATIAL),
        "ids": (1, DEFAULT_SEQUENCE),
        "fixed": (2, 5),
    }
    assert resolve_input_shapes(declared, {"ids": (4, 7)}, size=32) == {
        "image": (1, 3, 32, 32),
        "ids": (4, 7),
        "fixed": (2, 5),
    }
    with pytest.raises(onnxprune.OptionError, match="names unknown input"):
        resolve_input_shapes(declared, {"nope": (1,)})
    with pytest.raises(onnxprune.OptionError, match="does not fit the model's declared shape"):
        resolve_input_shapes(declared, {"fixed": (3, 5)})


def test_one_atomic_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    from onnxprune.graph.outputs import write_file

    target = tmp_path / "out.json"
    target.write_text("old")
    target.chmod(0o600)
    assert write_file("{}", target, what="JSON") == target
    assert target.read_text() == "{}" and target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(onnxprune.OutputError, match=r"the JSON '.*' is a folder: give a file name such as x\.json"):
        write_file("{}", tmp_path, what="JSON", example="x.json")
    with pytest.raises(onnxprune.OutputError, match=r"the plan folder .* does not exist"):
        write_file("{}", tmp_path / "missing" / "p.json", what="plan")


def test_fresh_names_are_unique_in_the_whole_model() -> None:
    from onnx import TensorProto, helper

    from onnxprune.graph.edit import FreshNames

    inner = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["b"])], "body", [], [helper.make_tensor_value_info("b", 1, [1])]
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner)],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", 1, [1])],
        [helper.make_tensor_value_info("y", 1, [1])],
    )
    fresh = FreshNames(helper.make_model(graph))
    assert fresh("b") == "b_2" and fresh("b") == "b_3" and fresh("x") == "x_2" and fresh("new") == "new"
