"""Graph and I/O layer: loading and saving models, tensors, scopes and weight discovery."""
