"""``onnxprune prune --help`` lists every option once, in titled sections, in a stated order."""

from __future__ import annotations

import re
from collections import Counter

import click
import pytest
from cli_contract import cli, error_line
from click.testing import CliRunner

from onnxprune.cli import SectionedCommand, main

TITLES = [
    "Selection",
    "Amount and pattern",
    "Method and calibration",
    "Structural",
    "Quantize",
    "Evaluation",
    "Output",
]

#: The options the sections are named for (each section may hold more).
NAMED = {
    "Selection": ["--include", "--exclude", "--op-types", "--min-size", "--allow-nonfinite"],
    "Amount and pattern": [
        "--sparsity",
        "--scope",
        "--criterion",
        "--pattern",
        "--plan",
        "--max-layer-sparsity",
        "--nm-fallback",
        "--seed",
    ],
    "Method and calibration": [
        "--method",
        "--calibration",
        "--samples",
        "--data-free",
        "--bias-correction",
        "--percdamp",
    ],
    "Structural": [
        "--structured",
        "--dead-channels",
        "--no-dead-channels",
        "--target-flops",
        "--round-to",
        "--importance",
        "--no-refit",
        "--no-fold",
        "--max-group-sparsity",
    ],
    "Quantize": ["--quantize", "--quantize-mode"],
    "Evaluation": [
        "--eval",
        "--data",
        "--labels",
        "--report",
        "--eval-json",
        "--eval-batch-size",
        "--eval-samples",
        "--warmup",
        "--repeats",
        "--latency-batch",
        "--no-latency",
    ],
    "Output": ["--external-data", "--force", "--json", "--input-shape", "-q", "--quiet", "-v", "--debug", "--help"],
}

_HEADING = re.compile(r"^(\S[^:]*):$")
_ROW = re.compile(r"^  (-\S.*?)(?:\s{2,}|$)")
_FLAG = re.compile(r"(?:^|[ ,/])(-{1,2}[A-Za-z][\w-]*)")


def _help(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, flags listed under it) for each option section of a help text, in order."""
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            sections.append((heading.group(1), []))
            continue
        row = _ROW.match(line)
        if row and sections:
            sections[-1][1].extend(_FLAG.findall(row.group(1)))
    return [(title, flags) for title, flags in sections if flags]


def _prune() -> SectionedCommand:
    command = main.get_command(None, "prune")
    assert isinstance(command, SectionedCommand)
    return command


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


def test_prune_help_has_the_sections_in_order():
    sections = _sections(_help("prune", "--help"))
    assert [title for title, _ in sections] == TITLES


def test_every_prune_option_is_listed_once_under_its_section():
    command = _prune()
    listed = _sections(_help("prune", "--help"))
    where = {flag: title for title, flags in listed for flag in flags}
    counts = Counter(flag for _, flags in listed for flag in flags)
    section_of = {name: title for title, names in command.sections for name in names}
    expected = {"-h": "Output", "--help": "Output"}
    for option in _options(command):
        for flag in [*option.opts, *option.secondary_opts]:
            expected[flag] = section_of.get(option.name or "", "<in no section>")
    assert {flag for flag, n in counts.items() if n != 1} == set()
    assert where == expected
    assert len(_options(command)) == sum(len(names) for _, names in command.sections) == 73


@pytest.mark.parametrize("title", TITLES)
def test_named_options_are_in_their_section(title):
    where = {flag: t for t, flags in _sections(_help("prune", "--help")) for flag in flags}
    assert {flag: where.get(flag) for flag in NAMED[title]} == dict.fromkeys(NAMED[title], title)


def test_no_prune_option_is_left_out_of_the_sections():
    command = _prune()
    names = [name for _, names in command.sections for name in names]
    params = [option.name for option in _options(command)]
    assert [title for title, _ in command.sections] == TITLES
    assert [name for name, n in Counter(names).items() if n > 1] == []  # in one section only
    assert sorted(set(params) - set(names)) == []  # every option is in a section
    assert sorted(set(names) - set(params)) == []  # no section names a removed option
    assert command.ungrouped() == []


def test_short_help_flag_prints_the_same():
    assert _help("prune", "-h") == _help("prune", "--help")


def test_help_columns_line_up_across_sections():
    """The help texts start in one column in every section (not one per section)."""
    rows = (re.match(r"^  -\S.*?\S {2,}(?=\S)", line) for line in _help("prune", "--help").splitlines())
    assert len({row.end() for row in rows if row}) == 1


def test_an_option_in_no_section_is_still_listed_and_named():
    @click.command(cls=SectionedCommand, sections=[("First", ["alpha"]), ("Last", ["beta"])])
    @click.option("--beta", is_flag=True, help="B.")
    @click.option("--gamma", is_flag=True, help="In no section.")
    @click.option("--alpha", is_flag=True, help="A.")
    def toy(alpha: bool, beta: bool, gamma: bool) -> None:
        """A toy."""

    assert toy.ungrouped() == ["gamma"]
    result = CliRunner().invoke(toy, ["--help"])
    assert result.exit_code == 0
    assert _sections(result.output) == [
        ("First", ["--alpha"]),
        ("Last", ["--beta", "--help"]),
        ("Other options", ["--gamma"]),
    ]


@pytest.mark.parametrize("name", ["inspect", "eval", "analyze", "view"])
def test_other_commands_keep_one_options_section(name):
    sections = _sections(_help(name, "--help"))
    assert [title for title, _ in sections] == ["Options"]


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["nope"], "(see 'onnxprune --help')"),  # the group's own error names no command
        (["--nope"], "(see 'onnxprune --help')"),
        (["prune", "--nope"], "(see 'onnxprune prune --help')"),
        (["eval", "--nope"], "(see 'onnxprune eval --help')"),  # a command loaded on first use
    ],
)
def test_a_usage_error_points_to_the_help_that_answers_it(args, hint):
    message = error_line(cli(*args), 2)
    assert message.endswith(hint) and "main" not in message, message
