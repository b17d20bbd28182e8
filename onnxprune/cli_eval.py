"""The ``onnxprune eval`` command, and the evaluation options ``prune --eval`` shares."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

import click

from onnxprune import cli_choices
from onnxprune.batch_axes import parse_batch_axes
from onnxprune.cli_print import shown
from onnxprune.console import PlainProgress, count, handle_errors, human, interactive, json_on_stdout, table
from onnxprune.envelope import is_stdout, write_json
from onnxprune.errors import OptionError, opt
from onnxprune.graph.model_io import model_reads
from onnxprune.graph.outputs import Read, Write, check_outputs
from onnxprune.latency import TOO_NOISY, LatencySettings
from onnxprune.runtime import parse_input_shapes, reads_model

if TYPE_CHECKING:  # the evaluator, the data readers and onnxruntime load when a command evaluates
    from onnxprune.evaluation import EvalOptions, EvalResult, ModelReport


def _options(for_prune: bool) -> list[Callable[[Any], Any]]:
    json_flag = "--eval-json" if for_prune else "--json"
    return [
        click.option(
            "--data",
            metavar="PATH",
            help="Samples: .npz keyed by input name, or a folder of images (default: synthetic, fidelity only).",
        ),
        click.option("--labels", metavar="PATH", help="Class labels (.npy, .npz or .txt), one per sample."),
        click.option(
            "--output", "output_name", metavar="NAME", help="Classifier output for accuracy (default: first)."
        ),
        click.option("--report", type=cli_choices.OutputFile(), help="Write an HTML report with plots."),
        click.option(json_flag, "eval_json", type=cli_choices.OutputFile(), help="Write every number as JSON."),
        click.option(
            "--eval-batch-size" if for_prune else "--batch-size",
            "batch_size",
            type=int,
            default=32,
            show_default=True,
            help="Samples per run on the data.",
        ),
        click.option(
            "--eval-samples" if for_prune else "--samples",
            "eval_samples",
            type=int,
            help="Use only the first N samples (synthetic: how many, default 64).",
        ),
        click.option("--threads", type=int, default=0, show_default=True, help="onnxruntime threads (0: default)."),
        click.option(
            "--providers", default="", metavar="LIST", help="Execution providers, e.g. CUDAExecutionProvider."
        ),
        click.option("--warmup", type=int, default=10, show_default=True, help="Latency warm-up runs per model."),
        click.option(
            "--repeats",
            type=cli_choices.Repeats(),
            default=50,
            show_default=True,
            help="Interleaved latency repeats; auto: until every latency ratio is known within ±3 % "
            "(95 % confidence) or --latency-budget ends.",
        ),
        click.option(
            "--latency-budget",
            type=float,
            default=30.0,
            show_default=True,
            metavar="SECONDS",
            help="With --repeats auto: the longest the timing may take.",
        ),
        click.option("--latency-batch", type=int, default=1, show_default=True, help="Samples per timed run."),
        click.option("--no-latency", is_flag=True, help="Skip the latency measurement."),
        click.option("--memory", is_flag=True, help="Also measure each session's peak memory (Linux)."),
        click.option("--image-size", metavar="N|HxW", help="Images: resize (shorter side N, or exactly HxW)."),
        click.option("--crop", metavar="HxW", help="Images: centre crop after resizing."),
        click.option("--mean", metavar="R,G,B", help="Images: per-channel mean subtracted after scaling."),
        click.option("--std", metavar="R,G,B", help="Images: per-channel std divided by."),
        click.option("--scale", metavar="X", help="Images: pixel scale before mean/std (default 1/255)."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), help="Images: tensor layout (default: model)."),
        click.option("--channels", type=click.Choice(["RGB", "BGR", "GRAY"]), help="Images: channel order."),
        click.option("--image-input", metavar="NAME", help="Images: the input they feed (default: the only one)."),
    ]


def evaluation_options(*, for_prune: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(_options(for_prune)):
            func = option(func)
        return func

    return decorate


def evaluation_files(kwargs: dict[str, Any], *, json_name: str) -> tuple[list[Write], list[Read]]:
    """What an evaluation with these click options writes (its report and JSON, ``json_name``
    naming the JSON's option) and reads (its data and labels), for the output policy."""
    json_path = kwargs.get("eval_json")
    writes = [
        Write(opt("report"), kwargs.get("report"), example="report.html"),
        Write(json_name, None if is_stdout(json_path) else json_path, example="eval.json"),
    ]
    reads = [
        Read(f"the {opt('data')} file", kwargs.get("data")),
        Read(f"the {opt('labels')} file", kwargs.get("labels")),
    ]
    return writes, reads


def build_options(kwargs: dict[str, Any], input_shapes: Sequence[str]) -> EvalOptions:
    """EvalOptions from the parsed click options (validated here, once)."""
    from onnxprune.data import parse_image_options
    from onnxprune.evaluation import EvalOptions

    image = None
    image_keys = ("image_size", "crop", "mean", "std", "scale", "layout", "channels")
    if any(kwargs.get(k) for k in image_keys):
        image = parse_image_options(
            size=kwargs.get("image_size"),
            crop=kwargs.get("crop"),
            mean=kwargs.get("mean"),
            std=kwargs.get("std"),
            scale=kwargs.get("scale"),
            layout=kwargs.get("layout"),
            channels=kwargs.get("channels"),
        )
    providers = tuple(p.strip() for p in (kwargs.get("providers") or "").split(",") if p.strip()) or None
    latency = None
    if not kwargs.get("no_latency"):
        latency = LatencySettings(
            warmup=kwargs["warmup"],
            repeats=kwargs["repeats"],
            budget_s=kwargs.get("latency_budget", 30.0),
            threads=kwargs["threads"],
            providers=providers,
            memory=kwargs.get("memory", False),
        )
    if kwargs.get("eval_samples") is not None and kwargs["eval_samples"] < 1:
        raise OptionError(f"--samples must be >= 1, got {kwargs['eval_samples']}")
    shapes = parse_input_shapes(input_shapes)
    return EvalOptions(
        batch_size=kwargs["batch_size"],
        samples=kwargs.get("eval_samples"),
        output=kwargs.get("output_name"),
        input_shapes=shapes,
        batch_axes=parse_batch_axes(kwargs.get("batch_axis") or ()),
        latency=latency,
        latency_batch=kwargs["latency_batch"],
        compressed="estimate"
        if kwargs.get("compressed_size") is None
        else "exact"
        if kwargs["compressed_size"]
        else "off",
        image_options=image,
        input_name=kwargs.get("image_input"),
    )


class _Stages:
    """One progress bar per stage of the evaluation, on stderr."""

    LABELS: ClassVar[dict[str, str]] = {"data": "running the data", "latency": "timing", "size": "sizing"}

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.stage: str | None = None
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int, stage: str) -> None:
        if self.quiet or stage == "size":
            return
        if stage != self.stage:
            self.close()
            self.stage, self.done = stage, 0
            label = self.LABELS.get(stage, stage)
            if interactive():
                self.bar = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
                self.bar.__enter__()
            else:
                self.bar = PlainProgress(label, total)
        if isinstance(self.bar, PlainProgress):
            self.bar.update(done)
        else:
            self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if isinstance(self.bar, PlainProgress):
            self.bar.close()
        elif self.bar is not None:
            self.bar.__exit__(None, None, None)
        self.bar = None


