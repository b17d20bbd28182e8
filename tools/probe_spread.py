"""How many samples the allocation's probe needs: per-batch output changes of every layer.

Runs one ``onnxprune prune`` (the arguments after ``--``) with every probe on all its samples
(``PROBE_REL_SE = 0``, unless ``--rel-se``), records each layer's per-batch change ``d_b`` and
batch sizes, writes them as JSON, and prints what the early-stop rule of
``onnxprune/passes/curve_allocation.py`` (stop once the relative standard error of the mean
per-sample change is at most a threshold, after a least number of samples and batches) would
have done at several thresholds: the mean samples a layer, and how far each stopped estimate
(scaled to all samples) lies from the estimate on all of them. This is how the rule's
constants were chosen (PP-OCRv4 det and rec, issue 16's note of stop 29).

It also records each layer's error curve, and plays the probe's rounds back on the recorded
changes (``--min-samples``/``--min-batches`` the screen, ``PROBE_REL_SE`` the rule) at several
``PROBE_REGRET``: the batches each layer would have run, and how far the allocation made from
those estimates lies from the one made from every sample (layers that differ, and the predicted
loss under the all-sample weights). This is how ``PROBE_REGRET`` was chosen (stop 33).

And it plays back the layers kept dense unprobed (``UNPROBED_TOTAL``; the run records every
layer's probe and the share of the model its tail runs) at several caps: the layers and weights
kept dense, the share of the probes' time they would save, their sparsities in the allocation
from every sample, and the predicted output change of the allocation of the others with those
layers dense against it (under the all-sample weights). This is how ``UNPROBED_TOTAL`` was
chosen (stop 38).

    .venv/bin/python tools/probe_spread.py --json det.json -- \\
        ch_PP-OCRv4_det_infer.onnx out.onnx --sparsity 0.5 --method sparsegpt \\
        --calibration det_calib_32_640.npz --samples 32 --input-shape x:1x3x640x640
    .venv/bin/python tools/probe_spread.py --analyse det.json      # the table again, no run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

THRESHOLDS = (0.05, 0.08, 0.1, 0.15, 0.2)


def record(args: list[str], rel_se: float) -> dict[str, Any]:
    """Run ``onnxprune prune ARGS`` in this process, recording every layer's probe."""
    import onnxprune.passes.curve_allocation as allocation
    from onnxprune.cli import main

    records: dict[str, Any] = {}
    constants = allocation.PROBE_REL_SE, allocation.PROBE_SCREEN, allocation.UNPROBED_TOTAL
    allocation.PROBE_REL_SE = rel_se
    allocation.PROBE_SCREEN = False  # every probe by its stopping rule alone
    allocation.UNPROBED_TOTAL = 0.0  # every layer probed
    settled, measure = allocation.OutputProbe._settled, allocation.OutputProbe.measure
    allocate = allocation._Problem.allocate

    def spy_allocate(problem: Any, measured: Any) -> Any:
        for key, m in measured.items():
            if key in records:
                records[key]["curve"] = {
                    "levels": list(m.levels),
                    "errors": list(m.errors),
                    "at_target": m.at_target,
                    "floor": m.floor,
                    "numel": problem.by_key[key].numel,
                }
        records["__allocation__"] = {
            "t": problem.t,
            "max_layer_sparsity": problem.max_layer_sparsity,
            "fixed": {key: [problem.by_key[key].numel, problem.targets[key].count or 0] for key in problem.fixed},
        }
        return allocate(problem, measured)

    def spy_settled(self: Any, moved: list[float]) -> bool:
        self.trace = list(moved)
        return settled(self, moved)

    def spy_measure(self: Any, weight: Any, inventory: Any, stored: Any, **kw: Any) -> Any:
        self.trace = []
        tick = time.perf_counter()
        probed = measure(self, weight, inventory, stored, **kw)
        seconds = time.perf_counter() - tick
        records[weight.key] = {
            "moved": self.trace,
            "counts": self.counts,
            "change": probed.change,
            "seconds": seconds,
            "tail": self.tail_share(weight),
        }
        return probed

    allocation.OutputProbe._settled = spy_settled  # type: ignore[method-assign]
    allocation.OutputProbe.measure = spy_measure  # type: ignore[method-assign]
    allocation._Problem.allocate = spy_allocate  # type: ignore[method-assign]
    try:
        main(["prune", *args])
    finally:
        allocation.OutputProbe._settled, allocation.OutputProbe.measure = settled, measure  # type: ignore[method-assign]
        allocation._Problem.allocate = allocate  # type: ignore[method-assign]
        allocation.PROBE_REL_SE, allocation.PROBE_SCREEN, allocation.UNPROBED_TOTAL = constants
    return records


def _relative_error(moved: list[float], counts: list[int]) -> float:
    rates = [m / c for m, c in zip(moved, counts, strict=True)]
    mean = sum(rates) / len(rates)
    if len(rates) < 2 or mean <= 0:
        return math.nan
    return statistics.stdev(rates) / math.sqrt(len(rates)) / mean


