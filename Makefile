# Two commands do all set-up on a fresh machine (see README.md):
#   make demo   prunes the bundled default model, then evaluates it against the original
#               (size, MACs, latency, accuracy, fidelity) and writes out/cnn_digits.report.html
#   make test   lints and runs the whole test suite
# Both create .venv on first use and install into it the exact versions CI tested
# (constraints/latest.txt): the demo only onnxprune and what it needs at run time, the tests
# also the `dev` dependency group (pytest, ruff, ray, netron, pillow).
#
# Before a dependency bound moves (README, "Dependencies"):
#   make test-lowest   fresh .venv-lowest at the declared minimums (constraints/lowest.txt), oldest Python found
#   make test-latest   fresh .venv-latest at whatever pip resolves today, only the releases in
#                      constraints/avoid.txt left out
#   make constraints   records .venv-latest's versions in constraints/latest.txt (after test-latest passed)
#   make test-fast     the suite without the tests marked slow (subprocesses, Ray, Netron)
#   make fuzz          tools/fuzz.py: 300 seeded hostile cases through the CLI (FUZZ_CASES=10000 nightly);
#                      failing cases are rebuilt with a repro.sh in out/fuzz-failures/

PYTHON ?= python3
# the oldest Python onnxprune supports, where this machine has it (on PATH or under pyenv; else $(PYTHON))
PYTHON_LOWEST ?= $(shell for p in python3.10 "$$(pyenv prefix 3.10 2>/dev/null)/bin/python3.10" $(PYTHON); do \
	"$$p" -c "" >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
PIP := -m pip install --quiet --disable-pip-version-check
VERSIONS := -c "import sys, importlib.metadata as m; print('Python', sys.version.split()[0], '|', ', '.join(f'{p} {m.version(p)}' for p in ('onnx', 'onnxruntime', 'onnx-graphsurgeon', 'numpy', 'click', 'threadpoolctl', 'protobuf', 'ml-dtypes', 'pytest')))"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP) -c constraints/latest.txt --upgrade pip

# onnxprune and its run-time dependencies only
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints/latest.txt
	$(BIN)/python $(PIP) -c constraints/latest.txt -e .
	touch $@

# plus the dev group: test and lint tools
$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/python $(PIP) -c constraints/latest.txt --group dev
	touch $@

.PHONY: demo test test-fast lint test-lowest test-latest constraints fuzz
demo: $(VENV)/.installed
	mkdir -p out
	$(BIN)/onnxprune prune fixtures/cnn_digits.onnx out/cnn_digits.pruned.onnx --sparsity 0.5 --scope global --criterion lamp \
		--data fixtures/cnn_digits.test.npz --labels fixtures/cnn_digits.test_labels.npy \
		--report out/cnn_digits.report.html --eval-json out/cnn_digits.eval.json

lint: $(VENV)/.dev
	$(BIN)/ruff check onnxprune tests tools
	$(BIN)/ruff format --check onnxprune tests tools

test: lint
	$(BIN)/python $(VERSIONS)
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "not slow"

FUZZ_CASES ?= 300
FUZZ_SEED ?= 0
fuzz: $(VENV)/.installed
	$(BIN)/python tools/fuzz.py --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) --keep-failures out/fuzz-failures

.venv-lowest/.installed: pyproject.toml constraints/lowest.txt
	rm -rf .venv-lowest
	$(PYTHON_LOWEST) -m venv .venv-lowest
	.venv-lowest/bin/python $(PIP) --upgrade 'pip>=25.1'
	.venv-lowest/bin/python $(PIP) -c constraints/lowest.txt -e . --group test
	touch $@

test-lowest: .venv-lowest/.installed
	.venv-lowest/bin/python $(VERSIONS)
	.venv-lowest/bin/python -m pytest -q

test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python $(PIP) --upgrade pip
	.venv-latest/bin/python $(PIP) -c constraints/avoid.txt --upgrade -e . --group test
	.venv-latest/bin/python $(VERSIONS)
	.venv-latest/bin/python -m pytest -q

constraints: .venv-latest/bin/python
	.venv-latest/bin/python $(PIP) -c constraints/avoid.txt --group dev
	{ echo "# The exact versions 'make test' installs (CI included): written by 'make constraints' from a"; \
	  echo "# .venv-latest on which 'make test-latest' passed, $$(.venv-latest/bin/python -c 'import sys; print("Python", sys.version.split()[0])')."; \
	  .venv-latest/bin/python -m pip freeze --all --exclude-editable | grep -v -e '^onnxprune[= @]' -e '^setuptools=='; } > constraints/latest.txt