def run_evaluation(
    base: Path,
    candidates: Sequence[Path],
    kwargs: dict[str, Any],
    input_shapes: Sequence[str],
    *,
    quiet: bool,
    stdout: TextIO | None = None,
) -> EvalResult:
    """Evaluate, print the tables and warnings (with ``quiet`` one summary line), write the
    report and JSON if asked (the caller checked their paths with :func:`evaluation_files`
    before any work); a JSON path ``-`` goes to ``stdout``."""
    from onnxprune.evaluation import evaluate

    options = build_options(kwargs, input_shapes)
    report_path, json_path = kwargs.get("report"), kwargs.get("eval_json")
    stages = _Stages(quiet)
    try:
        result = evaluate(
            base, candidates, data=kwargs.get("data"), labels=kwargs.get("labels"), options=options, progress=stages
        )
    finally:
        stages.close()
    if quiet:
        click.echo(summary_line(result))
    else:
        print_result(result)
    if json_path is not None:
        where = write_json(result.to_dict(), json_path, stdout=stdout, example="eval.json")
        if not is_stdout(json_path) and not quiet:
            click.echo(f"JSON: {where}")
    if report_path is not None:
        from onnxprune.report import write_report

        write_report(result.to_dict(), report_path)
        click.echo(f"report: {report_path}")
    return result


