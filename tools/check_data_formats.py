"""Every command on every fixture, on the same samples in each data format: same numbers?

For each fixture, the first ``--samples`` calibration samples are written as a stack of
complete feeds (``.npz``, ``[N, *feed]``), one item per sample (``.npz``, ``[N, *item]``), an
ONNX test-data folder (``test_data_set_*/input_*.pb``) and a folder of per-sample ``.npz``
files. Then, on each format: ``prune --method sparsegpt --calibration``, ``prune --quantize
int8 --quantize-mode static --calibration``, ``eval --data`` (dense against the SparseGPT
output of the first format) and ``analyze --data``. The table gives, per fixture and command,
the largest difference to the first format over the output weights, the evaluation's numbers
and the sensitivity curves (0 means identical), and the time::

    .venv/bin/python tools/check_data_formats.py            # all fixtures, 16 samples
    .venv/bin/python tools/check_data_formats.py --fixtures stateful_mnist1d --samples 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import numpy_helper

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
sys.path.insert(0, str(REPO))

from onnxprune.cli import main  # noqa: E402
from onnxprune.data import open_data  # noqa: E402
from onnxprune.runtime import input_specs, session  # noqa: E402

FORMATS = ("stack of feeds", "item per sample", "ONNX test-data", "per-sample files")


class Refused(Exception):
    """A command exits non-zero: compared across formats by its message (the same refusal
    in every format is agreement, e.g. static int8 of a float16 model)."""


def cli(*args: object) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code != 0:
        raise Refused((result.stderr or result.output).strip().splitlines()[-1])


def write_formats(model: Path, folder: Path, samples: int) -> dict[str, Path]:
    dataset = open_data(model.with_suffix(".calib.npz"), specs=input_specs(session(model)), samples=samples)
    layout = dataset.layout
    chunks = list(dataset._batch_chunks(samples))  # the samples as held: sample-major
    items = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
    feeds = [layout.to_feeds({name: a[i : i + 1] for name, a in items.items()}) for i in range(samples)]
    paths = {
        "stack of feeds": folder / "stack.npz",
        "item per sample": folder / "items.npz",
        "ONNX test-data": folder / "test_data",
        "per-sample files": folder / "samples",
    }
    np.savez(paths["stack of feeds"], **{name: np.stack([f[name] for f in feeds]) for name in items})
    np.savez(paths["item per sample"], **items)
    for i, feed in enumerate(feeds):
        target = paths["ONNX test-data"] / f"test_data_set_{i}"
        target.mkdir(parents=True)
        for j, (name, value) in enumerate(feed.items()):
            (target / f"input_{j}.pb").write_bytes(numpy_helper.from_array(np.asarray(value), name).SerializeToString())
    paths["per-sample files"].mkdir()
    for i in range(samples):
        np.savez(paths["per-sample files"] / f"sample_{i:03d}.npz", **{name: a[i] for name, a in items.items()})
    return paths


def weights(path: Path) -> list[np.ndarray]:
    return [numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(path)).graph.initializer]


def numbers(value: object) -> list[float]:
    """Every number in a JSON value, in order (what two runs must agree on)."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for key in sorted(value) for x in numbers(value[key])]
    if isinstance(value, list):
        return [x for item in value for x in numbers(item)]
    return []


def gap(a: object, b: object) -> float:
    if isinstance(a, str) or isinstance(b, str):  # refusals: the same message in both, or a difference
        return 0.0 if a == b else float("inf")
    if len(a) != len(b):  # type: ignore[arg-type]
        return float("inf")
    return max(
        (float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0)) for x, y in zip(a, b, strict=True)),
        default=0.0,
    )


def sparsegpt(model: Path, data: Path, out: Path, samples: int, _pruned: Path) -> object:
    cli("prune", model, out / "p.onnx", "--sparsity", "0.5", "--method", "sparsegpt", "--calibration", data,
        "--samples", samples, "-q")  # fmt: skip
    return weights(out / "p.onnx")


def static_int8(model: Path, data: Path, out: Path, samples: int, _pruned: Path) -> object:
    cli("prune", model, out / "q.onnx", "--sparsity", "0.5", "--quantize", "int8", "--quantize-mode",
        "static", "--calibration", data, "--samples", samples, "-q")  # fmt: skip
    return weights(out / "q.onnx")


def evaluation(model: Path, data: Path, out: Path, samples: int, pruned: Path) -> object:
    cli("eval", model, pruned, "--data", data, "--samples", samples, "--no-latency", "-q", "--json",
        out / "eval.json")  # fmt: skip
    saved = json.loads((out / "eval.json").read_text())
    return numbers([saved["data"]["samples"], [m.get("fidelity") for m in saved["models"]]])


def analysis(model: Path, data: Path, out: Path, samples: int, _pruned: Path) -> object:
    cli("analyze", model, "--data", data, "--samples", samples, "--levels", "0.3,0.6", "--workers", "1",
        "--no-cache", "-q", "--json", out / "curves.json")  # fmt: skip
    return numbers([c["loss"] for c in json.loads((out / "curves.json").read_text())["curves"]])


#: Each command, on one format: what must agree across formats (the dense model against the
#: first format's SparseGPT output for eval, so the comparison is of the data alone).
COMMANDS = {
    "prune --method sparsegpt": sparsegpt,
    "prune --quantize-mode static": static_int8,
    "eval --data": evaluation,
    "analyze --data": analysis,
}


def run_fixture(name: str, samples: int, work: Path) -> dict[str, tuple[float, float, str]]:
    model = FIXTURES / f"{name}.onnx"
    paths = write_formats(model, work, samples)
    results: dict[str, dict[str, object]] = {}
    seconds: dict[str, float] = {}
    first_pruned = None
    for kind, data in paths.items():
        out = work / kind.replace(" ", "_")
        out.mkdir()
        got: dict[str, object] = {}
        start = time.perf_counter()

        for command, step in COMMANDS.items():
            try:
                got[command] = step(model, data, out, samples, first_pruned or out / "p.onnx")
            except Refused as exc:
                got[command] = f"refused: {exc}"
        first_pruned = first_pruned or out / "p.onnx"
        results[kind] = got
        seconds[kind] = time.perf_counter() - start
    first = results[FORMATS[0]]
    return {
        command: (
            max(gap(results[kind][command], first[command]) for kind in FORMATS[1:]),
            sum(seconds.values()),
            first[command] if isinstance(first[command], str) else "",
        )
        for command in first
    }


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    manifest = json.loads((FIXTURES / "manifest.json").read_text())["models"]
    parser.add_argument("--fixtures", nargs="*", default=list(manifest))
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for name in args.fixtures:
        with tempfile.TemporaryDirectory() as folder:
            found = run_fixture(name, args.samples, Path(folder))
        for command, (worst, seconds, refused) in found.items():
            rows.append((name, command, worst, seconds))
            alike = f"  [{refused[:70]}... in every format]" if refused else ""
            print(
                f"{name:22s} {command:30s} max |diff| vs stack of feeds {worst:.3g}  ({seconds:.0f} s all formats)"
                + alike
            )
    worst = max(row[2] for row in rows)
    print(f"\n{len(rows)} fixture x command checks over {len(FORMATS)} formats; largest difference {worst:.3g}")
    raise SystemExit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main_()
