# Two commands do all set-up on a fresh machine (see README.md):
#   make demo   prunes the bundled default model, then evaluates it against the original
#               (size, MACs, latency, accuracy, fidelity) and writes out/cnn_digits.report.html
#   make test   lints and runs the test suite
# Both create .venv and install onnxprune into it on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/onnxprune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: demo test lint
demo: $(BIN)/onnxprune
	mkdir -p out
	$(BIN)/onnxprune prune fixtures/cnn_digits.onnx out/cnn_digits.pruned.onnx --sparsity 0.5 --scope global --criterion lamp \
		--data fixtures/cnn_digits.test.npz --labels fixtures/cnn_digits.test_labels.npy \
		--report out/cnn_digits.report.html --eval-json out/cnn_digits.eval.json

lint: $(BIN)/onnxprune
	$(BIN)/ruff check onnxprune tests tools
	$(BIN)/ruff format --check onnxprune tests tools

test: lint
	$(BIN)/python -m pytest -q
