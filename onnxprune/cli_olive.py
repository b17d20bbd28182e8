"""``python -m onnxprune.olive``: run a Microsoft Olive workflow that may use the OnnxPrune pass.

    python -m onnxprune.olive examples/olive/prune_workflow.json
    python -m onnxprune.olive --write-package-config olive_package.json
    olive run --config examples/olive/prune_workflow.json --package-config olive_package.json

See :mod:`onnxprune.olive` for the pass and how Olive finds it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Run an Olive workflow with :func:`onnxprune.olive.package_config`, or write that config."""
    from onnxprune.olive import package_config, run

    parser = argparse.ArgumentParser(prog="python -m onnxprune.olive", description=main.__doc__)
    parser.add_argument("config", nargs="?", type=Path, help="the Olive workflow config (JSON)")
    parser.add_argument(
        "--write-package-config",
        type=Path,
        metavar="FILE",
        help="write Olive's package config with OnnxPrune added (for olive run --package-config) and stop",
    )
    args = parser.parse_args(argv)
    if args.write_package_config is not None:
        from onnxprune.graph.outputs import write_file

        write_file(json.dumps(package_config(), indent=2) + "\n", args.write_package_config, what="package config")
        return 0
    if args.config is None:
        parser.error("give a workflow config, or --write-package-config FILE")
    run(args.config)
    return 0