def analyse(records: dict[str, Any], min_samples: int, min_batches: int) -> list[str]:
    """Markdown rows: per threshold, the mean samples a layer and the stopped estimates' errors."""
    layers = [r for key, r in records.items() if not key.startswith("__") and r["counts"] and sum(r["moved"]) > 0]
    rows = ["| threshold | samples a layer | error median | error p90 | error max |", "|---|---|---|---|---|"]
    for threshold in THRESHOLDS:
        samples, errors = [], []
        for layer in layers:
            moved, counts = layer["moved"], layer["counts"]
            stop = len(moved)
            for k in range(min_batches, len(moved)):
                if sum(counts[:k]) >= min_samples and _relative_error(moved[:k], counts[:k]) <= threshold:
                    stop = k
                    break
            run = sum(counts[:stop])
            samples.append(run)
            errors.append(abs(sum(moved[:stop]) * sum(counts) / run / sum(moved) - 1))
        errors.sort()
        rows.append(
            f"| {threshold} | {sum(samples) / len(samples):.1f} | {statistics.median(errors):.3f} | "
            f"{errors[int(0.9 * (len(errors) - 1))]:.3f} | {errors[-1]:.3f} |"
        )
    full = sorted(_relative_error(r["moved"], r["counts"]) for r in layers)
    rows.append(f"\n{len(layers)} layers; relative standard error on all samples: {full[0]:.3f} to {full[-1]:.3f}")
    return rows


REGRETS = (0.0, 0.001, 0.003, 0.01, 0.03)


def _measured(layer: dict[str, Any], probe: float) -> Any:
    """The allocation's measurement of a recorded layer, with the probe's change ``probe``."""
    from onnxprune.passes import curve_allocation as allocation

    curve = layer["curve"]
    return allocation._Measured(
        tuple(curve["levels"]), tuple(curve["errors"]), curve["at_target"], curve["floor"], probe=probe
    )