def summary_line(result: EvalResult) -> str:
    """One line per candidate against the base: sizes, accuracy or fidelity, latency."""
    base, *candidates = result.models
    parts = []
    for m in candidates or [base]:
        facts = [f"{m.name}: file {human(m.file_bytes)}"]
        if m.compressed_bytes is not None and base.compressed_bytes and m is not base:
            facts.append(f"compressed {m.compressed_bytes / base.compressed_bytes:.2f}x")
        top1, ref = (m.accuracy or {}).get("top1"), (base.accuracy or {}).get("top1")
        if top1 is not None:
            facts.append(
                f"top-1 {_pct(top1)}"
                + (f" ({100 * (top1 - ref):+.1f} pt)" if ref is not None and m is not base else "")
            )
        cosine = ((m.fidelity or {}).get("overall") or {}).get("cosine")
        if cosine is not None and m is not base:
            facts.append(f"cosine {cosine:.4f}")
        if m.latency is not None and m.latency.ratio is not None:
            r = m.latency.ratio
            facts.append(f"latency {r.median:.2f}x" + ("" if r.conclusive else f" ({TOO_NOISY})"))
        parts.append(", ".join(facts))
    return "; ".join(parts)


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _macs(report: ModelReport) -> str:
    if report.compute is None:
        return "-"
    return f"{count(report.compute.macs)} / {count(report.compute.nonzero_macs)}"


def _latency(report: ModelReport) -> str:
    if report.latency is None:
        return "-"
    return f"{report.latency.median_ms:.3f}"


def _ratio(report: ModelReport) -> str:
    if report.latency is None or report.latency.ratio is None:
        return "1.00x" if report.latency is not None and report.role == "base" else "-"
    r = report.latency.ratio
    text = f"{r.median:.2f}x [{r.p10:.2f}-{r.p90:.2f}]"
    return text if r.conclusive else f"{text} {TOO_NOISY}"


def print_result(result: EvalResult) -> None:
    data = result.to_dict()["data"]
    kind = "synthetic data (fidelity only)" if data["synthetic"] else data["source"]
    click.echo(
        f"\nevaluated on {kind}: {data['samples']} samples" + (f", labels {data['labels']}" if data["labels"] else "")
    )
    size_rows = [
        [
            m.name,
            human(m.file_bytes),
            ("~" if m.compressed_bytes is not None and not m.compressed_exact else "") + human(m.compressed_bytes),
            human(m.sparse_bytes),
            count(m.parameters),
            count(m.nonzeros),
            _pct(m.sparsity),
            _macs(m),
        ]
        for m in result.models
    ]
    estimated = [m for m in result.models if m.compressed_bytes is not None and not m.compressed_exact]
    if estimated:
        spread = 200 * max(m.compressed_error for m in estimated)
        click.echo(f"~ compressed size estimated from sampled blocks, ±{spread:.1f}% (2σ); exact: --compressed-size")
    click.echo(
        table(
            size_rows,
            ["model", "file", "compressed", "as COO", "params", "non-zeros", "sparsity", "MACs dense / non-zero"],
            right={1, 2, 3, 4, 5, 6, 7},
        )
    )
    quality_rows = []
    for m in result.models:
        overall = (m.fidelity or {}).get("overall") or {}
        quality_rows.append(
            [
                m.name,
                _latency(m),
                _ratio(m),
                _pct((m.accuracy or {}).get("top1")),
                _pct((m.accuracy or {}).get("top5")),
                _pct(overall.get("top1_agreement")),
                "-" if overall.get("cosine") is None else f"{overall['cosine']:.4f}",
                "-" if overall.get("rel_l2") is None else f"{overall['rel_l2']:.4f}",
            ]
        )
    click.echo("")
    click.echo(
        table(
            quality_rows,
            ["model", "latency ms", "vs base [p10-p90]", "top-1", "top-5", "agree", "cosine", "rel L2"],
            right={1, 2, 3, 4, 5, 6, 7},
        )
    )
    noisy = [m for m in result.models if m.latency is not None and m.latency.ratio and not m.latency.ratio.conclusive]
    if noisy:
        click.echo(
            f"latency: {TOO_NOISY} for {', '.join(m.name for m in noisy)}: the p10-p90 spread of the paired ratios "
            "crosses 1.00x or is wider than ±10 %; measure on a quieter machine, or with --repeats auto"
        )
    stopped = next((m.latency.stopped for m in result.models if m.latency is not None and m.latency.stopped), None)
    if stopped:
        click.echo(f"latency (--repeats auto): {stopped}")
    for m in result.models:
        line = structure_line(m)
        if line:
            click.echo(line)
    for m in result.models:  # a base has notes only when its metadata could not be read
        for warning in m.warnings:
            click.echo(f"note ({m.name}): {shown(warning)}")


