"""Passes: apply decisions (masks, counts) to a model and say what changed."""
