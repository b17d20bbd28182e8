"""``python -m onnxprune`` is the ``onnxprune`` command."""

from onnxprune.cli import main

if __name__ == "__main__":
    main()