def _short(n: float | None) -> str:
    """45562 -> "45.6k", 1234567 -> "1.2M"."""
    if n is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def structure_line(report: ModelReport) -> str | None:
    """One line on what the structural pass did to ``report``'s model, or None without its provenance."""
    if report.structure is None:
        return None
    from onnxprune.report.structure import totals as structure_totals

    t = structure_totals(report.structure)
    text = (
        f"{report.name}: structural pass removed {t.channels_removed:,} channels in {t.groups} "
        f"group{'' if t.groups == 1 else 's'}"
    )
    extras = [f"{t.dead:,} dead"] if t.dead else []
    extras += [f"{t.blocked} blocked"] if t.blocked else []
    text += f" ({', '.join(extras)})" if extras else ""
    for what, (before, after) in (("params", t.params), ("MACs", t.macs)):
        if before is not None or after is not None:
            text += f"; {what} {_short(before)} -> {_short(after)}"
    if t.exact_max_diff is not None:
        text += f"; exact, max |diff| {t.exact_max_diff:.2g}"
    return text


@click.command("eval")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("candidates", nargs=-1, type=click.Path(path_type=Path))
@evaluation_options()
@click.option("--input-shape", multiple=True, metavar="NAME:1x3x224x224", help="Input shape for synthetic data.")
@click.option("--batch-axis", multiple=True, metavar="NAME:AXIS", help="The batch axis of an input (state:1, sr:none).")
@click.option(
    "--compressed-size/--no-compressed-size",
    default=None,
    help="Deflate sizes: exact (every byte deflated, ~25 MB/s), or with --no-compressed-size none "
    "(default: estimated from 3 MiB of sampled blocks, about ±1 %).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary line.")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def eval_command(base: Path, candidates: tuple[Path, ...], input_shape: tuple[str, ...], **kwargs: Any) -> None:
    """Compare BASE with CANDIDATE models: size, compute, latency, accuracy and fidelity.

    \b
    Examples:
      onnxprune eval model.onnx pruned.onnx --data test.npz --labels labels.npy --report report.html
      onnxprune eval model.onnx p30.onnx p50.onnx p70.onnx --data images/ --image-size 256 --crop 224 \\
          --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
      onnxprune eval model.onnx pruned.onnx            # synthetic data: fidelity only
    """
    shapes = parse_input_shapes(input_shape)
    for path in (base, *candidates):
        reads_model(path, shapes)
    writes, reads = evaluation_files(kwargs, json_name=opt("json"))
    models = [("the base model", base), *(("a candidate model", candidate) for candidate in candidates)]
    check_outputs(writes, [*(r for name, path in models for r in model_reads(name, path, writes=writes)), *reads])
    with json_on_stdout(kwargs.get("eval_json")) as stdout:
        run_evaluation(base, candidates, kwargs, input_shape, quiet=kwargs.get("quiet", False), stdout=stdout)