def analyse_rounds(
    records: dict[str, Any], min_samples: int, min_batches: int, screen_batches: int | None = None
) -> list[str]:
    """Markdown rows: the probe's rounds played back on the recorded changes, per ``PROBE_REGRET``
    (``screen_batches``: the screen's batches, if not the rule's least)."""
    from types import SimpleNamespace

    from onnxprune.passes import curve_allocation as allocation
    from onnxprune.passes.unstructured import Target
    from onnxprune.sparsity.curves import allocate, uncertain

    run = records.get("__allocation__")
    layers = {key: r for key, r in records.items() if not key.startswith("__") and r.get("curve") and r["counts"]}
    if run is None or not layers:
        return ["(no error curves in this record: record it again to play the probe's rounds back)"]
    targets = {key: Target(count=count, amount=count / numel) for key, (numel, count) in run["fixed"].items()}
    by_key = {key: SimpleNamespace(numel=numel) for key, (numel, _) in run["fixed"].items()}
    by_key.update({key: SimpleNamespace(numel=r["curve"]["numel"]) for key, r in layers.items()})
    problem = allocation._Problem(run["t"], run["max_layer_sparsity"], targets, tuple(run["fixed"]), by_key)  # type: ignore[arg-type]
    counts = next(iter(layers.values()))["counts"]

    def stop(moved: list[float]) -> int:  # the batches the stopping rule alone runs
        for k in range(min_batches, len(moved)):
            if sum(counts[:k]) >= min_samples and _relative_error(moved[:k], counts[:k]) <= allocation.PROBE_REL_SE:
                return k
        return len(moved)

    def allocated(batches: dict[str, int]) -> tuple[list[Any], Any]:
        measured = {
            key: _measured(r, math.fsum(r["moved"][: batches[key]]) * sum(counts) / sum(counts[: batches[key]]))
            for key, r in layers.items()
        }
        curves, total, sizes = problem.curves(measured)
        return curves, allocate(curves, total / sizes)

    screen = next((k for k in range(min_batches, len(counts) + 1) if sum(counts[:k]) >= min_samples), len(counts))
    screen = screen if screen_batches is None else screen_batches
    ruled = {key: stop(r["moved"]) for key, r in layers.items()}
    every, best = allocated({key: len(counts) for key in layers})
    seconds = {key: r.get("seconds", 0.0) * ruled[key] / len(counts) for key, r in layers.items()}
    rows = [
        "| PROBE_REGRET | layers past the screen | batches (share of the rule's) | probe seconds, est. "
        "| layers allocated otherwise | predicted loss (all-sample weights) |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, batches: dict[str, int], past: int) -> str:
        _, got = allocated(batches)
        differ = sum(abs(got.sparsity[c.name] - best.sparsity[c.name]) * c.size >= 0.5 for c in every)
        loss = math.fsum(c.weight * float(c.at(got.sparsity[c.name])) for c in every)
        share = sum(batches.values()) / sum(ruled.values())
        cost = math.fsum(seconds[k] * batches[k] / ruled[k] for k in layers)
        return f"| {name} | {past} | {sum(batches.values())} ({share:.2f}) | {cost:.1f} | {differ} | {loss:.5g} |"

    rows.append(row("no screen (the rule alone)", ruled, len(layers)))
    for regret in REGRETS:
        batches = {key: min(screen, ruled[key]) for key in layers}
        past: set[str] = set()
        for _ in range(allocation.PROBE_ROUNDS):
            open_keys = [key for key in layers if batches[key] < ruled[key]]
            spans = {
                key: allocation._span(
                    allocation.Probed(0.0, 0, tuple(layers[key]["moved"][: batches[key]]), False), counts
                )
                for key in open_keys
            }
            curves, got = allocated(batches)
            known = {key: span for key, span in spans.items() if span is not None}
            worth = set(uncertain(curves, got.fraction, known, regret)) if known else set()
            again = [key for key in open_keys if spans[key] is None or key in worth]
            if not again:
                break
            past.update(again)
            for key in again:
                batches[key] = ruled[key]
        rows.append(row(str(regret), batches, len(past)))
    rows.append(f"\nall-sample allocation's predicted loss: {best.predicted:.5g}; screen: {screen} batches")
    return rows


UNPROBED_CAPS = (0.0025, 0.005, 0.01, 0.02)


def analyse_unprobed(records: dict[str, Any]) -> list[str]:
    """Markdown rows: the layers kept dense unprobed played back per cap (module docstring)."""
    from types import SimpleNamespace

    from onnxprune.passes import curve_allocation as allocation
    from onnxprune.passes.unstructured import Target
    from onnxprune.sparsity.curves import allocate

    run = records.get("__allocation__")
    layers = {key: r for key, r in records.items() if not key.startswith("__") and r.get("curve") and r["counts"]}
    if run is None or not layers or any("tail" not in r for r in layers.values()):
        return ["(no tails' shares in this record: record it again to play the unprobed layers back)"]

    def allocated(dense: set[str]) -> tuple[list[Any], dict[str, float]]:
        numel = {key: r["curve"]["numel"] for key, r in layers.items()}
        floor = {key: round(r["curve"]["floor"] * numel[key]) for key, r in layers.items()}
        targets = {key: Target(count=count, amount=count / n) for key, (n, count) in run["fixed"].items()}
        targets.update({key: Target(count=floor[key], amount=floor[key] / numel[key]) for key in dense})
        by_key = {key: SimpleNamespace(numel=n) for key, (n, _) in run["fixed"].items()}
        by_key.update({key: SimpleNamespace(numel=n) for key, n in numel.items()})
        problem = allocation._Problem(  # type: ignore[arg-type]
            run["t"], run["max_layer_sparsity"], targets, (*run["fixed"], *dense), by_key
        )
        measured = {key: _measured(r, math.fsum(r["moved"])) for key, r in layers.items() if key not in dense}
        curves, total, sizes = problem.curves(measured)
        sparsity = dict(allocate(curves, total / sizes).sparsity)
        sparsity.update({key: layers[key]["curve"]["floor"] for key in dense})
        return curves, sparsity

    every, best = allocated(set())

    def loss(sparsity: dict[str, float]) -> float:  # under the all-sample weights of every layer
        return math.fsum(c.weight * float(c.at(sparsity[c.name])) for c in every)

    total = sum(r["curve"]["numel"] for r in layers.values())
    seconds = sum(r.get("seconds", 0.0) for r in layers.values())
    rows = [
        "| UNPROBED_TOTAL | layers kept dense | their weights | probe time saved (all samples) "
        "| their sparsities, all-sample allocation | predicted output change |",
        "|---|---|---|---|---|---|",
    ]
    for cap in UNPROBED_CAPS:
        dense = allocation.unprobed(((key, r["curve"]["numel"], r["tail"]) for key, r in layers.items()), cap)
        _, got = allocated(dense)
        saved = sum(layers[key].get("seconds", 0.0) for key in dense) / seconds if seconds else 0.0
        weights = sum(layers[key]["curve"]["numel"] for key in dense) / total
        given = ", ".join(f"{best[key]:.2f}" for key in layers if key in dense) or "-"
        rows.append(
            f"| {cap} | {len(dense)} | {weights:.2%} | {saved:.0%} | {given} | {loss(got) / loss(best) - 1:+.2%} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prune_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the per-batch changes here")
    parser.add_argument("--analyse", type=Path, metavar="JSON", help="analyse a recorded run instead of running")
    parser.add_argument("--rel-se", type=float, default=0.0, help="the run's PROBE_REL_SE (default 0: all samples)")
    parser.add_argument("--min-samples", type=int, default=8)
    parser.add_argument("--min-batches", type=int, default=4)
    parser.add_argument("--screen-batches", type=int, help="the screen's batches (default: the rule's least)")
    args = parser.parse_args(own)
    if args.analyse is not None:
        records = json.loads(args.analyse.read_text())
    elif prune_args:
        records = record(prune_args, args.rel_se)
        if args.json is not None:
            args.json.write_text(json.dumps(records))
    else:
        parser.error("give the prune arguments after --, or --analyse JSON")
    print("\n".join(analyse(records, args.min_samples, args.min_batches)))
    print()
    print("\n".join(analyse_rounds(records, args.min_samples, args.min_batches, args.screen_batches)))
    print()
    print("\n".join(analyse_unprobed(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
