"""onnxprune as a pass of Microsoft Olive (``pip install onnxprune[olive]``).

Olive builds ONNX deployment pipelines from passes named in a workflow config. Olive finds a
pass by its ``type`` in a *package config* (``olive_config.json``: pass name → the module
path of its class); a pass from another package is added to that config, which ``olive run
--package-config FILE`` or ``olive.workflows.run(config, package_config=…)`` takes. So:

* :class:`OnnxPrune` is the pass: a :class:`olive.passes.Pass` that runs
  :func:`onnxprune.prune_file` on the input ONNX model (validated, atomically written) and
  returns the pruned model to the next pass. Its options are ``prune``'s: ``sparsity``,
  ``pattern``, ``scope``, ``criterion``, ``method``, ``calibration`` (a path to .npz or a
  folder of images) and ``samples``, ``structured`` with ``target_flops``, ``dead_channels``.
* :func:`package_config` is Olive's own package config with ``OnnxPrune`` added, so every
  Olive pass stays available; :func:`run` runs a workflow with it, and ``python -m
  onnxprune.olive CONFIG.json`` does the same from a shell (:mod:`onnxprune.cli_olive`; it
  also writes the merged config for Olive's own ``olive run``).

``examples/olive/prune_workflow.json`` is a workflow: prune the bundled CNN to 50 % with
SparseGPT, then Olive's ``OnnxQuantization``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

try:
    from olive.hardware import AcceleratorSpec
    from olive.model import ONNXModelHandler
    from olive.model.utils import resolve_onnx_path
    from olive.package_config import OlivePackageConfig
    from olive.passes.olive_pass import Pass
    from olive.passes.pass_config import BasePassConfig, PassConfigParam
except ImportError as exc:  # the optional extra is not installed
    MISSING = f"onnxprune.olive needs Microsoft Olive ({exc}): pip install 'onnxprune[olive]' (olive-ai)"
    if __name__ == "__main__":  # python -m onnxprune.olive: one line, no traceback
        sys.exit(f"onnxprune: error: {MISSING}")
    raise ImportError(MISSING) from None

import onnxprune
from onnxprune.config import PruneConfig, StructureConfig, parse_pattern

#: The pass's name in Olive's package config and in workflow configs (``"type": "OnnxPrune"``).
PASS_TYPE = "OnnxPrune"
MODULE_PATH = "onnxprune.olive.OnnxPrune"


class OnnxPrune(Pass):
    """Prune the weights (or channels) of an ONNX model with onnxprune; see the module docstring."""

    @classmethod
    def _default_config(cls, accelerator_spec: AcceleratorSpec) -> dict[str, PassConfigParam]:
        return {
            "sparsity": PassConfigParam(
                type_=float, default_value=None, description="Fraction of weights zero afterwards, in [0, 1)."
            ),
            "pattern": PassConfigParam(
                type_=str, default_value="unstructured", description="unstructured, or N:M such as 2:4."
            ),
            "scope": PassConfigParam(type_=str, default_value="local", description="local or global."),
            "criterion": PassConfigParam(
                type_=str, default_value="magnitude", description="magnitude, lamp or random."
            ),
            "method": PassConfigParam(
                type_=str, default_value="magnitude", description="magnitude, wanda, sparsegpt, admm or refit."
            ),
            "calibration": PassConfigParam(
                type_=str,
                default_value=None,
                description="Calibration data for the calibrated methods: .npz keyed by input name, or images.",
            ),
            "samples": PassConfigParam(type_=int, default_value=128, description="Calibration samples used."),
            "structured": PassConfigParam(
                type_=bool, default_value=False, description="Remove whole channels (sparsity of the groups)."
            ),
            "target_flops": PassConfigParam(
                type_=float, default_value=None, description="Structured: keep at most this fraction of the MACs."
            ),
            "dead_channels": PassConfigParam(
                type_=bool, default_value=True, description="Remove channels made constant (exact)."
            ),
        }

    @classmethod
    def is_accelerator_agnostic(cls, accelerator_spec: AcceleratorSpec) -> bool:
        return True

    def _run_for_config(
        self, model: ONNXModelHandler, config: type[BasePassConfig], output_model_path: str
    ) -> ONNXModelHandler:
        source = Path(model.model_path)
        output = Path(resolve_onnx_path(output_model_path, source.name))
        output.parent.mkdir(parents=True, exist_ok=True)
        weights, structure = configs(_options(config))
        calibration = None
        if config.calibration:
            calibration = onnxprune.calibration_data(source, config.calibration, samples=config.samples)
        run = onnxprune.prune_file(source, output, weights, structure=structure, calibration=calibration)
        if run.saved is not None and run.saved.data_path is not None:  # large: the weights beside it
            return ONNXModelHandler(model_path=str(output.parent), onnx_file_name=output.name)
        return ONNXModelHandler(model_path=str(output))


def _options(config: Any) -> dict[str, Any]:
    names = ("sparsity", "pattern", "scope", "criterion", "method", "structured", "target_flops", "dead_channels")
    return {name: getattr(config, name) for name in names}


def configs(options: dict[str, Any]) -> tuple[PruneConfig | None, StructureConfig | None]:
    """The weight pass and the channel pass of :class:`OnnxPrune`'s options (``prune``'s rules)."""
    structured = bool(options.get("structured")) or options.get("target_flops") is not None
    if structured:
        structure = StructureConfig(
            amount=options.get("sparsity"),
            target_flops=options.get("target_flops"),
            dead_channels=options.get("dead_channels", True),
        )
        return None, structure
    weights = PruneConfig(
        sparsity=options.get("sparsity"),
        pattern=parse_pattern(options.get("pattern") or "unstructured"),
        scope=options.get("scope") or "local",
        criterion=options.get("criterion") or "magnitude",
        method=options.get("method") or "magnitude",
    )
    structure = None if options.get("dead_channels", True) else StructureConfig(dead_channels=False)
    return weights, structure


def package_config() -> dict[str, Any]:
    """Olive's default package config with :class:`OnnxPrune` added (module docstring)."""
    with open(OlivePackageConfig.get_default_config_path()) as handle:
        merged = json.load(handle)
    merged.setdefault("passes", {})[PASS_TYPE] = {"module_path": MODULE_PATH}
    return merged


def run(workflow: str | Path | dict[str, Any], **kwargs: Any) -> Any:
    """``olive.workflows.run`` of ``workflow`` with :func:`package_config`."""
    from olive.workflows import run as olive_run

    return olive_run(workflow, package_config=package_config(), **kwargs)


if __name__ == "__main__":  # python -m onnxprune.olive: the command line is in cli_olive
    from onnxprune.cli_olive import main

    sys.exit(main())
