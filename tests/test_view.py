"""``onnxprune view``: the provenance it prints, its one-line errors, and Netron serving the model.

The provenance tests prune ``fixtures/cnn_digits.onnx`` for real (unstructured, and with the
structural pass) and check the printed record against the pruned model itself (zero counts,
parameter counts, kept channels). The serving tests need the optional ``netron`` package and
are skipped without it; the missing-Netron error is tested by hiding the module.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import view
from onnxprune.cli_view import view_command
from onnxprune.errors import ModelLoadError, OptionError

REPO = Path(__file__).resolve().parent.parent
CNN = REPO / "fixtures" / "cnn_digits.onnx"
HAS_NETRON = __import__("importlib").util.find_spec("netron") is not None
needs_netron = pytest.mark.skipif(not HAS_NETRON, reason="netron is not installed (pip install 'onnxprune[view]')")


@pytest.fixture(scope="module")
def unstructured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("view") / "cnn.p50.onnx"
    onnxprune.prune_file(CNN, out, onnxprune.PruneConfig(sparsity=0.5))
    return out


@pytest.fixture(scope="module")
def structural(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("view") / "cnn.s30.onnx"
    onnxprune.prune_file(CNN, out, None, structure=onnxprune.StructureConfig(amount=0.3))
    return out


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# --------------------------------------------------------------------------- provenance


def test_provenance_unstructured_matches_the_model(unstructured: Path) -> None:
    lines = view.provenance(unstructured)
    model = onnx.load(str(unstructured))
    weights = _weights(model)

    assert lines[0] == f"written by onnxprune {onnxprune.__version__}"
    options = next(line for line in lines if line.startswith("options: "))
    assert json.loads(options.removeprefix("options: "))["sparsity"] == 0.5

    # the summary's counts are the zeros really in the pruned tensors
    stamped = [n for n in model.graph.node if n.doc_string.startswith("onnxprune:")]
    pruned = {n.input[1] for n in stamped}
    zeros = sum(int((weights[name] == 0).sum()) for name in pruned)
    total = sum(weights[name].size for name in pruned)
    summary = next(line for line in lines if line.startswith("summary: "))
    assert f"{zeros:,} of {total:,} weights zero (50.0%) in {len(pruned)} pruned tensors" in summary
    assert not any(line.startswith("structure") for line in lines)

    # one indented line per stamped node, naming the node and its tensor
    assert f"nodes ({len(stamped)} lines; Netron shows them in each node's properties):" in lines
    node_lines = [line for line in lines if line.startswith("  /")]
    assert len(node_lines) == len(stamped) == 5
    for node in stamped:
        (line,) = [ln for ln in node_lines if ln.startswith(f"  {node.name}: ")]
        assert line.endswith(f"[{node.input[1]}]")
        assert "unstructured sparsity 0.0% -> 50.0%" in line
        assert "onnxprune:" not in line  # the prefix is dropped, the text kept


def test_provenance_structural_matches_the_model(structural: Path) -> None:
    lines = view.provenance(structural)
    base, model = onnx.load(str(CNN)), onnx.load(str(structural))
    params = [sum(w.size for w in _weights(m).values()) for m in (base, model)]
    assert params[1] < params[0]

    (head,) = [line for line in lines if line.startswith("structure: ")]
    assert head.startswith(f"structure: parameters {params[0]:,} -> {params[1]:,}, MACs ")
    groups = re.findall(r"^  (\S+): channels (\d+) -> (\d+) \((\d+) dead", "\n".join(lines), re.M)
    assert groups and f"{len(groups)} channel groups cut" in head
    nodes = {n.name: n for n in model.graph.node}
    weights, base_weights = _weights(model), _weights(base)
    for name, before, after, _ in groups:  # the kept channels are the output channels of the source's weight
        weight = nodes[name].input[1]
        assert base_weights[weight].shape[0] == int(before)
        assert weights[weight].shape[0] == int(after) < int(before)
    assert any(re.match(r"  \S+: not cut \(.+\)$", line) for line in lines)  # fc2: a graph output
    options = next(line for line in lines if line.startswith("structure options: "))
    assert json.loads(options.removeprefix("structure options: "))["amount"] == 0.3
    assert not any(line.startswith(("options: ", "summary: ")) for line in lines)  # no unstructured pass
    node_lines = [line for line in lines if re.match(r"  \S+: channels \d+ -> \d+ \(\d+ removed", line)]
    assert len(node_lines) == len(groups)


def test_provenance_of_a_model_onnxprune_did_not_write() -> None:
    assert view.provenance(CNN) == []
    assert view.provenance(onnx.load(str(CNN))) == []


def _if_model() -> onnx.ModelProto:
    """y = If(c) then x+1 else x-1; the then-branch node and the outer If carry doc_strings."""
    one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    then_node = helper.make_node("Add", ["x", "one"], ["t"], name="inc", doc_string="note\nonnxprune: branch line")
    else_node = helper.make_node("Sub", ["x", "one"], ["e"], name="dec")
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("t", "e")]
    then_graph = helper.make_graph([then_node], "then", [], [out[0]])
    else_graph = helper.make_graph([else_node], "else", [], [out[1]])
    node = helper.make_node(
        "If", ["c"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph, doc_string="onnxprune: top"
    )
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[one],
    )
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    entry = model.metadata_props.add()
    entry.key, entry.value = "onnxprune.summary", "{not json"
    entry = model.metadata_props.add()
    entry.key, entry.value = "onnxprune.future", "kept as is"
    entry = model.metadata_props.add()
    entry.key, entry.value = "author", "not ours"
    onnx.checker.check_model(model)
    return model


def test_provenance_subgraph_nodes_and_unexpected_metadata() -> None:
    lines = view.provenance(_if_model())
    assert lines[0] == "summary (not as onnxprune writes it): {not json"
    assert "future: kept as is" in lines
    assert not any("author" in line for line in lines)
    assert lines[-3:] == [
        "nodes (2 lines; Netron shows them in each node's properties):",
        "  branch: top",
        "  branch/then_branch: inc: branch line",  # a subgraph node, with its scope; "note" is not ours
    ]


def test_provenance_of_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a model" * 3)
    with pytest.raises(ModelLoadError, match=r"not a readable ONNX model|holds no ONNX graph"):
        view.provenance(bad)
    with pytest.raises(ModelLoadError, match="does not exist"):
        view.provenance(tmp_path / "missing.onnx")


# --------------------------------------------------------------------------- CLI errors


def _one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error: "), result.stderr
    for fragment in fragments:
        assert fragment in err[0]
    assert result.stdout == ""  # nothing printed before the error


@pytest.mark.parametrize("netron_installed", [True, False])
def test_cli_missing_and_malformed_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, netron_installed: bool
) -> None:
    if netron_installed and not HAS_NETRON:
        pytest.skip("netron is not installed")
    if not netron_installed:
        monkeypatch.setitem(sys.modules, "netron", None)  # import netron raises ImportError
    runner = CliRunner()
    missing = runner.invoke(view_command, [str(tmp_path / "nope.onnx"), "--no-browser"])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 40)
    malformed = runner.invoke(view_command, [str(bad), "--no-browser"])
    if netron_installed:
        _one_line_error(missing, ModelLoadError.exit_code, "does not exist")
        _one_line_error(malformed, ModelLoadError.exit_code, str(bad))
    else:  # the missing extra is said first, whatever the model
        for result in (missing, malformed):
            _one_line_error(result, OptionError.exit_code, "pip install 'onnxprune[view]'")


def test_missing_netron(monkeypatch: pytest.MonkeyPatch, unstructured: Path) -> None:
    monkeypatch.setitem(sys.modules, "netron", None)
    result = CliRunner().invoke(view_command, [str(unstructured), "--no-browser"])
    _one_line_error(result, 2, "Netron", "not installed", "pip install 'onnxprune[view]'")
    with pytest.raises(OptionError, match=re.escape("pip install 'onnxprune[view]'")):
        view.serve(unstructured, browse=False)
    view.stop()  # nothing to stop: no error
    assert not view.is_serving(view.Address("127.0.0.1", 1))


@needs_netron
def test_cli_bad_port(unstructured: Path) -> None:
    result = CliRunner().invoke(view_command, [str(unstructured), "--port", "70000", "--no-browser"])
    assert result.exit_code == OptionError.exit_code
    assert result.stderr.strip() == "onnxprune: error: port must be a number from 0 to 65535, got 70000"


@needs_netron
def test_serve_on_a_port_in_use(unstructured: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OptionError, match=rf"cannot serve on 127\.0\.0\.1:{port} \(.+\): choose another port,"):
            view.serve(unstructured, port=port, browse=False)
        result = CliRunner().invoke(view_command, [str(unstructured), "--port", str(port), "--no-browser"])
    assert result.exit_code == OptionError.exit_code
    assert result.stderr.count("\n") == 1 and "cannot serve on" in result.stderr


def test_serve_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is not a file"):
        view.serve(tmp_path, browse=False)


# --------------------------------------------------------------------------- serving


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


@needs_netron
def test_serve_fetch_and_stop(structural: Path) -> None:
    address = view.serve(structural, port=0, browse=False)
    try:
        assert address.host == "127.0.0.1" and address.port > 0
        assert address.url == f"http://127.0.0.1:{address.port}/"
        assert view.is_serving(address)
        status, page = _get(address.url)
        html = page.decode("utf-8")
        assert status == 200 and "netron" in html.lower()
        assert f'<meta name="file" content="/data/{structural.name}">' in html
        status, data = _get(f"{address.url}data/{structural.name}")
        assert status == 200 and data == structural.read_bytes()
        keys = {e.key for e in onnx.load_from_string(data).metadata_props}
        assert {"onnxprune.structure", "onnxprune.structure.options", "onnxprune.version"} <= keys
    finally:
        view.stop(address)
    assert not view.is_serving(address)
    with pytest.raises((urllib.error.URLError, OSError)):
        _get(address.url)


@pytest.mark.slow
@needs_netron
def test_cli_serves_until_interrupted(structural: Path) -> None:
    command = [sys.executable, "-c", "from onnxprune.cli_view import view_command; view_command()"]
    process = subprocess.Popen(
        [*command, str(structural), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        # Ctrl-C as in a terminal: a suite started in the background of a non-interactive shell
        # (CI runners, `make test &`) passes SIGINT ignored to its children, and Python keeps it so
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        printed = []
        for line in process.stdout:  # type: ignore[union-attr]
            printed.append(line)
            if line.startswith("Netron serves"):
                break
        text = "".join(printed)
        assert f"onnxprune provenance of {structural}" in text
        assert "  structure: parameters 45,562 -> " in text
        url = re.search(r"at (http://127\.0\.0\.1:\d+/) \(Ctrl-C to stop\)", text)
        assert url, text
        status, page = _get(url.group(1))
        assert status == 200 and b"netron" in page.lower()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert out.strip().endswith("stopped")
    assert "Traceback" not in err
    with pytest.raises((urllib.error.URLError, OSError)):
        _get(url.group(1))
